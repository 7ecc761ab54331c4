//! Property tests of production's entry points against hostile input:
//! random sequences of requests (any method, paths under `/productions`
//! with any segments, any query and filters) and events on every subscribed
//! topic (and others) with any payload, over a platform seeded with records
//! in every status.
//!
//! Whatever comes in: no panic (a trap on wasm, or a host limit the
//! `MemPlatform` enforces), no status >= 500, JSON answers in the kit shape,
//! events `ok` or `invalid`; afterwards every record still reads, through
//! every listing and filter, and every page's `next` link can be followed.

use kit::{EventError, MemPlatform};
use props::{Listing, Step, method, path, payload, query};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

use crate::tests_openapi::API;

const WORDS: &[&str] = &["productions", "x"];
const PARAMS: &[&str] = &["orderId", "cafeId", "status"];
const ORDER_FIELDS: &[&str] = &[
    "id", "custNm", "cafeId", "cafeNm", "chkDate", "qty", "status", "version",
];

fn topic() -> impl Strategy<Value = String> {
    props::topic(
        select(crate::SUBSCRIPTIONS),
        &["order.ordered", "cafe.deleted", "production.registered", ""],
    )
}

/// A well-formed order record (ids 1..=8) with a field or two mutated: to
/// get past decoding and reach the store.
fn nearly_valid_order() -> impl Strategy<Value = Vec<u8>> {
    props::mutated(
        (1u64..=8, 1u64..=3)
            .prop_map(|(id, cafe)| props::order_record(id, cafe, 1, "REQUESTED", 1)),
    )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (method(), path("/productions", WORDS), query(PARAMS))
            .prop_map(props::get_step),
        2 => (topic(), payload(ORDER_FIELDS)).prop_map(props::event_step),
        2 => (select(crate::SUBSCRIPTIONS), nearly_valid_order()).prop_map(props::event_step),
    ]
}

fn order(id: u64, cafe: u64) -> Value {
    json!({"id": id, "custNm": "Hwang", "cafeId": cafe, "cafeNm": "Coldbrew",
           "chkDate": "20210713", "qty": 1, "status": "REQUESTED", "version": 1})
}

/// Records 1 REGISTERED, 2 CANCELED, 3 FORCE_CANCELED (created directly).
fn seeded() -> MemPlatform {
    let p = MemPlatform::new();
    for (topic, id) in [
        ("order.requested", 1),
        ("order.requested", 2),
        ("order.canceled", 2),
        ("order.force-canceled", 3),
    ] {
        crate::event(&p, topic, order(id, id).to_string().as_bytes()).unwrap();
        p.finish(true);
    }
    p.take_published();
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

/// Every record reads alone and through every listing it belongs to, also
/// one page of one record at a time (every `next` link is followable).
fn still_readable(p: &MemPlatform) -> Result<(), TestCaseError> {
    let listing = Listing {
        path: "/productions",
        id: "orderId",
        filters: &["orderId", "cafeId", "status"],
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
    let mut bad = Vec::new();
    for (field, value) in [
        ("custNm", json!(huge)),
        ("cafeNm", json!(huge)),
        ("chkDate", json!(huge)),
        ("custNm", json!("x".repeat(201))),
        ("id", json!(0)),
        ("cafeId", json!(0)),
    ] {
        let mut o = order(9, 5);
        o[field] = value;
        bad.push((field, o));
    }
    for topic in crate::SUBSCRIPTIONS {
        for (field, o) in &bad {
            let p = seeded();
            let r = crate::event(&p, topic, o.to_string().as_bytes());
            assert!(
                matches!(&r, Err(EventError::Invalid(m)) if m.contains(field)),
                "{topic} {field}: {r:?}"
            );
        }
    }
    let p = seeded();
    let mut at_limit = order(9, 5);
    at_limit["custNm"] = json!("황".repeat(200));
    assert_eq!(
        crate::event(&p, "order.requested", at_limit.to_string().as_bytes()),
        Ok(())
    );
}

/// A well-formed order record of order `id`.
fn valid(id: u64) -> props::Fields {
    props::order_record(id, 5, 1, "REQUESTED", 1)
}

/// Every field of every subscribed topic's payload dropped or at every
/// edge value (each on a fresh order id, so it reaches the store): `ok` or
/// `invalid`, and the records still read, one per page too.
#[test]
fn every_field_at_every_edge_is_ok_or_invalid() {
    for topic in crate::SUBSCRIPTIONS {
        props::event_edge_grid(
            topic,
            |n| valid(10 + n as u64),
            seeded,
            crate::event,
            still_readable,
        );
    }
}
