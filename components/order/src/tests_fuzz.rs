//! Property tests of order's entry points against hostile input: random
//! sequences of requests (any method, paths under `/orders` with any
//! segments, any query and filters, bodies of arbitrary bytes / JSON /
//! objects with the real field names holding anything) and events on every
//! subscribed topic (and others) with any payload, over a platform seeded
//! with orders in every status and a deleted item mid-sweep. The `stock`
//! import is a fake that answers like cafe (reserves, sold out, not found,
//! invalid) and writes into the same unit of work.
//!
//! Whatever comes in: no panic (a trap on wasm, or a host limit the
//! `MemPlatform` enforces), no status >= 500, JSON answers in the kit shape,
//! events `ok` or `invalid`; afterwards every order still reads, through
//! every listing and filter, and its status index agrees with it.

use kit::stock::{Reserved, Stock, StockFailure};
use kit::{MemPlatform, Platform};
use props::{Listing, Step, body, method, path, payload, query};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

use crate::model::{ORDERS, Order, Status, by_status, key};
use crate::tests_openapi::API;

const FIELDS: &[&str] = &[
    "custNm", "cafeId", "cafeNm", "chkDate", "qty", "status", "id", "version",
];
const WORDS: &[&str] = &["cancel", "orders", "x"];
const PARAMS: &[&str] = &["custNm", "cafeId", "status"];
const PAYLOAD_FIELDS: &[&str] = &["orderId", "cafeId", "after", "id", "status", "version"];

/// Like cafe: item 1 has plenty, 2 is sold out, 3 has 5 units, any other
/// item does not exist; qty must be 1..=1000. Writes into the same unit.
struct FakeStock<'a>(&'a MemPlatform);

impl Stock for FakeStock<'_> {
    fn reserve(&self, order_id: &str, cafe_id: u64, qty: u32) -> Result<Reserved, StockFailure> {
        if !(1..=1000).contains(&qty) {
            return Err(StockFailure::Invalid(format!("qty {qty}")));
        }
        let left = match cafe_id {
            1 => 1_000_000,
            2 => 0,
            3 => 5,
            _ => return Err(StockFailure::NotFound(format!("cafe {cafe_id}"))),
        };
        if left < qty {
            return Err(StockFailure::SoldOut(left));
        }
        self.0.put("fake-reservations", order_id, b"{}");
        Ok(Reserved {
            order_id: order_id.to_owned(),
            cafe_id,
            cafe_nm: "Coldbrew".into(),
            chk_date: "20210713".into(),
            qty,
            remaining: left - qty,
        })
    }
}

fn topic() -> impl Strategy<Value = String> {
    props::topic(
        select(crate::SUBSCRIPTIONS),
        &[
            "order.canceled",
            "cafe.registered",
            "production.canceled",
            "",
        ],
    )
}

/// A sweep continuation that may be the one the tombstone waits for, a
/// stale one, or one for an item that was never deleted.
fn continuation() -> impl Strategy<Value = Step> {
    (0u64..=6, 0u64..=6).prop_map(|(cafe, after)| Step::Event {
        topic: crate::CAFE_SWEEP.to_owned(),
        payload: json!({"cafeId": cafe, "after": key(after)})
            .to_string()
            .into_bytes(),
    })
}

/// `POST /orders` with a well-formed body (items 1..=4, some quantity)
/// with a field or two mutated.
fn place() -> impl Strategy<Value = Step> {
    let qty = prop_oneof![1u32..=6, 999u32..=1001];
    let valid =
        (select(&["Hwang", "Kim", " Lee "][..]), 1u64..=4, qty).prop_map(|(cust, cafe, qty)| {
            vec![
                ("custNm", json!(cust).to_string()),
                ("cafeId", cafe.to_string()),
                ("cafeNm", "\"Coldbrew\"".to_owned()),
                ("chkDate", "\"20210713\"".to_owned()),
                ("qty", qty.to_string()),
            ]
        });
    props::mutated(valid).prop_map(|body| Step::Http {
        method: "POST".into(),
        path: "/orders".into(),
        query: String::new(),
        body,
    })
}

/// The seed's cancel, `PUT /orders/{id}` with the order sent back and a
/// status, a field or two mutated; or `POST /orders/{id}/cancel`.
fn cancel() -> impl Strategy<Value = Step> {
    (1u64..=7, any::<bool>()).prop_flat_map(|(id, put)| {
        let status = select(
            &[
                "CANCELED",
                "canceled",
                " Canceled ",
                "ORDERED",
                "FORCE_CANCELED",
            ][..],
        );
        let valid = status.prop_map(move |status| {
            vec![
                ("id", id.to_string()),
                ("custNm", "\"Hwang\"".to_owned()),
                ("status", json!(status).to_string()),
                ("version", "1".to_owned()),
            ]
        });
        props::mutated(valid).prop_map(move |body| Step::Http {
            method: if put { "PUT" } else { "POST" }.to_owned(),
            path: if put {
                format!("/orders/{id}")
            } else {
                format!("/orders/{id}/cancel")
            },
            query: String::new(),
            body,
        })
    })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => place(),
        2 => cancel(),
        4 => (method(), path("/orders", WORDS), query(PARAMS), body(FIELDS))
            .prop_map(props::http_step),
        2 => (topic(), payload(PAYLOAD_FIELDS)).prop_map(props::event_step),
        1 => continuation(),
    ]
}

fn http(p: &MemPlatform, method: &str, target: &str, body: &str) -> kit::Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let r = crate::http(p, &FakeStock(p), method, path, query, body.as_bytes());
    p.finish(r.status < 400);
    r
}

/// Orders 1 REQUESTED, 2 ORDERED, 3 CANCELED (item 1); 4 FORCE_CANCELED
/// and 5 still REQUESTED (item 3, deleted): the sweep, one entry per chunk,
/// waits for its continuation after order 4.
fn seeded() -> MemPlatform {
    let p = MemPlatform::new();
    for (cust, cafe) in [
        ("Hwang", 1),
        ("Kim", 1),
        ("Hwang", 1),
        ("Lee", 3),
        ("Lee", 3),
    ] {
        let r = http(
            &p,
            "POST",
            "/orders",
            &json!({"custNm": cust, "cafeId": cafe}).to_string(),
        );
        assert_eq!(r.status, 201);
    }
    let ev = |topic: &str, payload: Value| {
        let r = crate::event_with_sweep_chunk(&p, topic, payload.to_string().as_bytes(), 1);
        p.finish(r.is_ok());
        r.unwrap();
    };
    ev("production.registered", json!({"orderId": 2}));
    assert_eq!(http(&p, "POST", "/orders/3/cancel", "").status, 200);
    ev("cafe.deleted", json!({"cafeId": 3}));
    p.take_published();
    p
}

fn run(p: &MemPlatform, step: &Step) -> Result<(), TestCaseError> {
    props::run_documented_step(
        p,
        step,
        &API,
        |p, method, path, query, body| crate::http(p, &FakeStock(p), method, path, query, body),
        crate::event,
    )
}

/// Every order reads alone and through every listing it belongs to, and
/// the status indexes agree with the orders.
fn still_readable(p: &MemPlatform) -> Result<(), TestCaseError> {
    let listing = Listing {
        path: "/orders",
        id: "id",
        filters: &["cafeId", "status"],
        one_per_page: false,
    };
    let all = listing.still_reads(props::reading(p, |p, method, path, query| {
        crate::http(p, &FakeStock(p), method, path, query, b"")
    }))?;
    for status in Status::ALL {
        for k in p.keys(&by_status(status)) {
            let o: Option<Order> = p.get_json(ORDERS, &k).unwrap();
            prop_assert_eq!(o.map(|o| o.status), Some(status), "index entry {}", k);
        }
    }
    prop_assert_eq!(p.keys(ORDERS).len(), all.len());
    prop_assert!(
        p.keys(ORDERS)
            .iter()
            .all(|k| *k == key(kit::keys::parse_id(k).unwrap_or(0)))
    );
    Ok(())
}

proptest! {
    #![proptest_config(props::config())]

    #[test]
    fn any_input_is_answered_without_a_trap_or_a_5xx(steps in prop::collection::vec(step(), 1..8)) {
        props::run_steps(&seeded(), &steps, run, still_readable)?;
    }

    #[test]
    fn any_payload_on_a_subscribed_topic_is_ok_or_invalid(
        topic in select(crate::SUBSCRIPTIONS),
        payload in payload(PAYLOAD_FIELDS),
    ) {
        let p = seeded();
        props::handled(&p, topic, &crate::event(&p, topic, &payload))?;
        still_readable(&p)?;
    }
}

/// A well-formed `POST /orders` body.
fn valid_place() -> Vec<(&'static str, String)> {
    vec![
        ("custNm", "\"Hwang\"".to_owned()),
        ("cafeId", "1".to_owned()),
        ("cafeNm", "\"Coldbrew\"".to_owned()),
        ("chkDate", "\"20210713\"".to_owned()),
        ("qty", "1".to_owned()),
    ]
}

/// The seed's cancel body: the order sent back with status CANCELED.
fn valid_put(id: u64) -> Vec<(&'static str, String)> {
    vec![
        ("id", id.to_string()),
        ("custNm", "\"Hwang\"".to_owned()),
        ("cafeId", "1".to_owned()),
        ("status", "\"CANCELED\"".to_owned()),
        ("version", "1".to_owned()),
    ]
}

/// Every field of a placement, of the seed's cancel (on each seeded order
/// in turn) and of each subscribed topic's payload, dropped or at every edge
/// value: never a trap or a 5xx, events `ok` or `invalid`, and every order
/// still reads through every listing.
#[test]
fn every_field_at_every_edge_is_answered_without_a_trap_or_a_5xx() {
    type Request = fn(u64) -> (String, Vec<(&'static str, String)>);
    let requests: [(&str, Request); 2] = [
        ("POST", |_| ("/orders".to_owned(), valid_place())),
        ("PUT", |n| {
            (format!("/orders/{}", n % 5 + 1), valid_put(n % 5 + 1))
        }),
    ];
    for (method, request) in requests {
        props::edge_grid(
            method,
            &request(0).1,
            seeded,
            |p, field, n, value| {
                let (path, valid) = request(n as u64);
                let body = props::with_field(&valid, field, value);
                let r = crate::http(p, &FakeStock(p), method, &path, "", &body);
                props::answered(p, &r)
                    .and_then(|_| API.check_answer(method, &path, &r))
                    .map_err(|e| TestCaseError::fail(format!("{path}: {e}")))
            },
            still_readable,
        );
    }
    let payloads: [(&str, Vec<(&'static str, String)>); 3] = [
        ("production.registered", vec![("orderId", "1".to_owned())]),
        ("cafe.deleted", vec![("cafeId", "1".to_owned())]),
        (
            crate::CAFE_SWEEP,
            vec![
                ("cafeId", "3".to_owned()),
                ("after", json!(key(4)).to_string()),
            ],
        ),
    ];
    for (topic, valid) in payloads {
        props::event_edge_grid(
            topic,
            |_| valid.clone(),
            seeded,
            crate::event,
            still_readable,
        );
    }
}
