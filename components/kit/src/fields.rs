//! Request-body parsing: lenient in form like the original Spring services
//! (ids and counts as numbers or digit strings, unknown fields ignored),
//! strict in meaning (ranges, non-empty names). Every failure is a 400 that
//! names the field and echoes the value.
//!
//! A field that is absent or `null` reads as `None`; [`required`] turns
//! that into a 400.

use serde_json::{Map, Value};

use crate::http::{ApiError, echo};

/// A parsed JSON object body.
pub type Object = Map<String, Value>;

/// Longest accepted text field, in characters.
pub const MAX_TEXT: usize = 200;

/// The request body as a JSON object, or 400.
pub fn object(body: &[u8]) -> Result<Object, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "empty_body",
            "request body is empty; expected a JSON object",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::bad_request(
            "not_an_object",
            format!(
                "request body must be a JSON object, got {} {}",
                kind_of(&other),
                echo(&other)
            ),
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_json",
            format!("request body is not valid JSON: {e}"),
        )),
    }
}

/// `value`, or 400 `missing_field` naming `name`.
pub fn required<T>(value: Option<T>, name: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::bad_request("missing_field", format!("{name} is required")))
}

/// An id (`cafeId`, `orderId`): a JSON integer or a string of decimal digits, >= 1.
pub fn id(obj: &Object, name: &str) -> Result<Option<u64>, ApiError> {
    present(obj, name).map(|v| id_value(name, v)).transpose()
}

/// [`id`] for a value already in hand (e.g. from an event payload).
pub fn id_value(name: &str, v: &Value) -> Result<u64, ApiError> {
    match integer(v).and_then(|n| u64::try_from(n).ok()) {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(invalid(
            name,
            "must be a positive integer (a number or a string of digits)",
            v,
        )),
    }
}

/// A count (`pcnt`, `qty`): a whole JSON number or digit string in `min..=max`.
pub fn count(obj: &Object, name: &str, min: u32, max: u32) -> Result<Option<u32>, ApiError> {
    let Some(v) = present(obj, name) else {
        return Ok(None);
    };
    match integer(v).and_then(|n| u32::try_from(n).ok()) {
        Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(invalid(
            name,
            &format!("must be a whole number from {min} to {max}"),
            v,
        )),
    }
}

/// A name (`cafeNm`, `custNm`): a string, trimmed, 1..=200 characters.
pub fn text(obj: &Object, name: &str) -> Result<Option<String>, ApiError> {
    let Some(v) = present(obj, name) else {
        return Ok(None);
    };
    match v {
        Value::String(s) => bounded(name, s.trim(), v).map(Some),
        _ => Err(invalid(name, TEXT_RULE, v)),
    }
}

/// A date (`chkDate`): like [`text`], or a non-negative integer such as
/// `20210713`, kept as its decimal string.
pub fn date(obj: &Object, name: &str) -> Result<Option<String>, ApiError> {
    let Some(v) = present(obj, name) else {
        return Ok(None);
    };
    match v {
        Value::String(s) => bounded(name, s.trim(), v).map(Some),
        Value::Number(_) => match integer(v) {
            Some(n) if n >= 0 => Ok(Some(n.to_string())),
            _ => Err(invalid(name, DATE_RULE, v)),
        },
        _ => Err(invalid(name, DATE_RULE, v)),
    }
}

/// A string field that is absent, `null`, or a string (no other rules):
/// for enum-like fields such as `status` that the caller checks itself.
pub fn raw_string<'a>(obj: &'a Object, name: &str) -> Result<Option<&'a str>, ApiError> {
    match present(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(invalid(name, "must be a string", v)),
    }
}

const TEXT_RULE: &str = "must be a non-empty string of at most 200 characters";
const DATE_RULE: &str =
    "must be a non-empty string of at most 200 characters or a whole number such as 20210713";

fn present<'a>(obj: &'a Object, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn bounded(name: &str, trimmed: &str, original: &Value) -> Result<String, ApiError> {
    let len = trimmed.chars().count();
    if len == 0 || len > MAX_TEXT {
        return Err(invalid(name, TEXT_RULE, original));
    }
    Ok(trimmed.to_owned())
}

/// A whole number from a JSON number (`5`, `5.0`, `5e0`) or a digit string
/// (`"5"`, `"-5"`, surrounding spaces allowed). `None` for anything else.
fn integer(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(i128::from(u))
            } else if let Some(i) = n.as_i64() {
                Some(i128::from(i))
            } else {
                let f = n.as_f64()?;
                // Beyond 1e18 no count or id of ours fits anyway.
                let whole = f.is_finite() && f.fract() == 0.0 && f.abs() < 1e18;
                whole.then_some(f as i128)
            }
        }
        Value::String(s) => {
            let s = s.trim();
            let digits = s.strip_prefix('-').unwrap_or(s);
            if digits.is_empty() || digits.len() > 30 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            s.parse::<i128>().ok()
        }
        _ => None,
    }
}

fn invalid(name: &str, rule: &str, v: &Value) -> ApiError {
    ApiError::bad_request("invalid_field", format!("{name} {rule}, got {}", echo(v)))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn body_must_be_a_non_empty_json_object() {
        let e = object(b"").unwrap_err();
        assert_eq!((e.status, e.kind.as_str()), (400, "empty_body"));
        assert_eq!(e.message, "request body is empty; expected a JSON object");
        assert_eq!(object(b"  \n").unwrap_err().kind, "empty_body");
        let e = object(b"{\"a\":").unwrap_err();
        assert_eq!(e.kind, "invalid_json");
        assert!(e.message.contains("EOF"), "{}", e.message);
        let e = object(b"[1,2]").unwrap_err();
        assert_eq!(e.kind, "not_an_object");
        assert!(e.message.contains("an array"));
        assert_eq!(object(b"{\"x\":1}").unwrap().len(), 1);
    }

    #[test]
    fn ids_accept_numbers_and_digit_strings() {
        let o = obj(json!({"a": 99, "b": "99", "c": " 7 ", "d": 5.0, "n": null}));
        assert_eq!(id(&o, "a"), Ok(Some(99)));
        assert_eq!(id(&o, "b"), Ok(Some(99)));
        assert_eq!(id(&o, "c"), Ok(Some(7)));
        assert_eq!(id(&o, "d"), Ok(Some(5)));
        assert_eq!(id(&o, "n"), Ok(None));
        assert_eq!(id(&o, "missing"), Ok(None));
    }

    #[test]
    fn bad_ids_are_rejected_naming_field_and_value() {
        for bad in [
            json!(0),
            json!(-3),
            json!("0"),
            json!("abc"),
            json!("9x"),
            json!(""),
            json!(1.5),
            json!(true),
            json!([1]),
            json!("99999999999999999999999"),
        ] {
            let o = obj(json!({ "cafeId": bad.clone() }));
            let e = id(&o, "cafeId").unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.kind, "invalid_field");
            assert!(e.message.starts_with("cafeId must be"), "{}", e.message);
            assert!(e.message.contains(&echo(&bad)), "{}", e.message);
        }
    }

    #[test]
    fn counts_are_range_checked() {
        let o = obj(
            json!({"pcnt": 20, "s": "20", "zero": 0, "neg": -1, "big": 1_000_001, "frac": 0.5, "t": "x"}),
        );
        assert_eq!(count(&o, "pcnt", 0, 1_000_000), Ok(Some(20)));
        assert_eq!(count(&o, "s", 0, 1_000_000), Ok(Some(20)));
        assert_eq!(count(&o, "zero", 0, 1_000_000), Ok(Some(0)));
        assert_eq!(count(&o, "absent", 0, 1_000_000), Ok(None));
        assert!(count(&o, "zero", 1, 1000).is_err());
        for bad in ["neg", "big", "frac", "t"] {
            let e = count(&o, bad, 0, 1_000_000).unwrap_err();
            assert!(
                e.message
                    .starts_with(&format!("{bad} must be a whole number from 0 to 1000000")),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        let long = "x".repeat(201);
        let o = obj(json!({"a": "  Hwang ", "b": "   ", "c": long, "d": 5, "e": "황".repeat(200)}));
        assert_eq!(text(&o, "a"), Ok(Some("Hwang".into())));
        assert!(text(&o, "b").is_err());
        assert!(text(&o, "c").is_err());
        assert!(text(&o, "d").is_err());
        assert_eq!(text(&o, "e").unwrap().unwrap().chars().count(), 200);
    }

    #[test]
    fn dates_may_be_integers() {
        let o = obj(json!({"a": "210713", "b": 20210713, "c": -1, "d": 1.5, "e": false}));
        assert_eq!(date(&o, "a"), Ok(Some("210713".into())));
        assert_eq!(date(&o, "b"), Ok(Some("20210713".into())));
        for bad in ["c", "d", "e"] {
            assert!(date(&o, bad).unwrap_err().message.starts_with(bad));
        }
    }

    #[test]
    fn required_names_the_missing_field() {
        let e = required::<u64>(None, "custNm").unwrap_err();
        assert_eq!((e.status, e.kind.as_str()), (400, "missing_field"));
        assert_eq!(e.message, "custNm is required");
        assert_eq!(required(Some(1), "x"), Ok(1));
    }

    #[test]
    fn raw_strings_must_be_strings() {
        let o = obj(json!({"status": "CANCELED", "n": 3}));
        assert_eq!(raw_string(&o, "status"), Ok(Some("CANCELED")));
        assert_eq!(raw_string(&o, "x"), Ok(None));
        assert!(raw_string(&o, "n").is_err());
    }
}
