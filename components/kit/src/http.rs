//! Responses, the error body, and the little routing a component needs.

use serde::Serialize;

/// `content-type` of every body this crate builds.
pub const JSON: &str = "application/json";

/// Longest rendering of a client's value echoed back in an error message.
const MAX_ECHO: usize = 60;

/// An HTTP answer, converted by each component into its generated `response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a route handler returns: a response, or an error that becomes one.
pub type ApiResult = Result<Response, ApiError>;

impl Response {
    /// `value` as a JSON body with the given status.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                status,
                headers: vec![("content-type".to_owned(), JSON.to_owned())],
                body,
            },
            Err(e) => ApiError::internal(format!("could not encode the response: {e}")).into(),
        }
    }

    /// 200 with `value` as JSON.
    pub fn ok<T: Serialize + ?Sized>(value: &T) -> Response {
        Response::json(200, value)
    }

    /// 201 with `value` as JSON.
    pub fn created<T: Serialize + ?Sized>(value: &T) -> Response {
        Response::json(201, value)
    }

    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A failure answered as `{"error":"<kind>","message":"<sentence>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// snake_case, stable: clients branch on it.
    pub kind: String,
    /// A sentence a person can act on, naming the field, id or value.
    pub message: String,
    /// For 405: the `allow` header value.
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, kind: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind: kind.to_owned(),
            message: message.into(),
            allow: None,
        }
    }

    /// 400.
    pub fn bad_request(kind: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, kind, message)
    }

    /// 404.
    pub fn not_found(kind: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(404, kind, message)
    }

    /// 409.
    pub fn conflict(kind: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(409, kind, message)
    }

    /// 503.
    pub fn unavailable(kind: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(503, kind, message)
    }

    /// 500 `internal_error`: a bug or corrupt state, never the client's fault.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "internal_error", message)
    }

    /// 404 for a path under the component's prefix that names no resource.
    pub fn no_route(method: &str, path: &str) -> ApiError {
        ApiError::not_found(
            "not_found",
            format!("no route for {} {}", shorten(method), shorten(path)),
        )
    }

    /// 405 with an `allow` header listing `allowed`.
    pub fn method_not_allowed(method: &str, path: &str, allowed: &[&str]) -> ApiError {
        let allow = allowed.join(", ");
        ApiError {
            allow: Some(allow.clone()),
            ..ApiError::new(
                405,
                "method_not_allowed",
                format!(
                    "method {} is not allowed on {}; use {allow}",
                    shorten(method),
                    shorten(path)
                ),
            )
        }
    }
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Response {
        let body = serde_json::json!({ "error": e.kind, "message": e.message });
        let mut headers = vec![("content-type".to_owned(), JSON.to_owned())];
        if let Some(allow) = e.allow {
            headers.push(("allow".to_owned(), allow));
        }
        Response {
            status: e.status,
            headers,
            body: body.to_string().into_bytes(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.kind, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Collapse a handler's result into the response sent.
pub fn respond(result: ApiResult) -> Response {
    result.unwrap_or_else(Response::from)
}

/// The path segments after `prefix`, or `None` when `path` is not under it.
///
/// `"/orders/7/cancel"` under `"/orders"` is `["7", "cancel"]`; `"/orders"`
/// and `"/orders/"` are `[]`; `"/ordersx"` is `None`. Empty segments
/// (`"//"`) are skipped.
pub fn segments<'a>(path: &'a str, prefix: &str) -> Option<Vec<&'a str>> {
    let rest = path.strip_prefix(prefix)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    Some(rest.split('/').filter(|s| !s.is_empty()).collect())
}

/// The first value of query parameter `name`, percent-decoded (`+` is a space).
/// A leading `?` is tolerated.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
}

/// Decode `%XY` escapes and `+`; malformed escapes are kept as written.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// A path segment that must be a positive integer id (`what` names it, e.g.
/// `"order id"`), or 400 `invalid_id`.
pub fn path_id(what: &str, raw: &str) -> Result<u64, ApiError> {
    match raw.parse::<u64>() {
        Ok(id) if id >= 1 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(ApiError::bad_request(
            "invalid_id",
            format!("{what} must be a positive integer, got {}", echo_str(raw)),
        )),
    }
}

/// `s` as a quoted JSON string, shortened for echoing in a message.
pub fn echo_str(s: &str) -> String {
    echo(&serde_json::Value::String(s.to_owned()))
}

/// `s` as is (a method or path from the host), shortened for a message.
fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_ECHO {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(MAX_ECHO).collect();
        format!("{cut}…")
    }
}

/// `v` rendered as JSON, shortened for echoing in a message.
pub fn echo(v: &serde_json::Value) -> String {
    let full = v.to_string();
    if full.chars().count() <= MAX_ECHO {
        full
    } else {
        let cut: String = full.chars().take(MAX_ECHO).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn error_becomes_the_documented_json_shape() {
        let r: Response = ApiError::not_found("order_not_found", "order 7 does not exist").into();
        assert_eq!(r.status, 404);
        assert_eq!(r.header("Content-Type"), Some(JSON));
        assert_eq!(
            body(&r),
            serde_json::json!({"error":"order_not_found","message":"order 7 does not exist"})
        );
    }

    #[test]
    fn method_not_allowed_carries_an_allow_header() {
        let r: Response = ApiError::method_not_allowed("DELETE", "/productions/7", &["GET"]).into();
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET"));
        assert_eq!(body(&r)["error"], "method_not_allowed");
        assert_eq!(
            body(&r)["message"],
            "method DELETE is not allowed on /productions/7; use GET"
        );
    }

    #[test]
    fn json_response_has_content_type() {
        let r = Response::created(&serde_json::json!({"id": 1}));
        assert_eq!(r.status, 201);
        assert_eq!(r.header("content-type"), Some(JSON));
        assert_eq!(r.body, br#"{"id":1}"#);
    }

    #[test]
    fn segments_split_under_a_prefix_only() {
        assert_eq!(segments("/orders", "/orders"), Some(vec![]));
        assert_eq!(segments("/orders/", "/orders"), Some(vec![]));
        assert_eq!(segments("/orders/7", "/orders"), Some(vec!["7"]));
        assert_eq!(
            segments("/orders/7/cancel", "/orders"),
            Some(vec!["7", "cancel"])
        );
        assert_eq!(segments("/orders//7", "/orders"), Some(vec!["7"]));
        assert_eq!(segments("/ordersx", "/orders"), None);
        assert_eq!(segments("/cafes/1", "/orders"), None);
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param("custNm=Hwang&cafeId=5", "cafeId"),
            Some("5".into())
        );
        assert_eq!(
            query_param("?custNm=Kim+Lee", "custNm"),
            Some("Kim Lee".into())
        );
        assert_eq!(query_param("custNm=%ED%99%A9", "custNm"), Some("황".into()));
        assert_eq!(query_param("custNm=100%", "custNm"), Some("100%".into()));
        assert_eq!(query_param("custNm=%4", "custNm"), Some("%4".into()));
        assert_eq!(query_param("custNm=%zz", "custNm"), Some("%zz".into()));
        assert_eq!(query_param("a=1&custNm", "custNm"), Some("".into()));
        assert_eq!(query_param("", "custNm"), None);
        assert_eq!(query_param("x=1", "custNm"), None);
    }

    #[test]
    fn path_ids_must_be_positive_integers() {
        assert_eq!(path_id("order id", "7"), Ok(7));
        for bad in ["abc", "0", "-1", "+7", "7.0", "", "99999999999999999999999"] {
            let e = path_id("order id", bad).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert_eq!(e.kind, "invalid_id");
        }
        assert_eq!(
            path_id("order id", "abc").unwrap_err().message,
            "order id must be a positive integer, got \"abc\""
        );
    }

    #[test]
    fn long_values_are_shortened_when_echoed() {
        let long = "x".repeat(500);
        assert!(echo_str(&long).chars().count() <= MAX_ECHO + 1);
    }
}
