//! Native tests of the cafe logic against an in-memory platform with the
//! host's unit-of-work rule (commit iff status < 400 / handler Ok).

use kit::{MemPlatform, Platform};
use serde_json::{Value, json};

use crate::stock::{self, StockFailure};
use crate::{api, events};

fn call(p: &MemPlatform, method: &str, path: &str, body: &str) -> (u16, Value) {
    let r = api::handle(p, method, path, body.as_bytes());
    p.finish(r.status < 400);
    assert_eq!(
        r.headers[0],
        ("content-type".into(), "application/json".into())
    );
    (r.status, serde_json::from_slice(&r.body).unwrap())
}

fn event(p: &MemPlatform, topic: &str, payload: Value) -> Result<(), kit::EventError> {
    let r = events::handle(p, topic, payload.to_string().as_bytes());
    p.finish(r.is_ok());
    r
}

fn reserve(
    p: &MemPlatform,
    order: &str,
    cafe: u64,
    qty: u32,
) -> Result<stock::Reserved, StockFailure> {
    let r = stock::reserve(p, order, cafe, qty);
    p.finish(r.is_ok());
    r
}

fn seed(p: &MemPlatform, id: u64, pcnt: u32) {
    let (s, _) = call(
        p,
        "POST",
        "/cafes",
        &json!({"cafeId": id, "cafeNm": "Coldbrew", "chkDate": "20210713", "pcnt": pcnt})
            .to_string(),
    );
    assert_eq!(s, 201);
    p.take_published();
}

fn pcnt(p: &MemPlatform, id: u64) -> Value {
    call(p, "GET", &format!("/cafes/{id}"), "").1["pcnt"].clone()
}

#[test]
fn seed_request_with_string_id_registers_the_item() {
    let p = MemPlatform::new();
    let (s, v) = call(
        &p,
        "POST",
        "/cafes",
        r#"{"cafeId":"99","cafeNm":"coffee","chkDate":"210713","pcnt":20}"#,
    );
    assert_eq!(s, 201);
    assert_eq!(
        v,
        json!({"cafeId":99,"cafeNm":"coffee","chkDate":"210713","pcnt":20})
    );
    let ev = p.take_published();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].topic.as_str(), ev[0].key.as_str()),
        ("cafe.registered", "99")
    );
    assert_eq!(ev[0].json(), v);
    assert_eq!(call(&p, "GET", "/cafes/99", "").1, v);
}

#[test]
fn reposting_a_live_id_updates_it() {
    let p = MemPlatform::new();
    seed(&p, 99, 20);
    let (s, v) = call(
        &p,
        "POST",
        "/cafes",
        r#"{"cafeId":99,"cafeNm":"latte","chkDate":"210713","pcnt":5}"#,
    );
    assert_eq!(s, 200);
    assert_eq!(v["cafeNm"], "latte");
    assert_eq!(v["pcnt"], 5);
    assert_eq!(p.take_published()[0].topic, "cafe.updated");
}

#[test]
fn server_assigns_ids_skipping_used_ones() {
    let p = MemPlatform::new();
    seed(&p, 1, 1);
    seed(&p, 2, 1);
    call(&p, "DELETE", "/cafes/2", "");
    let (s, v) = call(
        &p,
        "POST",
        "/cafes",
        r#"{"cafeNm":"tea","chkDate":20210713,"pcnt":"3"}"#,
    );
    assert_eq!(s, 201);
    assert_eq!(
        v,
        json!({"cafeId":3,"cafeNm":"tea","chkDate":"20210713","pcnt":3})
    );
}

#[test]
fn new_items_need_every_field() {
    let p = MemPlatform::new();
    let (s, v) = call(&p, "POST", "/cafes", r#"{"cafeNm":"tea","pcnt":3}"#);
    assert_eq!(s, 400);
    assert_eq!(
        v,
        json!({"error":"missing_field","message":"chkDate is required"})
    );
    // nothing was taken from the sequence for a refused request
    assert_eq!(p.next_id("cafes"), 1);
}

#[test]
fn bad_fields_are_400_naming_the_field() {
    let p = MemPlatform::new();
    for (body, field) in [
        (
            r#"{"cafeId":"abc","cafeNm":"x","chkDate":"1","pcnt":1}"#,
            "cafeId",
        ),
        (
            r#"{"cafeId":0,"cafeNm":"x","chkDate":"1","pcnt":1}"#,
            "cafeId",
        ),
        (r#"{"cafeNm":"  ","chkDate":"1","pcnt":1}"#, "cafeNm"),
        (r#"{"cafeNm":"x","chkDate":"1","pcnt":-1}"#, "pcnt"),
        (r#"{"cafeNm":"x","chkDate":"1","pcnt":1.5}"#, "pcnt"),
        (r#"{"cafeNm":"x","chkDate":"1","pcnt":1000001}"#, "pcnt"),
        (r#"{"cafeNm":"x","chkDate":[1],"pcnt":1}"#, "chkDate"),
    ] {
        let (s, v) = call(&p, "POST", "/cafes", body);
        assert_eq!(s, 400, "{body}");
        assert!(v["message"].as_str().unwrap().starts_with(field), "{v}");
    }
    assert_eq!(call(&p, "POST", "/cafes", "").1["error"], "empty_body");
    assert_eq!(call(&p, "POST", "/cafes", "{").1["error"], "invalid_json");
    assert_eq!(call(&p, "POST", "/cafes", "[]").1["error"], "not_an_object");
    assert!(p.published().is_empty());
}

#[test]
fn list_is_sorted_numerically() {
    let p = MemPlatform::new();
    for id in [10, 2, 1] {
        seed(&p, id, 1);
    }
    let (s, v) = call(&p, "GET", "/cafes", "");
    assert_eq!(s, 200);
    let ids: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cafeId"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 10]);
}

#[test]
fn put_updates_given_fields_only() {
    let p = MemPlatform::new();
    seed(&p, 5, 10);
    let (s, v) = call(&p, "PUT", "/cafes/5", r#"{"pcnt":7,"extra":"ignored"}"#);
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713","pcnt":7})
    );
    assert_eq!(p.take_published()[0].topic, "cafe.updated");
    // unchanged: no event
    assert_eq!(call(&p, "PUT", "/cafes/5", r#"{"pcnt":7}"#).0, 200);
    assert!(p.take_published().is_empty());
    assert_eq!(
        call(&p, "PUT", "/cafes/5", r#"{"cafeId":6}"#).1["error"],
        "id_mismatch"
    );
    assert_eq!(call(&p, "PUT", "/cafes/6", r#"{"pcnt":1}"#).0, 404);
}

#[test]
fn delete_tombstones_and_ids_are_never_reused() {
    let p = MemPlatform::new();
    seed(&p, 5, 10);
    let (s, v) = call(&p, "DELETE", "/cafes/5", "");
    assert_eq!((s, v["cafeId"].as_u64()), (200, Some(5)));
    let ev = p.take_published();
    assert_eq!(ev[0].topic, "cafe.deleted");
    assert_eq!(ev[0].key, "5");
    assert_eq!(
        ev[0].json(),
        json!({"cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713"})
    );
    assert_eq!(
        call(&p, "GET", "/cafes/5", "").1["message"],
        "cafe 5 was deleted"
    );
    assert_eq!(call(&p, "DELETE", "/cafes/5", "").0, 404);
    assert_eq!(call(&p, "DELETE", "/cafes/6", "").0, 404);
    let (s, v) = call(
        &p,
        "POST",
        "/cafes",
        r#"{"cafeId":5,"cafeNm":"x","chkDate":"1","pcnt":1}"#,
    );
    assert_eq!((s, v["error"].as_str()), (409, Some("cafe_deleted")));
}

#[test]
fn routing_errors_are_json() {
    let p = MemPlatform::new();
    let (s, v) = call(&p, "GET", "/cafes/abc", "");
    assert_eq!(s, 400);
    assert_eq!(
        v["message"],
        "cafe id must be a positive integer, got \"abc\""
    );
    assert_eq!(call(&p, "GET", "/cafes/1/x", "").0, 404);
    let r = api::handle(&p, "PATCH", "/cafes/1", b"");
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, PUT, DELETE"))
    );
    let r = api::handle(&p, "DELETE", "/cafes", b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, POST")));
}

#[test]
fn reserve_decrements_once_per_order() {
    let p = MemPlatform::new();
    seed(&p, 5, 2);
    let r = reserve(&p, "7", 5, 1).unwrap();
    assert_eq!(
        (r.cafe_nm.as_str(), r.chk_date.as_str(), r.remaining),
        ("Coldbrew", "20210713", 1)
    );
    let again = reserve(&p, "7", 5, 1).unwrap();
    assert_eq!(again.remaining, 1);
    assert_eq!(pcnt(&p, 5), 1);
    assert!(matches!(
        reserve(&p, "7", 5, 2),
        Err(StockFailure::Invalid(_))
    ));
}

#[test]
fn reserve_refuses_sold_out_unknown_and_zero() {
    let p = MemPlatform::new();
    seed(&p, 5, 1);
    assert_eq!(reserve(&p, "1", 5, 2), Err(StockFailure::SoldOut(1)));
    assert_eq!(
        reserve(&p, "1", 6, 1),
        Err(StockFailure::NotFound("cafe 6 does not exist".into()))
    );
    assert!(matches!(
        reserve(&p, "1", 5, 0),
        Err(StockFailure::Invalid(_))
    ));
    assert_eq!(pcnt(&p, 5), 1);
    call(&p, "DELETE", "/cafes/5", "");
    assert!(matches!(
        reserve(&p, "1", 5, 1),
        Err(StockFailure::NotFound(_))
    ));
}

#[test]
fn release_restores_once_and_announces_it() {
    let p = MemPlatform::new();
    seed(&p, 5, 3);
    reserve(&p, "7", 5, 2).unwrap();
    assert_eq!(pcnt(&p, 5), 1);
    assert_eq!(stock::release(&p, "7"), Ok(true));
    p.finish(true);
    assert_eq!(stock::release(&p, "7"), Ok(false));
    assert_eq!(stock::release(&p, "8"), Ok(false));
    p.finish(true);
    assert_eq!(pcnt(&p, 5), 3);
    let ev = p.take_published();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].topic, "cafe.stock-released");
    assert_eq!(ev[0].json(), json!({"orderId":"7","cafeId":5,"qty":2}));
}

#[test]
fn order_canceled_event_releases_idempotently() {
    let p = MemPlatform::new();
    seed(&p, 5, 3);
    reserve(&p, "7", 5, 1).unwrap();
    let order = json!({"id":7,"custNm":"Hwang","cafeId":5,"status":"CANCELED","version":2});
    event(&p, "order.canceled", order.clone()).unwrap();
    event(&p, "order.canceled", order).unwrap();
    assert_eq!(pcnt(&p, 5), 3);
    assert!(matches!(
        event(&p, "order.canceled", json!({"id":"x"})),
        Err(kit::EventError::Invalid(_))
    ));
    assert!(event(&p, "order.canceled", json!([])).is_err());
    assert_eq!(event(&p, "something.else", json!({})), Ok(()));
}

#[test]
fn release_after_delete_restores_nothing() {
    let p = MemPlatform::new();
    seed(&p, 5, 3);
    reserve(&p, "7", 5, 1).unwrap();
    call(&p, "DELETE", "/cafes/5", "");
    p.take_published();
    assert_eq!(stock::release(&p, "7"), Ok(false));
    p.finish(true);
    assert!(p.published().is_empty());
    assert_eq!(call(&p, "GET", "/cafes/5", "").0, 404);
}
