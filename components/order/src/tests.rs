//! Native tests of the order logic against an in-memory platform with the
//! host's unit-of-work rule, and a fake stock that writes into the same unit
//! (as cafe does when the host links it in).

use std::cell::RefCell;

use kit::keys;
use kit::stock::{Reserved, Stock, StockFailure};
use kit::{EventError, MemPlatform, Platform, Traced};
use serde_json::{Value, json};

use crate::{api, events};

/// Stock with one menu item (cafe 5, "Coldbrew", "20210713"), or a scripted failure.
struct FakeStock<'a> {
    p: &'a MemPlatform,
    fail: RefCell<Option<StockFailure>>,
    calls: RefCell<u32>,
}

impl<'a> FakeStock<'a> {
    fn new(p: &'a MemPlatform) -> Self {
        FakeStock {
            p,
            fail: RefCell::new(None),
            calls: RefCell::new(0),
        }
    }
}

impl Stock for FakeStock<'_> {
    fn reserve(&self, order_id: &str, cafe_id: u64, qty: u32) -> Result<Reserved, StockFailure> {
        *self.calls.borrow_mut() += 1;
        if let Some(f) = self.fail.borrow().clone() {
            return Err(f);
        }
        self.p.put("fake-reservations", order_id, b"{}");
        Ok(Reserved {
            order_id: order_id.into(),
            cafe_id,
            cafe_nm: "Coldbrew".into(),
            chk_date: "20210713".into(),
            qty,
            remaining: 9,
        })
    }
}

fn call(p: &MemPlatform, s: &FakeStock, method: &str, target: &str, body: &str) -> (u16, Value) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let r = api::handle(p, s, method, path, query, body.as_bytes());
    p.finish(r.status < 400);
    (r.status, serde_json::from_slice(&r.body).unwrap())
}

fn event(p: &MemPlatform, topic: &str, payload: Value) -> Result<(), EventError> {
    let r = events::handle(p, topic, payload.to_string().as_bytes());
    p.finish(r.is_ok());
    r
}

const SEED_ORDER: &str =
    r#"{"custNm":"Hwang","cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713"}"#;

fn place(p: &MemPlatform, s: &FakeStock) -> u64 {
    let (st, v) = call(p, s, "POST", "/orders", SEED_ORDER);
    assert_eq!(st, 201, "{v}");
    p.take_published();
    v["id"].as_u64().unwrap()
}

fn status(p: &MemPlatform, s: &FakeStock, id: u64) -> (String, u64) {
    let v = call(p, s, "GET", &format!("/orders/{id}"), "").1;
    (
        v["status"].as_str().unwrap().to_owned(),
        v["version"].as_u64().unwrap(),
    )
}

#[test]
fn seed_order_is_requested_with_a_reservation() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    let (st, v) = call(&p, &s, "POST", "/orders", SEED_ORDER);
    assert_eq!(st, 201);
    assert_eq!(
        v,
        json!({"id":1,"custNm":"Hwang","cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713","qty":1,"status":"REQUESTED","version":1})
    );
    let ev = p.take_published();
    assert_eq!(
        (ev[0].topic.as_str(), ev[0].key.as_str()),
        ("order.requested", "1")
    );
    assert_eq!(ev[0].json(), v);
    assert!(p.get("fake-reservations", "1").is_some());
}

#[test]
fn menu_fields_are_optional_and_filled_from_the_reservation() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    let (st, v) = call(
        &p,
        &s,
        "POST",
        "/orders",
        r#"{"custNm":"Kim","cafeId":"5","qty":"3","chkDate":20210713}"#,
    );
    assert_eq!(st, 201);
    assert_eq!(
        (v["cafeNm"].as_str(), v["qty"].as_u64()),
        (Some("Coldbrew"), Some(3))
    );
}

#[test]
fn invalid_orders_never_reach_stock() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    for (body, msg) in [
        (r#"{"cafeId":5}"#, "custNm is required"),
        (r#"{"custNm":"Hwang"}"#, "cafeId is required"),
        (r#"{"custNm":"Hwang","cafeId":"five"}"#, "cafeId must be"),
        (
            r#"{"custNm":"Hwang","cafeId":5,"qty":0}"#,
            "qty must be a whole number from 1 to 1000",
        ),
        (r#"{"custNm":"Hwang","cafeId":5,"qty":1001}"#, "qty must"),
        (r#"{"custNm":"","cafeId":5}"#, "custNm must"),
    ] {
        let (st, v) = call(&p, &s, "POST", "/orders", body);
        assert_eq!(st, 400, "{body}");
        assert!(v["message"].as_str().unwrap().starts_with(msg), "{v}");
    }
    assert_eq!(*s.calls.borrow(), 0);
}

#[test]
fn stock_refusals_map_to_statuses_and_store_nothing() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    for (fail, st, kind) in [
        (
            StockFailure::NotFound("cafe 5 does not exist".into()),
            404,
            "cafe_not_found",
        ),
        (StockFailure::SoldOut(0), 409, "sold_out"),
        (
            StockFailure::Invalid("qty".into()),
            400,
            "invalid_reservation",
        ),
        (
            StockFailure::Unavailable("down".into()),
            503,
            "stock_unavailable",
        ),
    ] {
        *s.fail.borrow_mut() = Some(fail);
        let (got, v) = call(&p, &s, "POST", "/orders", SEED_ORDER);
        assert_eq!((got, v["error"].as_str()), (st, Some(kind)));
        if kind == "sold_out" {
            assert_eq!(v["message"], "cafe 5 (Coldbrew) has 0 left, 1 requested");
        }
    }
    assert!(p.keys("orders").is_empty());
    assert!(p.keys("by-cafe-5").is_empty());
    assert!(p.published().is_empty());
}

#[test]
fn menu_mismatch_discards_the_reservation() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    let (st, v) = call(
        &p,
        &s,
        "POST",
        "/orders",
        r#"{"custNm":"Hwang","cafeId":5,"cafeNm":"Latte","chkDate":"20210713"}"#,
    );
    assert_eq!((st, v["error"].as_str()), (409, Some("menu_mismatch")));
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("\"Latte\"") && msg.contains("\"Coldbrew\""),
        "{msg}"
    );
    assert!(p.keys("fake-reservations").is_empty());
    assert!(p.keys("orders").is_empty());
    assert!(p.keys("by-cafe-5").is_empty());
}

#[test]
fn deleted_cafes_are_refused_before_reserving() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    event(
        &p,
        "cafe.deleted",
        json!({"cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713"}),
    )
    .unwrap();
    assert_eq!(call(&p, &s, "POST", "/orders", SEED_ORDER).0, 404);
    assert_eq!(*s.calls.borrow(), 0);
}

#[test]
fn seed_put_cancels_once() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    let id = place(&p, &s);
    let whole = json!({"id":id,"custNm":"Hwang","cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713","status":"CANCELED"});
    let (st, v) = call(&p, &s, "PUT", &format!("/orders/{id}"), &whole.to_string());
    assert_eq!(
        (st, v["status"].as_str(), v["version"].as_u64()),
        (200, Some("CANCELED"), Some(2))
    );
    let ev = p.take_published();
    assert_eq!((ev.len(), ev[0].topic.as_str()), (1, "order.canceled"));
    assert_eq!(ev[0].json(), v);
    // again, through the explicit endpoint: 200, unchanged, no event
    let (st, v2) = call(&p, &s, "POST", &format!("/orders/{id}/cancel"), "");
    assert_eq!((st, v2), (200, v));
    assert!(p.take_published().is_empty());
}

#[test]
fn put_only_sets_canceled() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    let id = place(&p, &s);
    let (st, v) = call(
        &p,
        &s,
        "PUT",
        &format!("/orders/{id}"),
        r#"{"status":"ORDERED"}"#,
    );
    assert_eq!(st, 400);
    assert_eq!(
        v["message"],
        "only status \"CANCELED\" can be set; got \"ORDERED\""
    );
    let (st, v) = call(&p, &s, "PUT", &format!("/orders/{id}"), r#"{"custNm":"x"}"#);
    assert_eq!(
        (st, v["message"].as_str()),
        (
            400,
            Some("only status \"CANCELED\" can be set; got no status")
        )
    );
    assert_eq!(call(&p, &s, "PUT", &format!("/orders/{id}"), "").0, 400);
    assert_eq!(
        call(&p, &s, "PUT", "/orders/99", r#"{"status":"CANCELED"}"#).0,
        404
    );
    assert_eq!(status(&p, &s, id), ("REQUESTED".into(), 1));
}

#[test]
fn production_registered_moves_requested_to_ordered_once() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    let id = place(&p, &s);
    let ev = json!({"id":id,"orderId":id,"status":"REGISTERED","version":1});
    event(&p, "production.registered", ev.clone()).unwrap();
    event(&p, "production.registered", ev).unwrap();
    assert_eq!(status(&p, &s, id), ("ORDERED".into(), 2));
    let published = p.take_published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].topic, "order.ordered");
    // unknown order, string id: acknowledged, nothing happens
    event(&p, "production.registered", json!({"orderId":"77"})).unwrap();
    assert!(p.take_published().is_empty());
    assert!(event(&p, "production.registered", json!({"orderId":-1})).is_err());
}

#[test]
fn late_registration_does_not_revive_a_canceled_order() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    let id = place(&p, &s);
    call(&p, &s, "POST", &format!("/orders/{id}/cancel"), "");
    event(&p, "production.registered", json!({"orderId":id})).unwrap();
    assert_eq!(status(&p, &s, id), ("CANCELED".into(), 2));
}

#[test]
fn cafe_deleted_force_cancels_open_orders_of_that_item() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    let a = place(&p, &s); // REQUESTED
    let b = place(&p, &s); // → ORDERED
    let c = place(&p, &s); // → CANCELED
    event(&p, "production.registered", json!({"orderId":b})).unwrap();
    call(&p, &s, "POST", &format!("/orders/{c}/cancel"), "");
    let (_, other) = call(&p, &s, "POST", "/orders", r#"{"custNm":"Lee","cafeId":6}"#);
    p.take_published();
    let del = json!({"cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713"});
    event(&p, "cafe.deleted", del.clone()).unwrap();
    event(&p, "cafe.deleted", del).unwrap();
    assert_eq!(status(&p, &s, a), ("FORCE_CANCELED".into(), 2));
    assert_eq!(status(&p, &s, b), ("FORCE_CANCELED".into(), 3));
    assert_eq!(status(&p, &s, c), ("CANCELED".into(), 2));
    assert_eq!(status(&p, &s, other["id"].as_u64().unwrap()).0, "REQUESTED");
    let topics: Vec<_> = p.take_published().into_iter().map(|e| e.topic).collect();
    assert_eq!(topics, vec!["order.force-canceled", "order.force-canceled"]);
    let (st, v) = call(&p, &s, "POST", &format!("/orders/{a}/cancel"), "");
    assert_eq!(
        (st, v["error"].as_str()),
        (409, Some("already_force_canceled"))
    );
}

fn place_at(p: &MemPlatform, s: &FakeStock, cafe: u64) -> u64 {
    let body = json!({"custNm":"Hwang","cafeId":cafe}).to_string();
    let (st, v) = call(p, s, "POST", "/orders", &body);
    assert_eq!(st, 201, "{v}");
    p.take_published();
    v["id"].as_u64().unwrap()
}

#[test]
fn placing_an_order_indexes_it_under_its_item() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    let a = place_at(&p, &s, 5);
    let b = place_at(&p, &s, 6);
    let c = place_at(&p, &s, 5);
    assert_eq!(p.keys("by-cafe-5"), vec![keys::id(a), keys::id(c)]);
    assert_eq!(p.keys("by-cafe-6"), vec![keys::id(b)]);
    let doc: Value = serde_json::from_slice(&p.get("by-cafe-5", &keys::id(a)).unwrap()).unwrap();
    assert_eq!(doc, json!({"id":a}));
    let hwang = format!("by-cust-{}", keys::text_hash("Hwang"));
    assert_eq!(p.keys(&hwang), vec![keys::id(a), keys::id(b), keys::id(c)]);
    assert_eq!(p.keys("by-status-REQUESTED").len(), 3);
    assert_eq!(
        p.keys("orders"),
        vec![keys::id(a), keys::id(b), keys::id(c)]
    );
    // the largest id still makes a legal collection name
    assert!(crate::model::by_cafe(u64::MAX).len() <= 256);
}

#[test]
fn cafe_deleted_reads_and_changes_only_that_items_orders() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    // interleaved, a dozen open orders of item 5 (ids past 9, so key order is
    // not numeric order) and open / ordered / canceled orders of item 6
    let mut five = Vec::new();
    let mut six = Vec::new();
    for i in 0..12 {
        five.push(place_at(&p, &s, 5));
        if i % 4 == 0 {
            six.push(place_at(&p, &s, 6));
        }
    }
    event(&p, "production.registered", json!({"orderId":five[1]})).unwrap();
    event(&p, "production.registered", json!({"orderId":six[1]})).unwrap();
    call(&p, &s, "POST", &format!("/orders/{}/cancel", six[2]), "");
    p.take_published();
    let before: Vec<Value> = six
        .iter()
        .map(|id| call(&p, &s, "GET", &format!("/orders/{id}"), "").1)
        .collect();

    let r = Traced::new(&p);
    let res = events::handle(&r, "cafe.deleted", br#"{"cafeId":5}"#);
    p.finish(res.is_ok());
    res.unwrap();

    // read set: the tombstone, the item's index and the item's orders, nothing else
    assert_eq!(
        r.collections(),
        vec!["by-cafe-5", "deleted-cafes", "orders"]
    );
    assert_eq!(
        r.gets_in("orders"),
        five.iter().map(|id| keys::id(*id)).collect::<Vec<_>>()
    );

    for (i, id) in five.iter().enumerate() {
        let version = if i == 1 { 3 } else { 2 };
        assert_eq!(status(&p, &s, *id), ("FORCE_CANCELED".into(), version));
    }
    let after: Vec<Value> = six
        .iter()
        .map(|id| call(&p, &s, "GET", &format!("/orders/{id}"), "").1)
        .collect();
    assert_eq!(after, before);
    let ev = p.take_published();
    assert!(ev.iter().all(|e| e.topic == "order.force-canceled"));
    let mut keys: Vec<u64> = ev.iter().map(|e| e.key.parse().unwrap()).collect();
    keys.sort_unstable();
    assert_eq!(keys, five);
    for e in &ev {
        assert_eq!(e.json()["status"], "FORCE_CANCELED");
        assert_eq!(e.json()["cafeId"], 5);
    }

    // redelivery: nothing open any more
    event(&p, "cafe.deleted", json!({"cafeId":5})).unwrap();
    assert!(p.take_published().is_empty());
    // the other item's turn: its open orders go, its canceled one stays
    event(&p, "cafe.deleted", json!({"cafeId":6})).unwrap();
    assert_eq!(status(&p, &s, six[0]), ("FORCE_CANCELED".into(), 2));
    assert_eq!(status(&p, &s, six[1]), ("FORCE_CANCELED".into(), 3));
    assert_eq!(status(&p, &s, six[2]), ("CANCELED".into(), 2));
    assert_eq!(p.take_published().len(), 2);
}

#[test]
fn list_filters_and_sorts_numerically() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    p.set_sequence("orders", 9);
    let first = place(&p, &s); // 9
    let second = place(&p, &s); // 10
    call(
        &p,
        &s,
        "POST",
        "/orders",
        r#"{"custNm":"Kim Lee","cafeId":6}"#,
    ); // 11
    call(&p, &s, "POST", &format!("/orders/{second}/cancel"), "");
    let ids = |target: &str| -> Vec<u64> {
        let (st, v) = call(&p, &s, "GET", target, "");
        assert_eq!(st, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids("/orders"), vec![first, second, 11]);
    assert_eq!(ids("/orders?custNm=Hwang"), vec![first, second]);
    assert_eq!(ids("/orders?custNm=Kim+Lee"), vec![11]);
    assert_eq!(ids("/orders?cafeId=6"), vec![11]);
    assert_eq!(ids("/orders?status=canceled"), vec![second]);
    assert_eq!(ids("/orders?custNm=Hwang&status=REQUESTED"), vec![first]);
    assert_eq!(call(&p, &s, "GET", "/orders?status=DONE", "").0, 400);
    assert_eq!(call(&p, &s, "GET", "/orders?cafeId=x", "").0, 400);
}

#[test]
fn routing_errors_are_json() {
    let p = MemPlatform::new();
    let s = FakeStock::new(&p);
    let (st, v) = call(&p, &s, "GET", "/orders/abc", "");
    assert_eq!(
        (st, v["message"].as_str()),
        (
            400,
            Some("order id must be a positive integer, got \"abc\"")
        )
    );
    assert_eq!(
        call(&p, &s, "GET", "/orders/1", "").1["error"],
        "order_not_found"
    );
    assert_eq!(call(&p, &s, "GET", "/orders/1/x", "").0, 404);
    let r = api::handle(&p, &s, "DELETE", "/orders/1", "", b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, PUT")));
    let r = api::handle(&p, &s, "GET", "/orders/1/cancel", "", b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
}
