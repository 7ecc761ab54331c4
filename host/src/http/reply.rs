//! JSON responses built by the host itself (errors, health). Every error a
//! client sees has the same shape as the components' errors:
//! `{"error": "<kind>", "message": "<what is wrong>"}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};
use serde_json::json;

/// The response body type of the whole server.
pub type Body = Full<Bytes>;

/// A JSON response with `status`.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// An error response in the common shape.
pub fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response<Body> {
    json(status, &json!({ "error": kind, "message": message.into() }))
}
