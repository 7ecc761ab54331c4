//! Test-only: `proptest` strategies for hostile input, shared by the
//! property tests of cafe, order, production, mypage and
//! `testing/scenario`, and the checks every answer must pass.
//!
//! - [`method`], [`path`], [`query`], [`body`]: HTTP requests a client
//!   could send: arbitrary bytes, arbitrary JSON, and JSON objects with the
//!   component's real field names holding values of any type (huge, negative
//!   and fractional numbers, number literals beyond `u64` and `f64`, long and
//!   non-ASCII strings); paths under the prefix with random segments and ids
//!   (`0`, `-1`, `2^64`, non-digits); queries with random `limit`, `after`
//!   and filters.
//! - [`payload`]: event payloads of the same kinds; [`mutated`]: a
//!   well-formed request or payload with a field or two replaced by an
//!   [`edge_value`] or dropped, to get past parsing.
//! - [`check_response`]: what every answer must be (never >= 500: a 5xx is
//!   for corrupt stored state, which these tests never create; a JSON body;
//!   the kit error shape on 4xx; `allow` on 405). [`check_event`]: an event
//!   handler answers `ok` or `invalid`.
//! - [`harness`] (re-exported here): the driver the components' tests
//!   share: [`Step`] and [`run_step`] ([`run_documented_step`] also checks
//!   each answer against the component's OpenAPI fragment), [`all_pages`] /
//!   [`page_ids`] following `next` links, [`Listing::still_reads`] (every
//!   record reads through every listing), [`edge_grid`] / [`event_edge_grid`].
//! - [`openapi`]: checks of a component's OpenAPI fragment (its
//!   `api-description` export) and of its answers against it.
//!
//! A panic in a handler is a trap on wasm; proptest reports it as a failure
//! with the shrunk input.

#![cfg(not(target_arch = "wasm32"))]
// A test crate: its helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kit::{EventError, Response};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Number, Value};

pub mod harness;
pub mod openapi;
pub use harness::*;

/// Cases per property: 256, so `cargo test` stays fast; the environment's
/// `PROPTEST_CASES` (e.g. `PROPTEST_CASES=20000 cargo test`) overrides it
/// for a longer soak.
pub fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_some() {
        default
    } else {
        ProptestConfig {
            cases: 256,
            ..default
        }
    }
}

/// Number literals as a client could write them: edges of the ranges the
/// components check, beyond `u64`/`i64`, beyond `f64` (`1e400`), fractions,
/// exponents.
pub const NUMBER_LITERALS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "0.5",
    "-0.5",
    "1.0",
    "2.5e0",
    "1e0",
    "1E2",
    "1e3",
    "1e18",
    "1e19",
    "1e400",
    "-1e400",
    "1000",
    "1001",
    "999999",
    "1000000",
    "1000001",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "340282366920938463463374607431768211456",
    "1.7976931348623157e308",
    "5e-324",
];

/// Strings that mean something to some component (digit strings, statuses,
/// padded keys) or to a parser (blank, NUL, a lone surrogate's escape).
pub const SPECIAL_STRINGS: &[&str] = &[
    "",
    " ",
    "\t\n",
    "0",
    "1",
    "5",
    " 7 ",
    "-5",
    "+5",
    "5.0",
    "abc",
    "9x",
    "99999999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "00000000000000000001",
    "00000000000000000000",
    "99999999999999999999",
    "REQUESTED",
    "ORDERED",
    "CANCELED",
    "canceled",
    " Canceled ",
    "FORCE_CANCELED",
    "REGISTERED",
    "Hwang",
    "Coldbrew",
    "20210713",
    "황",
    "🙂",
    "\u{0}",
    "\u{feff}",
    "a/b",
    "%2F",
    "null",
];

/// Path segments that stand for an id: mostly small ids (so a request hits
/// what earlier steps created), any `u64`, and ids no parser should accept.
pub fn id_segment() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (1u64..=6).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        2 => select(&[
            "0", "-1", "00", "007", "+1", "1.0", "1e3", " 1", "%31", "0x10",
            "18446744073709551615", "18446744073709551616", "99999999999999999999999",
            "00000000000000000001", "abc", "황", "🙂", "-0",
        ][..])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

/// Any string: printable ASCII, any Unicode, around the 200-character
/// bound, long, or one of [`SPECIAL_STRINGS`].
pub fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[ -~]{0,12}",
        2 => any::<String>(),
        2 => select(SPECIAL_STRINGS).prop_map(str::to_owned),
        1 => (select(&["x", "황", "🙂", " ", "a "][..]), 195usize..=205)
            .prop_map(|(s, n)| s.repeat(n)),
        1 => (select(&["x", "황", " "][..]), 1_000usize..=5_000).prop_map(|(s, n)| s.repeat(n)),
        1 => "\\PC{0,300}",
    ]
    .boxed()
}

/// Any JSON number: any `i64`, `u64` or finite `f64`.
pub fn json_number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        (-3i64..=12).prop_map(Value::from),
    ]
    .boxed()
}

/// Any JSON value, nested up to 3 levels.
pub fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
    .boxed()
}

/// The JSON text of one field's value: plausible small numbers and names
/// (to reach past validation), [`NUMBER_LITERALS`] (as written, so
/// `18446744073709551616` and `1e400` reach the parser), or any value.
pub fn field_value() -> BoxedStrategy<String> {
    prop_oneof![
        3 => (0u64..12).prop_map(|n| n.to_string()),
        3 => select(SPECIAL_STRINGS).prop_map(|s| Value::from(s).to_string()),
        3 => select(NUMBER_LITERALS).prop_map(str::to_owned),
        2 => json_value().prop_map(|v| v.to_string()),
        2 => text().prop_map(|s| Value::String(s).to_string()),
    ]
    .boxed()
}

/// A JSON object as text: each of `fields` present (most of the time) with
/// a [`field_value`], plus a few random names; keys may repeat.
pub fn object(fields: &'static [&'static str]) -> BoxedStrategy<String> {
    let known = prop::collection::vec(prop::option::weighted(0.7, field_value()), fields.len());
    let extra = prop::collection::vec((text(), field_value()), 0..3);
    (known, extra, any::<bool>())
        .prop_map(move |(known, extra, extra_first)| {
            let mut pairs: Vec<(String, String)> = fields
                .iter()
                .zip(known)
                .filter_map(|(name, v)| v.map(|v| ((*name).to_owned(), v)))
                .collect();
            if extra_first {
                pairs.splice(0..0, extra);
            } else {
                pairs.extend(extra);
            }
            let inner: Vec<String> = pairs
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", Value::String(k)))
                .collect();
            format!("{{{}}}", inner.join(","))
        })
        .boxed()
}

/// JSON texts that are not numbers but sit at an edge of some rule: blank
/// and odd strings, digit strings, other types.
pub const ODD_VALUES: &[&str] = &[
    "\"\"",
    "\" \"",
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "[1]",
    "{\"a\":1}",
    "\"0\"",
    "\"-1\"",
    "\" 7 \"",
    "\"abc\"",
    "\"18446744073709551616\"",
    "\"1e3\"",
    "\"\\u0000\"",
    "\"황\"",
];

/// Every edge value as JSON text, for exhaustive matrices: the
/// [`NUMBER_LITERALS`], the [`ODD_VALUES`], and strings of 200 and 201
/// characters (ASCII and Hangul).
pub fn edge_values() -> Vec<String> {
    let mut all: Vec<String> = NUMBER_LITERALS
        .iter()
        .chain(ODD_VALUES)
        .map(|s| (*s).to_owned())
        .collect();
    for s in ["x", "황"] {
        for n in [200, 201] {
            all.push(Value::String(s.repeat(n)).to_string());
        }
    }
    all
}

/// The JSON text of a value at the edge of what some component checks
/// (one of [`edge_values`]), or any [`field_value`].
pub fn edge_value() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(&["0", "-1", "-0", "0.5", "1e400", "18446744073709551616", "\"\"", "null"][..])
            .prop_map(str::to_owned),
        3 => select(edge_values()),
        2 => field_value(),
    ]
    .boxed()
}

/// The object `valid` describes with `field` set to `value` (JSON text) or,
/// for `None`, dropped: one cell of an edge matrix.
pub fn with_field(valid: &[(&str, String)], field: &str, value: Option<&str>) -> Vec<u8> {
    let inner: Vec<String> = valid
        .iter()
        .filter_map(|(k, v)| {
            let v = if *k == field { value? } else { v.as_str() };
            Some(format!("{}:{v}", Value::from(*k)))
        })
        .collect();
    format!("{{{}}}", inner.join(",")).into_bytes()
}

/// What one field takes in an edge matrix: absent (`None`), then each of
/// [`edge_values`]. Use with [`with_field`].
pub fn field_edges() -> Vec<Option<String>> {
    std::iter::once(None)
        .chain(edge_values().into_iter().map(Some))
        .collect()
}

/// A well-formed object (the `(field, JSON text)` pairs `valid` makes) with
/// 0..=2 of its fields replaced by an [`edge_value`] or dropped: requests
/// and payloads that get past parsing and reach the rules and the store.
pub fn mutated<S>(valid: S) -> BoxedStrategy<Vec<u8>>
where
    S: Strategy<Value = Vec<(&'static str, String)>> + 'static,
{
    let change = (
        any::<prop::sample::Index>(),
        prop::option::weighted(0.85, edge_value()),
    );
    (valid, prop::collection::vec(change, 0..=2))
        .prop_map(|(mut pairs, changes)| {
            for (at, value) in changes {
                if pairs.is_empty() {
                    break;
                }
                let i = at.index(pairs.len());
                match value {
                    Some(v) => pairs[i].1 = v,
                    None => {
                        pairs.remove(i);
                    }
                }
            }
            let inner: Vec<String> = pairs
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", Value::from(k)))
                .collect();
            format!("{{{}}}", inner.join(",")).into_bytes()
        })
        .boxed()
}

/// A request body: arbitrary bytes, nothing, blanks, any JSON value, an
/// [`object`] with the component's field names, or such an object cut short.
pub fn body(fields: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => select(&["", " ", "\n\t ", "{}", "[]", "null", "{", "\"x\"", "{\"a\":}"][..])
            .prop_map(|s| s.as_bytes().to_vec()),
        2 => json_value().prop_map(|v| v.to_string().into_bytes()),
        6 => object(fields).prop_map(String::into_bytes),
        1 => (object(fields), any::<prop::sample::Index>()).prop_map(|(o, cut)| {
            let mut b = o.into_bytes();
            b.truncate(cut.index(b.len() + 1));
            b
        }),
    ]
    .boxed()
}

/// An event payload: the same kinds as [`body`].
pub fn payload(fields: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    body(fields)
}

/// A method: the usual ones, odd spellings, anything.
pub fn method() -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(&["GET", "POST", "PUT", "DELETE"][..]).prop_map(str::to_owned),
        2 => select(&["PATCH", "HEAD", "OPTIONS", "get", "Post", "", " GET"][..])
            .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
    .boxed()
}

/// A path: mostly `prefix` followed by 0..4 segments (ids, the component's
/// own `words`, anything without a slash; possibly empty, so `//`), maybe a
/// trailing slash; sometimes a path beside the prefix or anything at all.
pub fn path(prefix: &'static str, words: &'static [&'static str]) -> BoxedStrategy<String> {
    let segment = prop_oneof![
        4 => id_segment(),
        3 => select(words).prop_map(str::to_owned),
        1 => "[^/]{0,12}",
        1 => Just(String::new()),
    ];
    prop_oneof![
        10 => (prop::collection::vec(segment, 0..4), any::<bool>()).prop_map(
            move |(segments, trailing)| {
                let mut p = prefix.to_owned();
                for s in segments {
                    p.push('/');
                    p.push_str(&s);
                }
                if trailing {
                    p.push('/');
                }
                p
            }
        ),
        1 => select(&["", "/", "/x", "//"][..]).prop_map(str::to_owned),
        1 => "[a-z]{0,3}".prop_map(move |tail| format!("{prefix}{tail}")),
        1 => Just(prefix.to_uppercase()),
        1 => any::<String>(),
    ]
    .boxed()
}

/// A raw query string: pairs of `params` (plus `limit`, `after` and random
/// names) with values that are ids, edge values, percent-escapes good and
/// bad, long text; sometimes a leading `?`, a name without `=`, or
/// anything at all.
pub fn query(params: &'static [&'static str]) -> BoxedStrategy<String> {
    let name = prop_oneof![
        3 => select(params).prop_map(str::to_owned),
        2 => select(&["limit", "after"][..]).prop_map(str::to_owned),
        1 => "[a-zA-Z%+]{0,6}",
    ];
    let value = prop_oneof![
        4 => id_segment(),
        3 => select(&[
            "", "1000", "1001", "4294967296", "REQUESTED", "canceled", "+ordered+",
            "FORCE_CANCELED", "DONE", "Hwang", "Kim+Lee", "%", "%zz", "%4", "%ED%99%A9",
            "%ff%fe", "%00", "+", "=", "=1", "%26", "%3D",
        ][..])
        .prop_map(str::to_owned),
        1 => "[^&]{0,30}",
        1 => (select(&["x", "%ED%99%A9", "+"][..]), 195usize..=205).prop_map(|(s, n)| s.repeat(n)),
    ];
    prop_oneof![
        8 => (
            any::<bool>(),
            prop::collection::vec((name, prop::option::weighted(0.9, value)), 0..5),
        )
            .prop_map(|(question, pairs)| {
                let joined: Vec<String> = pairs
                    .into_iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => k,
                    })
                    .collect();
                format!("{}{}", if question { "?" } else { "" }, joined.join("&"))
            }),
        1 => any::<String>(),
    ]
    .boxed()
}

/// What every HTTP answer must be, whatever the request: a status below
/// 500 (5xx is for corrupt stored state, which these tests never create),
/// `content-type: application/json` and a JSON body; on 4xx the kit error
/// shape `{"error":"<kind>","message":"<sentence>"}`; on 405 an `allow`
/// header. Returns the body.
pub fn check_response(r: &Response) -> Result<Value, TestCaseError> {
    let body = String::from_utf8_lossy(&r.body);
    prop_assert!(
        (200..500).contains(&r.status),
        "status {} (5xx only for corrupt state): {}",
        r.status,
        body
    );
    prop_assert_eq!(r.header("content-type"), Some(kit::http::JSON));
    let v: Value = serde_json::from_slice(&r.body)
        .map_err(|e| TestCaseError::fail(format!("body is not JSON ({e}): {body}")))?;
    if r.status >= 400 {
        prop_assert!(
            v["error"].is_string() && v["message"].is_string(),
            "not the kit error shape: {}",
            body
        );
        let kind = v["error"].as_str().unwrap_or_default();
        prop_assert!(
            !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "error kind {:?} is not snake_case",
            kind
        );
    }
    if r.status == 405 {
        prop_assert!(r.header("allow").is_some(), "405 without allow");
    }
    Ok(v)
}

/// An event handler's answer to a payload that may be garbage: `ok` or
/// `invalid`, never `not-found`/`conflict`/`unavailable` (those are for
/// state, which is never corrupt here).
pub fn check_event(topic: &str, r: &Result<(), EventError>) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(r, Ok(()) | Err(EventError::Invalid(_))),
        "{} answered {:?}",
        topic,
        r
    );
    Ok(())
}
