//! Property tests of mypage's entry points against hostile input: random
//! sequences of requests (any method, paths under `/myPages` with any
//! segments, any query and `custNm`) and events on every subscribed topic
//! (and others) with any payload, over a platform seeded with full and
//! partial rows.
//!
//! Whatever comes in: no panic (a trap on wasm, or a host limit the
//! `MemPlatform` enforces), no status >= 500, JSON answers in the kit shape,
//! events `ok` or `invalid`; afterwards every row still reads, alone and
//! through the listings, and every page's `next` link can be followed.

use kit::{EventError, MemPlatform};
use props::{Listing, Step, method, path, payload, query};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

use crate::events::{ORDER_TOPICS, PRODUCTION_TOPICS};
use crate::tests_openapi::API;

const WORDS: &[&str] = &["myPages", "x"];
const PARAMS: &[&str] = &["custNm", "orderId"];
const FIELDS: &[&str] = &[
    "id", "orderId", "custNm", "cafeId", "cafeNm", "chkDate", "qty", "status", "version",
];

fn subscribed() -> impl Strategy<Value = &'static str> {
    prop_oneof![select(ORDER_TOPICS), select(PRODUCTION_TOPICS)]
}

fn topic() -> impl Strategy<Value = String> {
    props::topic(subscribed(), &["cafe.deleted", "order.cafe-sweep", ""])
}

fn record(id: u64, status: &str, version: u64) -> Value {
    json!({"id": id, "orderId": id, "custNm": "Hwang", "cafeId": 5, "cafeNm": "Coldbrew",
           "chkDate": "20210713", "qty": 1, "status": status, "version": version})
}

/// A well-formed order or production record (ids 1..=8, versions 0..=4)
/// with a field or two mutated: to get past decoding and reach the store.
fn nearly_valid() -> impl Strategy<Value = Vec<u8>> {
    props::mutated(
        (1u64..=8, 0u64..=4, select(&["Hwang", "Kim"][..])).prop_map(|(id, version, cust)| {
            vec![
                ("id", id.to_string()),
                ("orderId", id.to_string()),
                ("custNm", json!(cust).to_string()),
                ("cafeId", "5".to_owned()),
                ("cafeNm", "\"Coldbrew\"".to_owned()),
                ("chkDate", "\"20210713\"".to_owned()),
                ("qty", "1".to_owned()),
                ("status", "\"REQUESTED\"".to_owned()),
                ("version", version.to_string()),
            ]
        }),
    )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (method(), path("/myPages", WORDS), query(PARAMS))
            .prop_map(props::get_step),
        2 => (topic(), payload(FIELDS)).prop_map(props::event_step),
        2 => (subscribed(), nearly_valid()).prop_map(props::event_step),
    ]
}

/// Row 1 complete (order and production), row 2 order only, row 3
/// production only (a partial row).
fn seeded() -> MemPlatform {
    let p = MemPlatform::new();
    for (topic, id, status, version) in [
        ("order.requested", 1, "REQUESTED", 1),
        ("production.registered", 1, "REGISTERED", 1),
        ("order.ordered", 1, "ORDERED", 2),
        ("order.requested", 2, "REQUESTED", 1),
        ("production.registered", 3, "REGISTERED", 1),
    ] {
        crate::event(
            &p,
            topic,
            record(id, status, version).to_string().as_bytes(),
        )
        .unwrap();
        p.finish(true);
    }
    p
}

fn run(p: &MemPlatform, step: &Step) -> Result<(), TestCaseError> {
    props::run_documented_step(
        p,
        step,
        &API,
        |p, method, path, query, _| crate::http(p, method, path, query),
        crate::event,
    )
}

/// Every row reads alone and through the listings, also one row per page
/// (every `next` link is followable).
fn still_readable(p: &MemPlatform) -> Result<(), TestCaseError> {
    let listing = Listing {
        path: "/myPages",
        id: "orderId",
        filters: &[],
        one_per_page: true,
    };
    listing
        .still_reads(props::reading(p, crate::http))
        .map(drop)
}

proptest! {
    #![proptest_config(props::config())]

    #[test]
    fn any_input_is_answered_without_a_trap_or_a_5xx(steps in prop::collection::vec(step(), 1..8)) {
        props::run_steps(&seeded(), &steps, run, still_readable)?;
    }
}

#[test]
fn records_the_store_or_the_listing_cannot_hold_are_invalid() {
    let huge = "x".repeat(kit::platform::MAX_VALUE_BYTES);
    // (field, value, whether it is a 1 MiB case), payloads serialized once
    let mut bad = Vec::new();
    for (field, value) in [
        ("custNm", json!(huge)),
        ("cafeNm", json!(huge)),
        ("chkDate", json!(huge)),
        ("status", json!(huge)),
        ("custNm", json!("x".repeat(201))),
        ("status", json!("x".repeat(201))),
        ("id", json!(0)),
        ("orderId", json!(0)),
    ] {
        let is_huge = value.as_str().is_some_and(|v| v.len() == huge.len());
        let mut r = record(9, "REQUESTED", 1);
        r[field] = value;
        bad.push((field, is_huge, r.to_string().into_bytes()));
    }
    for topic in crate::subscriptions() {
        // The 1 MiB cases cost time in debug: one topic of each kind.
        let huge_too = ["order.requested", "production.registered"].contains(&topic.as_str());
        for (field, is_huge, payload) in &bad {
            // order events name the order `id`, production events `orderId`.
            let read = if ORDER_TOPICS.contains(&topic.as_str()) {
                *field != "orderId"
            } else {
                *field != "id"
            };
            if !read || (*is_huge && !huge_too) {
                continue;
            }
            let p = seeded();
            let result = crate::event(&p, &topic, payload);
            assert!(
                matches!(&result, Err(EventError::Invalid(m)) if m.contains(field)),
                "{topic} {field}: {result:?}"
            );
        }
    }
    let p = seeded();
    let mut at_limit = record(9, "REQUESTED", 1);
    at_limit["custNm"] = json!("황".repeat(200));
    assert_eq!(
        crate::event(&p, "order.requested", at_limit.to_string().as_bytes()),
        Ok(())
    );
}

/// A well-formed order and production record of order `id`.
fn valid(id: u64) -> props::Fields {
    let mut record = props::order_record(id, 5, 1, "REQUESTED", 1);
    record.insert(1, ("orderId", id.to_string()));
    record
}

/// Every field of every subscribed topic's payload dropped or at every
/// edge value (each on a fresh order id, so it reaches the store): `ok` or
/// `invalid`, and the rows still read, one per page too.
#[test]
fn every_field_at_every_edge_is_ok_or_invalid() {
    for topic in crate::subscriptions() {
        props::event_edge_grid(
            &topic,
            |n| valid(10 + n as u64),
            seeded,
            crate::event,
            still_readable,
        );
    }
}
