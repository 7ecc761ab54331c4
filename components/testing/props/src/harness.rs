//! The driver side every component's property tests share: running a random
//! step against a `MemPlatform` and checking its answer, walking every page
//! of a listing, checking that every record still reads through every
//! listing it belongs to, and the exhaustive field × edge-value grid.
//!
//! The component-specific parts (which entry point to call, how to end the
//! unit of work, which fields a record is filtered by) come in as closures.

use kit::{EventError, MemPlatform, Response};
use proptest::prelude::*;
use serde_json::Value;

use crate::openapi::Fragment;
use crate::{check_event, check_response, field_edges, with_field};

/// A well-formed object as `(field, JSON text)` pairs, as [`with_field`]
/// and [`crate::mutated`] take it.
pub type Fields = Vec<(&'static str, String)>;

/// One step of a random sequence: a request (production and mypage send an
/// empty body) or an event.
#[derive(Debug, Clone)]
pub enum Step {
    Http {
        method: String,
        path: String,
        query: String,
        body: Vec<u8>,
    },
    Event {
        topic: String,
        payload: Vec<u8>,
    },
}

/// [`Step::Http`] from `(method, path, query, body)`.
pub fn http_step((method, path, query, body): (String, String, String, Vec<u8>)) -> Step {
    Step::Http {
        method,
        path,
        query,
        body,
    }
}

/// [`Step::Http`] with an empty body from `(method, path, query)`.
pub fn get_step((method, path, query): (String, String, String)) -> Step {
    http_step((method, path, query, Vec::new()))
}

/// [`Step::Event`] from `(topic, payload)`.
pub fn event_step<T: Into<String>>((topic, payload): (T, Vec<u8>)) -> Step {
    Step::Event {
        topic: topic.into(),
        payload,
    }
}

/// An event topic: mostly one the component subscribes to, sometimes one
/// of `others` (topics it does not take), sometimes any [`crate::text`].
pub fn topic(
    subscribed: impl Strategy<Value = &'static str> + 'static,
    others: &'static [&'static str],
) -> BoxedStrategy<String> {
    prop_oneof![
        6 => subscribed.prop_map(str::to_owned),
        1 => proptest::sample::select(others).prop_map(str::to_owned),
        1 => crate::text(),
    ]
    .boxed()
}

/// Ends the unit of work as the host does for a request (commit below 400)
/// and checks the answer with [`check_response`]; returns the body.
pub fn answered(p: &MemPlatform, r: &Response) -> Result<Value, TestCaseError> {
    p.finish(r.status < 400);
    check_response(r)
}

/// Ends the unit of work as the host does for an event (commit on `ok`) and
/// checks the answer with [`check_event`].
pub fn handled(
    p: &MemPlatform,
    topic: &str,
    r: &Result<(), EventError>,
) -> Result<(), TestCaseError> {
    p.finish(r.is_ok());
    check_event(topic, r)
}

/// Runs `step` through the component's `http(p, method, path, query,
/// body)` or `event(p, topic, payload)` and checks the answer
/// ([`answered`], [`handled`]).
pub fn run_step(
    p: &MemPlatform,
    step: &Step,
    http: impl FnOnce(&MemPlatform, &str, &str, &str, &[u8]) -> Response,
    event: impl FnOnce(&MemPlatform, &str, &[u8]) -> Result<(), EventError>,
) -> Result<(), TestCaseError> {
    match step {
        Step::Http {
            method,
            path,
            query,
            body,
        } => answered(p, &http(p, method, path, query, body)).map(drop),
        Step::Event { topic, payload } => handled(p, topic, &event(p, topic, payload)),
    }
}

/// [`run_step`], and every HTTP answer must also be what the component's
/// OpenAPI fragment `api` documents ([`Fragment::check_answer`]: a declared
/// status, a body valid against the declared schema).
pub fn run_documented_step(
    p: &MemPlatform,
    step: &Step,
    api: &Fragment,
    http: impl FnOnce(&MemPlatform, &str, &str, &str, &[u8]) -> Response,
    event: impl FnOnce(&MemPlatform, &str, &[u8]) -> Result<(), EventError>,
) -> Result<(), TestCaseError> {
    match step {
        Step::Http {
            method,
            path,
            query,
            body,
        } => {
            let r = http(p, method, path, query, body);
            answered(p, &r)?;
            api.check_answer(method, path, &r)
        }
        Step::Event { topic, payload } => handled(p, topic, &event(p, topic, payload)),
    }
}

/// On `p`: every step through `run`, then
/// `still_readable`.
pub fn run_steps<S>(
    p: &MemPlatform,
    steps: &[S],
    run: impl Fn(&MemPlatform, &S) -> Result<(), TestCaseError>,
    still_readable: impl Fn(&MemPlatform) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    for s in steps {
        run(p, s)?;
    }
    still_readable(p)
}

/// A `GET path?query` for [`pages`] and [`Listing::still_reads`]: the
/// component's `http(p, "GET", path, query)`, its unit of work committed.
pub fn reading<'a>(
    p: &'a MemPlatform,
    http: impl Fn(&MemPlatform, &str, &str, &str) -> Response + 'a,
) -> impl FnMut(&str, &str) -> Response + 'a {
    move |path, query| {
        let r = http(p, "GET", path, query);
        p.finish(true);
        r
    }
}

/// A well-formed order record of order `id` as order publishes it (custNm
/// Hwang, item `cafe_id` Coldbrew on 20210713), in the order's field order.
pub fn order_record(id: u64, cafe_id: u64, qty: u32, status: &str, version: u64) -> Fields {
    vec![
        ("id", id.to_string()),
        ("custNm", "\"Hwang\"".to_owned()),
        ("cafeId", cafe_id.to_string()),
        ("cafeNm", "\"Coldbrew\"".to_owned()),
        ("chkDate", "\"20210713\"".to_owned()),
        ("qty", qty.to_string()),
        ("status", Value::from(status).to_string()),
        ("version", version.to_string()),
    ]
}

/// The target of a `Link: <target>; rel="next"` header.
pub fn next_target(link: &str) -> Result<String, TestCaseError> {
    link.strip_prefix('<')
        .and_then(|l| l.strip_suffix(">; rel=\"next\""))
        .map(str::to_owned)
        .ok_or_else(|| TestCaseError::fail(format!("not a next link: {link}")))
}

/// Every page of `target` (`path?query`, following `Link: rel="next"`), as
/// its JSON items, one `Vec` a page: each page passes [`check_response`],
/// is a 200 with a JSON array, and paging ends within 100 pages. `get`
/// answers `GET path?query` (and ends the unit of work as it sees fit).
pub fn pages(
    target: &str,
    mut get: impl FnMut(&str, &str) -> Response,
) -> Result<Vec<Vec<Value>>, TestCaseError> {
    let mut out = Vec::new();
    let mut next = Some(target.to_owned());
    while let Some(target) = next.take() {
        prop_assert!(out.len() < 99, "paging does not end");
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let r = get(path, query);
        let v = check_response(&r)?;
        prop_assert_eq!(r.status, 200, "{}: {}", target, v);
        let items = v.as_array();
        prop_assert!(items.is_some(), "{}: not an array: {}", target, v);
        out.push(items.cloned().unwrap_or_default());
        next = r.header("link").map(next_target).transpose()?;
    }
    Ok(out)
}

/// Every item of every page of `target` (see [`pages`]).
pub fn all_pages(
    target: &str,
    get: impl FnMut(&str, &str) -> Response,
) -> Result<Vec<Value>, TestCaseError> {
    Ok(pages(target, get)?.concat())
}

/// The `id_field` of every item of every page of `target` (see [`pages`]),
/// one `Vec` a page; panics on any failure (for plain `#[test]`s).
pub fn page_ids(
    target: &str,
    id_field: &str,
    get: impl FnMut(&str, &str) -> Response,
) -> Vec<Vec<u64>> {
    let pages = pages(target, get).unwrap_or_else(|e| panic!("{target}: {e}"));
    pages
        .iter()
        .map(|page| {
            page.iter()
                .map(|x| x[id_field].as_u64().expect("a numeric id"))
                .collect()
        })
        .collect()
}

/// A listing whose records must all still read: `GET {path}` lists them,
/// `GET {path}/{id}` (the record's `id` field) reads each.
pub struct Listing<'a> {
    /// The listing's path, e.g. `/orders`.
    pub path: &'a str,
    /// The field holding the id a record reads by.
    pub id: &'a str,
    /// Fields each record must be found by: `?{field}={its value}` lists it.
    pub filters: &'a [&'a str],
    /// Whether one record a page (`limit=1`, following every `next` link)
    /// must list the same records as `limit=1000`.
    pub one_per_page: bool,
}

impl Listing<'_> {
    /// Every record listed (every page of `limit=1000`), also one a page
    /// when asked; each reads alone as listed and is found by each of its
    /// filters. Returns the records.
    pub fn still_reads(
        &self,
        mut get: impl FnMut(&str, &str) -> Response,
    ) -> Result<Vec<Value>, TestCaseError> {
        let path = self.path;
        let all = all_pages(&format!("{path}?limit=1000"), &mut get)?;
        if self.one_per_page {
            prop_assert_eq!(&all_pages(&format!("{path}?limit=1"), &mut get)?, &all);
        }
        for x in &all {
            let id = x[self.id].as_u64().unwrap_or_default();
            let r = get(&format!("{path}/{id}"), "");
            prop_assert_eq!(&check_response(&r)?, x);
            for field in self.filters {
                let value = match &x[*field] {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                let filter = format!("{field}={value}");
                let listed = all_pages(&format!("{path}?limit=1000&{filter}"), &mut get)?;
                prop_assert!(listed.contains(x), "record {} missing from ?{}", id, filter);
            }
        }
        Ok(all)
    }
}

/// The exhaustive edge grid: for each field of `valid` (names only), on a
/// fresh platform from `seed`, `cell(p, field, n, value)` for every
/// [`field_edges`] value (the `n`th; `None` drops the field), then
/// `still_readable`. Panics naming `label`, the field and the value.
pub fn edge_grid(
    label: &str,
    valid: &[(&'static str, String)],
    seed: impl Fn() -> MemPlatform,
    mut cell: impl FnMut(&MemPlatform, &'static str, usize, Option<&str>) -> Result<(), TestCaseError>,
    still_readable: impl Fn(&MemPlatform) -> Result<(), TestCaseError>,
) {
    for &(field, _) in valid {
        let p = seed();
        for (n, value) in field_edges().into_iter().enumerate() {
            cell(&p, field, n, value.as_deref())
                .unwrap_or_else(|e| panic!("{label} {field} = {value:?}: {e}"));
        }
        still_readable(&p).unwrap_or_else(|e| panic!("{label} after the edges of {field}: {e}"));
    }
}

/// [`edge_grid`] of the payloads of `topic`: cell `n` sends `valid(n)` with
/// the field changed through `event(p, topic, payload)`, which must answer
/// `ok` or `invalid` ([`handled`]).
pub fn event_edge_grid(
    topic: &str,
    valid: impl Fn(usize) -> Fields,
    seed: impl Fn() -> MemPlatform,
    event: impl Fn(&MemPlatform, &str, &[u8]) -> Result<(), EventError>,
    still_readable: impl Fn(&MemPlatform) -> Result<(), TestCaseError>,
) {
    edge_grid(
        topic,
        &valid(0),
        seed,
        |p, field, n, value| {
            let payload = with_field(&valid(n), field, value);
            handled(p, topic, &event(p, topic, &payload))
        },
        still_readable,
    );
}
