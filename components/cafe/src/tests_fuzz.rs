//! Property tests of every cafe entry point against hostile input: random
//! sequences of requests (any method, paths under `/cafes` with any
//! segments, any query, bodies of arbitrary bytes / JSON / objects with the
//! real field names holding anything), events on any topic with any payload,
//! and direct `stock` calls with any arguments, over a platform seeded with
//! live, deleted and reserved items.
//!
//! Whatever comes in: no panic (a trap on wasm, or a host limit the
//! `MemPlatform` enforces), no status >= 500, JSON answers in the kit shape,
//! events `ok` or `invalid`, stock calls never `unavailable`; and afterwards
//! the whole state still reads (every item, every page) and keeps the stock
//! rule.

use kit::MemPlatform;
use kit::stock::StockFailure;
use props::{Listing, body, method, path, payload, query, text};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;

use crate::model::{CAFES, Item, MAX_PCNT};
use crate::tests_openapi::API;

const FIELDS: &[&str] = &["cafeId", "cafeNm", "chkDate", "pcnt", "held"];
const WORDS: &[&str] = &["cafes", "stock", "x"];
const PARAMS: &[&str] = &["limit", "after", "cafeId", "pcnt"];
const ORDER_FIELDS: &[&str] = &[
    "id", "custNm", "cafeId", "cafeNm", "chkDate", "qty", "status", "version",
];

/// A request or an event ([`props::Step`]), or a direct `stock` call.
#[derive(Debug, Clone)]
enum Step {
    Common(props::Step),
    Reserve {
        order_id: String,
        cafe_id: u64,
        qty: u32,
    },
    Release {
        order_id: String,
    },
}

fn order_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1u64..=8).prop_map(|n| n.to_string()),
        2 => text(),
        1 => (250usize..=262).prop_map(|n| "7".repeat(n)),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    props::topic(
        select(crate::SUBSCRIPTIONS),
        &[
            "order.force-canceled",
            "cafe.deleted",
            "order.requested",
            "",
        ],
    )
}

/// `POST /cafes` or `PUT /cafes/{id}` with a well-formed body (`pcnt` near
/// 0 or near the bound) with a field or two mutated.
fn owner_write() -> impl Strategy<Value = Step> {
    (1u64..=6, any::<bool>()).prop_flat_map(|(id, put)| {
        let pcnt = prop_oneof![0u32..=20, (MAX_PCNT - 2000)..=(MAX_PCNT + 1)];
        let valid = (pcnt, select(&["Coldbrew", "Latte"][..])).prop_map(move |(pcnt, nm)| {
            vec![
                ("cafeId", id.to_string()),
                ("cafeNm", json!(nm).to_string()),
                ("chkDate", "\"20210713\"".to_owned()),
                ("pcnt", pcnt.to_string()),
            ]
        });
        props::mutated(valid).prop_map(move |body| {
            Step::Common(props::Step::Http {
                method: if put { "PUT" } else { "POST" }.to_owned(),
                path: if put {
                    format!("/cafes/{id}")
                } else {
                    "/cafes".to_owned()
                },
                query: String::new(),
                body,
            })
        })
    })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => owner_write(),
        4 => (method(), path("/cafes", WORDS), query(PARAMS), body(FIELDS))
            .prop_map(|s| Step::Common(props::http_step(s))),
        2 => (topic(), payload(ORDER_FIELDS)).prop_map(|s| Step::Common(props::event_step(s))),
        1 => (
            order_id(),
            prop_oneof![3 => 1u64..=6, 1 => any::<u64>()],
            prop_oneof![3 => 0u32..=12, 1 => any::<u32>(), 1 => 999u32..=1001],
        )
            .prop_map(|(order_id, cafe_id, qty)| Step::Reserve { order_id, cafe_id, qty }),
        1 => order_id().prop_map(|order_id| Step::Release { order_id }),
    ]
}

/// Items 1..=3 live (3 at the bound, with units held), 4 deleted; orders
/// "1" and "2" hold units of items 1 and 3, order "3" was released.
fn seeded() -> MemPlatform {
    let p = MemPlatform::new();
    for (id, pcnt) in [(1u64, 10u32), (2, 0), (3, MAX_PCNT), (4, 5)] {
        let body = json!({"cafeId": id, "cafeNm": "Coldbrew", "chkDate": "20210713", "pcnt": pcnt});
        let r = crate::http(&p, "POST", "/cafes", "", body.to_string().as_bytes());
        assert_eq!(r.status, 201);
        p.finish(true);
    }
    for (order, cafe, qty) in [("1", 1, 2), ("2", 3, 1000), ("3", 1, 1)] {
        crate::stock_reserve(&p, order, cafe, qty).unwrap();
        p.finish(true);
    }
    assert_eq!(crate::stock_release(&p, "3"), Ok(true));
    assert_eq!(crate::http(&p, "DELETE", "/cafes/4", "", b"").status, 200);
    p.finish(true);
    p.take_published();
    p
}

fn run(p: &MemPlatform, step: &Step) -> Result<(), TestCaseError> {
    match step {
        Step::Common(step) => props::run_documented_step(p, step, &API, crate::http, crate::event)?,
        Step::Reserve {
            order_id,
            cafe_id,
            qty,
        } => {
            let r = crate::stock_reserve(p, order_id, *cafe_id, *qty);
            p.finish(r.is_ok());
            prop_assert!(
                !matches!(r, Err(StockFailure::Unavailable(_))),
                "reserve({order_id:?}, {cafe_id}, {qty}) answered {r:?}"
            );
        }
        Step::Release { order_id } => {
            let r = crate::stock_release(p, order_id);
            p.finish(r.is_ok());
            prop_assert!(
                matches!(r, Ok(_) | Err(StockFailure::Invalid(_))),
                "release({order_id:?}) answered {r:?}"
            );
        }
    }
    Ok(())
}

/// Every page of `GET /cafes` (following `Link`) and every item it lists
/// read fine, and every stored item keeps the stock rule.
fn still_readable(p: &MemPlatform) -> Result<(), TestCaseError> {
    let listing = Listing {
        path: "/cafes",
        id: "cafeId",
        filters: &[],
        one_per_page: false,
    };
    listing.still_reads(props::reading(p, |p, method, path, query| {
        crate::http(p, method, path, query, b"")
    }))?;
    for (key, _) in p.entries(CAFES) {
        let id = key.parse::<u64>().unwrap();
        let item: Item = crate::model::load(p, id).unwrap().unwrap();
        prop_assert!(
            u64::from(item.cafe.pcnt) + u64::from(item.held) <= u64::from(MAX_PCNT),
            "{key}: {item:?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(props::config())]

    #[test]
    fn any_input_is_answered_without_a_trap_or_a_5xx(steps in prop::collection::vec(step(), 1..8)) {
        props::run_steps(&seeded(), &steps, run, still_readable)?;
    }

    #[test]
    fn any_order_canceled_payload_is_ok_or_invalid(payload in payload(ORDER_FIELDS)) {
        let p = seeded();
        props::handled(&p, "order.canceled", &crate::event(&p, "order.canceled", &payload))?;
        still_readable(&p)?;
    }
}

#[test]
fn order_ids_the_host_cannot_store_are_invalid() {
    let p = seeded();
    for id in [String::new(), " ".into(), "7".repeat(257)] {
        let r = crate::stock_reserve(&p, &id, 1, 1);
        assert!(matches!(r, Err(StockFailure::Invalid(_))), "{r:?}");
        let r = crate::stock_release(&p, &id);
        assert!(matches!(r, Err(StockFailure::Invalid(_))), "{r:?}");
    }
    let at_limit = "7".repeat(256);
    assert!(crate::stock_reserve(&p, &at_limit, 1, 1).is_ok());
    assert_eq!(crate::stock_release(&p, &at_limit), Ok(true));
}

#[test]
fn explicit_ids_near_the_end_of_the_sequence_never_exhaust_it() {
    let p = MemPlatform::new();
    for id in [u64::MAX, 1 << 63, (1 << 63) - 1, 1 << 62] {
        let body = json!({"cafeId": id, "cafeNm": "Far", "chkDate": "1", "pcnt": 1});
        let r = crate::http(&p, "POST", "/cafes", "", body.to_string().as_bytes());
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        p.finish(true);
        let body = json!({"cafeNm": "Next", "chkDate": "1", "pcnt": 1});
        let r = crate::http(&p, "POST", "/cafes", "", body.to_string().as_bytes());
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        p.finish(true);
    }
}

/// A well-formed item `id`.
fn valid_item(id: u64) -> Vec<(&'static str, String)> {
    vec![
        ("cafeId", id.to_string()),
        ("cafeNm", "\"Coldbrew\"".to_owned()),
        ("chkDate", "\"20210713\"".to_owned()),
        ("pcnt", "5".to_owned()),
    ]
}

/// A well-formed `order.canceled` payload (the order record) of order `id`.
fn valid_order(id: u64) -> props::Fields {
    props::order_record(id, 1, 2, "CANCELED", 2)
}

/// Every field of a POST (new ids), of a PUT of the item at the bound with
/// units held, and of an `order.canceled` payload, dropped or at every edge
/// value: never a trap or a 5xx, events `ok` or `invalid`, and the state
/// still reads and keeps the stock rule.
#[test]
fn every_field_at_every_edge_is_answered_without_a_trap_or_a_5xx() {
    props::edge_grid(
        "POST and PUT /cafes",
        &valid_item(0),
        seeded,
        |p, field, n, value| {
            let post = props::with_field(&valid_item(10 + n as u64), field, value);
            let put = props::with_field(&valid_item(3), field, value);
            for (method, path, body) in [("POST", "/cafes", post), ("PUT", "/cafes/3", put)] {
                let r = crate::http(p, method, path, "", &body);
                props::answered(p, &r)?;
                API.check_answer(method, path, &r)?;
            }
            Ok(())
        },
        still_readable,
    );
    props::event_edge_grid(
        "order.canceled",
        |n| valid_order(1 + n as u64 % 3),
        seeded,
        crate::event,
        still_readable,
    );
}
