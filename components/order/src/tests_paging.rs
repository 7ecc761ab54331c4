//! Paged lists, index-backed filters, the status index, the chunked
//! force-cancel sweep and the cancel rule around it.

use std::collections::BTreeMap;

use kit::keys;
use kit::stock::{Reserved, Stock, StockFailure};
use kit::{EventError, MemPlatform, Platform, Traced};
use serde_json::{Value, json};

use crate::events::{CAFE_SWEEP, SWEEP_CHUNK};
use crate::{api, events};

/// Stock that always has the item (named after its id).
struct Plenty;

impl Stock for Plenty {
    fn reserve(&self, order_id: &str, cafe_id: u64, qty: u32) -> Result<Reserved, StockFailure> {
        Ok(Reserved {
            order_id: order_id.into(),
            cafe_id,
            cafe_nm: format!("item{cafe_id}"),
            chk_date: "20210713".into(),
            qty,
            remaining: 1,
        })
    }
}

fn call(p: &impl Platform, method: &str, target: &str, body: &str) -> kit::Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    api::handle(p, &Plenty, method, path, query, body.as_bytes())
}

fn http(p: &MemPlatform, method: &str, target: &str, body: &str) -> (u16, Value) {
    let r = call(p, method, target, body);
    p.finish(r.status < 400);
    (r.status, serde_json::from_slice(&r.body).unwrap())
}

fn event(p: &MemPlatform, topic: &str, payload: &Value) -> Result<(), EventError> {
    let r = events::handle(p, topic, payload.to_string().as_bytes());
    p.finish(r.is_ok());
    r
}

/// Place an order without going through HTTP for every one of thousands:
/// the same handler, committed at once.
fn place(p: &MemPlatform, cust: &str, cafe: u64) -> u64 {
    let (s, v) = http(
        p,
        "POST",
        "/orders",
        &json!({"custNm": cust, "cafeId": cafe}).to_string(),
    );
    assert_eq!(s, 201, "{v}");
    v["id"].as_u64().unwrap()
}

fn cancel(p: &MemPlatform, id: u64) -> (u16, Value) {
    http(p, "POST", &format!("/orders/{id}/cancel"), "")
}

fn status(p: &MemPlatform, id: u64) -> String {
    let (s, v) = http(p, "GET", &format!("/orders/{id}"), "");
    assert_eq!(s, 200);
    v["status"].as_str().unwrap().to_owned()
}

/// Every page of `target` (following `Link: rel="next"`): the ids per page.
fn pages(p: &impl Platform, target: &str) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    let mut target = target.to_owned();
    loop {
        let r = call(p, "GET", &target, "");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        out.push(
            v.as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_u64().unwrap())
                .collect(),
        );
        match r.header("link") {
            None => return out,
            Some(link) => {
                assert!(link.ends_with(">; rel=\"next\""), "{link}");
                target = link[1..link.len() - ">; rel=\"next\"".len()].to_owned();
            }
        }
    }
}

#[test]
fn pages_cover_every_order_once_in_id_order() {
    let p = MemPlatform::new();
    p.set_sequence("orders", 95); // ids cross 99 → 100 (key order must stay numeric)
    let ids: Vec<u64> = (0..23)
        .map(|i| place(&p, if i % 2 == 0 { "Kim" } else { "Lee" }, 5))
        .collect();
    let got = pages(&p, "/orders?limit=5");
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![5, 5, 5, 5, 3]
    );
    assert_eq!(got.concat(), ids);
    // the default page holds all 23: no link
    let r = call(&p, "GET", "/orders", "");
    assert_eq!(r.header("link"), None);
    // an exact multiple: the last full page has no link to an empty one
    assert_eq!(pages(&p, "/orders?limit=23").len(), 1);
    // the link keeps the filters
    let r = call(&p, "GET", "/orders?custNm=Kim&limit=2", "");
    let first_two = &ids[..3];
    assert_eq!(
        r.header("link"),
        Some(
            format!(
                "</orders?custNm=Kim&limit=2&after={}>; rel=\"next\"",
                first_two[2]
            )
            .as_str()
        )
    );
}

#[test]
fn the_keyset_cursor_survives_inserts_between_pages() {
    let p = MemPlatform::new();
    let a: Vec<u64> = (0..4).map(|_| place(&p, "Kim", 5)).collect();
    let r = call(&p, "GET", "/orders?limit=2", "");
    let link = r.header("link").unwrap().to_owned();
    let b: Vec<u64> = (0..2).map(|_| place(&p, "Kim", 5)).collect();
    let target = &link[1..link.find('>').unwrap()];
    let rest = pages(&p, target).concat();
    assert_eq!(rest, vec![a[2], a[3], b[0], b[1]]);
}

#[test]
fn filters_read_their_index_not_the_collection() {
    let p = MemPlatform::new();
    p.set_range_cap(50); // pages must follow `more`, not trust `limit`
    let mut kim = Vec::new();
    for i in 0..1200 {
        let cafe = if i % 400 == 7 { 6 } else { 5 };
        let cust = if i % 300 == 11 { "Kim Lee" } else { "Other" };
        let id = place(&p, cust, cafe);
        if cust == "Kim Lee" {
            kim.push(id);
        }
    }
    let six: Vec<u64> = (0..1200u64)
        .filter(|i| i % 400 == 7)
        .map(|i| i + 1)
        .collect();
    cancel(&p, kim[1]);
    cancel(&p, six[0]);

    let t = Traced::new(&p);
    assert_eq!(pages(&t, "/orders?custNm=Kim+Lee").concat(), kim);
    assert_eq!(
        t.collections(),
        vec![
            format!("by-cust-{}", keys::text_hash("Kim Lee")),
            "orders".into()
        ]
    );
    assert!(
        t.documents_read() <= 2 * kim.len(),
        "{}",
        t.documents_read()
    );

    let t = Traced::new(&p);
    assert_eq!(pages(&t, "/orders?cafeId=6").concat(), six);
    assert_eq!(t.collections(), vec!["by-cafe-6", "orders"]);
    assert!(t.documents_read() <= 2 * six.len());

    let t = Traced::new(&p);
    assert_eq!(
        pages(&t, "/orders?status=canceled").concat(),
        vec![six[0], kim[1]]
    );
    assert_eq!(t.collections(), vec!["by-status-CANCELED", "orders"]);
    assert!(t.documents_read() <= 4);

    // combined: the most selective index given is scanned, the rest re-checked
    let t = Traced::new(&p);
    assert_eq!(
        pages(&t, "/orders?status=CANCELED&custNm=Kim%20Lee").concat(),
        vec![kim[1]]
    );
    assert_eq!(
        t.collections()[0],
        format!("by-cust-{}", keys::text_hash("Kim Lee"))
    );
    let t = Traced::new(&p);
    assert_eq!(
        pages(&t, "/orders?status=REQUESTED&cafeId=6").concat(),
        six[1..].to_vec()
    );
    assert_eq!(t.collections(), vec!["by-cafe-6", "orders"]);

    // no match at all: an empty array, no link
    let r = call(&p, "GET", "/orders?custNm=Nobody", "");
    assert_eq!(
        (r.body.as_slice(), r.header("link")),
        (b"[]".as_slice(), None)
    );
}

#[test]
fn a_sparse_combined_filter_answers_short_pages_with_a_next_link() {
    let p = MemPlatform::new();
    let total = kit::page::MAX_SCAN as usize + 10;
    let mut wanted = Vec::new();
    for i in 0..total {
        let id = place(&p, "Kim", 5);
        if i == 2 || i == total - 1 {
            cancel(&p, id);
            wanted.push(id);
        }
    }
    let got = pages(&p, "/orders?custNm=Kim&status=CANCELED&limit=10");
    assert_eq!(got.concat(), wanted);
    assert_eq!(
        got.len(),
        2,
        "the first request stops after MAX_SCAN entries: {got:?}"
    );
}

#[test]
fn bad_query_values_are_400_invalid_query_naming_the_parameter() {
    let p = MemPlatform::new();
    for (q, name) in [
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("after=abc", "after"),
        ("cafeId=x", "cafeId"),
        ("cafeId=0", "cafeId"),
        ("status=DONE", "status"),
    ] {
        let (s, v) = http(&p, "GET", &format!("/orders?{q}"), "");
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_query")),
            "{q}"
        );
        assert!(v["message"].as_str().unwrap().starts_with(name), "{q}: {v}");
    }
    let long = format!("/orders?custNm={}", "x".repeat(201));
    assert_eq!(http(&p, "GET", &long, "").1["error"], "invalid_query");
}

/// Which `by-status-*` collections hold each order.
fn status_index(p: &MemPlatform) -> BTreeMap<u64, Vec<&'static str>> {
    let mut out: BTreeMap<u64, Vec<&'static str>> = BTreeMap::new();
    for s in ["REQUESTED", "ORDERED", "CANCELED", "FORCE_CANCELED"] {
        for k in p.keys(&format!("by-status-{s}")) {
            out.entry(keys::parse_id(&k).unwrap()).or_default().push(s);
        }
    }
    out
}

#[test]
fn the_status_index_follows_every_change() {
    let p = MemPlatform::new();
    let a = place(&p, "Kim", 5);
    let b = place(&p, "Kim", 5);
    let c = place(&p, "Kim", 5);
    let d = place(&p, "Kim", 6);
    event(&p, "production.registered", &json!({"orderId": b})).unwrap();
    event(&p, "production.registered", &json!({"orderId": c})).unwrap();
    cancel(&p, c);
    event(&p, "cafe.deleted", &json!({"cafeId": 5})).unwrap();
    let idx = status_index(&p);
    assert_eq!(idx[&a], vec!["FORCE_CANCELED"]);
    assert_eq!(idx[&b], vec!["FORCE_CANCELED"]);
    assert_eq!(idx[&c], vec!["CANCELED"]);
    assert_eq!(idx[&d], vec!["REQUESTED"]);
    for id in [a, b, c, d] {
        assert_eq!(status(&p, id), idx[&id][0]);
    }
}

/// Deliver `cafe.deleted` for `cafe`, then every continuation it leads to,
/// one unit of work each; returns (force-canceled order ids per unit,
/// continuations delivered).
fn sweep(p: &MemPlatform, cafe: u64) -> (Vec<Vec<u64>>, usize) {
    let mut units = Vec::new();
    let mut next = Some(("cafe.deleted".to_owned(), json!({"cafeId": cafe})));
    let mut continuations = 0;
    while let Some((topic, payload)) = next.take() {
        let t = Traced::new(p);
        let r = events::handle(&t, &topic, payload.to_string().as_bytes());
        p.finish(r.is_ok());
        r.unwrap();
        let index_entries: usize = t
            .reads()
            .iter()
            .map(|r| match r {
                kit::platform::Read::Range {
                    collection,
                    entries,
                } if collection.starts_with("by-cafe-") => *entries,
                _ => 0,
            })
            .sum();
        assert!(
            index_entries <= SWEEP_CHUNK as usize,
            "{index_entries} entries in one unit"
        );
        assert!(t.gets_in("orders").len() <= SWEEP_CHUNK as usize);
        assert!(
            t.writes() <= 4 * SWEEP_CHUNK as usize + 2,
            "{} writes",
            t.writes()
        );
        let mut canceled = Vec::new();
        for e in p.take_published() {
            match e.topic.as_str() {
                "order.force-canceled" => canceled.push(e.key.parse().unwrap()),
                CAFE_SWEEP => {
                    assert!(next.is_none(), "one continuation per chunk");
                    assert_eq!(e.key, cafe.to_string());
                    continuations += 1;
                    next = Some((e.topic.clone(), e.json()));
                }
                other => panic!("unexpected {other}"),
            }
        }
        units.push(canceled);
    }
    (units, continuations)
}

#[test]
fn deleting_an_item_with_1050_open_orders_sweeps_them_in_bounded_chunks() {
    let p = MemPlatform::new();
    let mut open = Vec::new();
    let mut canceled = Vec::new();
    let mut others = Vec::new();
    for i in 0..1100 {
        if i % 100 == 50 {
            others.push(place(&p, "Other", 6));
        }
        let id = place(&p, "Kim", 5);
        if i % 22 == 0 {
            cancel(&p, id);
            canceled.push(id);
        } else {
            if i % 3 == 0 {
                event(&p, "production.registered", &json!({"orderId": id})).unwrap();
            }
            open.push(id);
        }
    }
    assert_eq!(open.len(), 1050);
    p.take_published();

    // a redelivered chunk: keep the first continuation to deliver it again later
    let (units, continuations) = sweep(&p, 5);
    let all: Vec<u64> = units.concat();
    assert_eq!(
        all.len(),
        open.len(),
        "one order.force-canceled per open order"
    );
    let mut sorted = all.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, open, "every open order exactly once");
    assert_eq!(continuations, 1100usize.div_ceil(SWEEP_CHUNK as usize) - 1);
    assert_eq!(units.len(), 6);
    for id in &canceled {
        assert_eq!(status(&p, *id), "CANCELED");
    }
    for id in &others {
        assert_eq!(status(&p, *id), "REQUESTED");
    }
    assert_eq!(p.keys("by-status-FORCE_CANCELED").len(), 1050);
    assert!(p.keys("by-status-REQUESTED").len() == others.len());
    assert!(p.keys("by-status-ORDERED").is_empty());

    // redeliveries change nothing and publish nothing: the first event, an
    // old chunk, the last chunk
    let before = p.snapshot();
    for (topic, payload) in [
        ("cafe.deleted", json!({"cafeId": 5})),
        (
            CAFE_SWEEP,
            json!({"cafeId": 5, "after": keys::id(open[190])}),
        ),
        (
            CAFE_SWEEP,
            json!({"cafeId": 5, "after": keys::id(open[1000])}),
        ),
    ] {
        event(&p, topic, &payload).unwrap();
        assert_eq!(p.snapshot(), before, "{topic} {payload}");
        assert!(p.take_published().is_empty());
    }
    let tomb: Value =
        serde_json::from_slice(&p.get("deleted-cafes", &keys::id(5)).unwrap()).unwrap();
    assert_eq!(tomb, json!({"cafeId": 5, "sweep": null}));
}

#[test]
fn a_redelivered_chunk_mid_sweep_changes_nothing() {
    let p = MemPlatform::new();
    let ids: Vec<u64> = (0..7).map(|_| place(&p, "Kim", 5)).collect();
    p.take_published();
    let chunk = |topic: &str, payload: &Value| {
        let r = events::handle_chunked(&p, topic, payload.to_string().as_bytes(), 3);
        p.finish(r.is_ok());
        r.unwrap();
        p.take_published()
    };
    let first = chunk("cafe.deleted", &json!({"cafeId": 5}));
    let cont: Vec<_> = first.iter().filter(|e| e.topic == CAFE_SWEEP).collect();
    assert_eq!(cont.len(), 1);
    let second_payload = cont[0].json();
    assert_eq!(
        second_payload,
        json!({"cafeId": 5, "after": keys::id(ids[2])})
    );
    let second = chunk(CAFE_SWEEP, &second_payload);
    assert_eq!(
        second
            .iter()
            .filter(|e| e.topic == "order.force-canceled")
            .count(),
        3
    );
    // the same chunk again: nothing
    let before = p.snapshot();
    assert!(chunk(CAFE_SWEEP, &second_payload).is_empty());
    assert_eq!(p.snapshot(), before);
    // the real continuation finishes the job
    let third_payload = second
        .iter()
        .find(|e| e.topic == CAFE_SWEEP)
        .unwrap()
        .json();
    let third = chunk(CAFE_SWEEP, &third_payload);
    assert_eq!(third.len(), 1, "the last order, no continuation: {third:?}");
    assert!(ids.iter().all(|id| status(&p, *id) == "FORCE_CANCELED"));
}

#[test]
fn after_the_tombstone_a_cancel_of_an_open_order_is_refused() {
    let p = MemPlatform::new();
    let ids: Vec<u64> = (0..4).map(|_| place(&p, "Kim", 5)).collect();
    let early = place(&p, "Kim", 5);
    assert_eq!(
        cancel(&p, early).0,
        200,
        "before the deletion reached order: the cancel wins"
    );
    p.take_published();
    let r = events::handle_chunked(&p, "cafe.deleted", br#"{"cafeId":5}"#, 2);
    p.finish(r.is_ok());
    r.unwrap();
    let continuation = p
        .take_published()
        .into_iter()
        .find(|e| e.topic == CAFE_SWEEP)
        .unwrap();
    // ids[3] is still open (beyond the first chunk), but the item is gone
    assert_eq!(status(&p, ids[3]), "REQUESTED");
    let before = p.snapshot();
    let (s, v) = cancel(&p, ids[3]);
    assert_eq!(
        (s, v),
        (
            409,
            json!({"error":"already_force_canceled","message":format!("order {} cannot be canceled: its menu item (cafe 5) was deleted, the order is being force-canceled", ids[3])})
        )
    );
    let (s, _) = http(
        &p,
        "PUT",
        &format!("/orders/{}", ids[3]),
        r#"{"status":"CANCELED"}"#,
    );
    assert_eq!(s, 409);
    assert_eq!(p.snapshot(), before);
    assert!(p.published().is_empty());
    let r = events::handle_chunked(&p, CAFE_SWEEP, &continuation.payload, 2);
    p.finish(r.is_ok());
    r.unwrap();
    let topics: Vec<(String, String)> = p
        .take_published()
        .into_iter()
        .map(|e| (e.topic, e.key))
        .collect();
    assert_eq!(
        topics,
        vec![
            ("order.force-canceled".to_owned(), ids[2].to_string()),
            ("order.force-canceled".to_owned(), ids[3].to_string()),
            (CAFE_SWEEP.to_owned(), "5".to_owned()),
        ]
    );
    assert_eq!(status(&p, early), "CANCELED");
    assert_eq!(cancel(&p, ids[3]).1["error"], "already_force_canceled");
}

#[test]
fn malformed_sweeps_are_invalid_and_legacy_tombstones_are_finished_sweeps() {
    let p = MemPlatform::new();
    for payload in [
        json!({"cafeId": 5}),
        json!({"cafeId": 5, "after": "7"}),
        json!({"cafeId": 5, "after": 7}),
        json!({"after": keys::id(1)}),
    ] {
        assert!(
            matches!(event(&p, CAFE_SWEEP, &payload), Err(EventError::Invalid(_))),
            "{payload}"
        );
    }
    // a continuation for an item order never saw deleted
    assert!(matches!(
        event(&p, CAFE_SWEEP, &json!({"cafeId": 9, "after": keys::id(1)})),
        Err(EventError::Invalid(_))
    ));
    // a tombstone written before chunked sweeps: done, a stray chunk does nothing
    p.put("deleted-cafes", &keys::id(8), br#"{"cafeId":8}"#);
    p.finish(true);
    event(&p, CAFE_SWEEP, &json!({"cafeId": 8, "after": keys::id(1)})).unwrap();
    event(&p, "cafe.deleted", &json!({"cafeId": 8})).unwrap();
    assert!(p.published().is_empty());
    assert!(crate::SUBSCRIPTIONS.contains(&CAFE_SWEEP));
}
