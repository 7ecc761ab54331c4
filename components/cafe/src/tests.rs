//! Native tests of the cafe logic against an in-memory platform with the
//! host's unit-of-work rule (commit iff status < 400 / handler Ok).

use kit::{MemPlatform, Platform};
use serde_json::{Value, json};

use crate::stock::{self, StockFailure};
use crate::{api, events};

fn call(p: &MemPlatform, method: &str, target: &str, body: &str) -> (u16, Value) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let r = api::handle(p, method, path, query, body.as_bytes());
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
    let r = api::handle(&p, "PATCH", "/cafes/1", "", b"");
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, PUT, DELETE"))
    );
    let r = api::handle(&p, "DELETE", "/cafes", "", b"");
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

fn list_ids(p: &MemPlatform, target: &str) -> (Vec<u64>, Option<String>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let r = api::handle(p, "GET", path, query, b"");
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let ids = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cafeId"].as_u64().unwrap())
        .collect();
    (ids, r.header("link").map(str::to_owned))
}

/// The `after=` target of a `Link: <...>; rel="next"` header.
fn next_target(link: &str) -> String {
    let url = link.strip_prefix('<').unwrap().split_once('>').unwrap().0;
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    url.to_owned()
}

#[test]
fn list_pages_by_cafe_id_with_a_next_link() {
    let p = MemPlatform::new();
    // ids past 9 and 99 (key order must be numeric order), inserted unordered
    let ids: Vec<u64> = (1..=25).map(|i| (i * 37) % 101 + 1).collect();
    for &id in &ids {
        seed(&p, id, 1);
    }
    call(&p, "DELETE", &format!("/cafes/{}", ids[3]), "");
    let mut expected: Vec<u64> = ids.iter().copied().filter(|&i| i != ids[3]).collect();
    expected.sort_unstable();

    let mut target = "/cafes?limit=7".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (page, link) = list_ids(&p, &target);
        assert!(page.len() <= 7);
        seen.extend(page);
        pages += 1;
        match link {
            Some(link) => target = next_target(&link),
            None => break,
        }
    }
    assert_eq!(seen, expected, "every live item once, ascending");
    assert_eq!(pages, 4);
    assert!(target.starts_with("/cafes?limit=7&after="), "{target}");
    // the default page holds them all: no link
    let (all, link) = list_ids(&p, "/cafes");
    assert_eq!((all, link), (expected, None));
}

#[test]
fn list_keyset_cursor_neither_skips_nor_repeats_under_inserts() {
    let p = MemPlatform::new();
    for id in [2, 4, 6, 8] {
        seed(&p, id, 1);
    }
    let (first, link) = list_ids(&p, "/cafes?limit=2");
    assert_eq!(first, vec![2, 4]);
    seed(&p, 1, 1);
    seed(&p, 5, 1);
    let (second, link) = list_ids(&p, &next_target(&link.unwrap()));
    assert_eq!(second, vec![5, 6]);
    let (third, link) = list_ids(&p, &next_target(&link.unwrap()));
    assert_eq!((third, link), (vec![8], None));
}

#[test]
fn bad_paging_parameters_are_400_naming_them() {
    let p = MemPlatform::new();
    seed(&p, 1, 1);
    for (q, name) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("after=x", "after"),
        ("after=0", "after"),
    ] {
        let (s, v) = call(&p, "GET", &format!("/cafes?{q}"), "");
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_query")),
            "{q}"
        );
        assert!(v["message"].as_str().unwrap().starts_with(name), "{v}");
    }
}

#[test]
fn items_are_stored_under_padded_keys_with_held_units_kept_out_of_responses() {
    let p = MemPlatform::new();
    seed(&p, 5, 3);
    reserve(&p, "7", 5, 2).unwrap();
    assert_eq!(p.keys("cafes"), vec![kit::keys::id(5)]);
    let stored: Value =
        serde_json::from_slice(&p.get("cafes", &kit::keys::id(5)).unwrap()).unwrap();
    assert_eq!(
        stored,
        json!({"cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713"}),
        "the counts live in counter documents, not in the item"
    );
    assert_eq!(p.get("stock", &kit::keys::id(5)), Some(b"1".to_vec()));
    assert_eq!(p.get("held", &kit::keys::id(5)), Some(b"2".to_vec()));
    let shown = call(&p, "GET", "/cafes/5", "").1;
    assert_eq!(
        shown,
        json!({"cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713","pcnt":1})
    );
    assert_eq!(call(&p, "GET", "/cafes", "").1, json!([shown]));
    // an update event carries the public shape only
    call(&p, "PUT", "/cafes/5", r#"{"cafeNm":"Latte"}"#);
    let ev = p.take_published();
    assert_eq!(
        ev[0].json(),
        json!({"cafeId":5,"cafeNm":"Latte","chkDate":"20210713","pcnt":1})
    );
    // documents written before `held` existed read as holding nothing
    p.put(
        "cafes",
        &kit::keys::id(6),
        br#"{"cafeId":6,"cafeNm":"Tea","chkDate":"1","pcnt":4}"#,
    );
    p.finish(true);
    assert_eq!(pcnt(&p, 6), 4);
}

#[test]
fn items_stored_with_inline_counts_move_to_counters_at_their_first_reservation() {
    let p = MemPlatform::new();
    p.put(
        "cafes",
        &kit::keys::id(6),
        br#"{"cafeId":6,"cafeNm":"Tea","chkDate":"1","pcnt":4,"held":1}"#,
    );
    p.finish(true);
    assert_eq!(
        call(&p, "GET", "/cafes", "").1[0]["pcnt"],
        4,
        "read as stored"
    );
    let r = reserve(&p, "9", 6, 3).unwrap();
    assert_eq!(r.remaining, 1);
    let stored: Value =
        serde_json::from_slice(&p.get("cafes", &kit::keys::id(6)).unwrap()).unwrap();
    assert_eq!(stored, json!({"cafeId":6,"cafeNm":"Tea","chkDate":"1"}));
    assert_eq!(p.get("stock", &kit::keys::id(6)), Some(b"1".to_vec()));
    assert_eq!(p.get("held", &kit::keys::id(6)), Some(b"4".to_vec()));
    assert_eq!(pcnt(&p, 6), 1);
    // The counters go with the item.
    call(&p, "DELETE", "/cafes/6", "");
    assert_eq!(p.get("stock", &kit::keys::id(6)), None);
    assert_eq!(p.get("held", &kit::keys::id(6)), None);
}

#[test]
fn pcnt_beyond_the_room_left_by_held_units_is_refused() {
    let p = MemPlatform::new();
    seed(&p, 5, 2000);
    reserve(&p, "7", 5, 1000).unwrap();
    p.take_published();
    let before = p.snapshot();
    let (s, v) = call(&p, "PUT", "/cafes/5", r#"{"pcnt":1000000}"#);
    assert_eq!(
        (s, v),
        (
            409,
            json!({"error":"pcnt_out_of_range","message":"pcnt 1000000 plus 1000 units held by open orders exceeds 1000000"})
        )
    );
    let (s, v) = call(
        &p,
        "POST",
        "/cafes",
        r#"{"cafeId":5,"cafeNm":"x","chkDate":"1","pcnt":999001}"#,
    );
    assert_eq!((s, v["error"].as_str()), (409, Some("pcnt_out_of_range")));
    assert_eq!(p.snapshot(), before, "a refused request changes nothing");
    assert!(p.published().is_empty());
    // exactly at the bound is fine, and the release then fits
    assert_eq!(call(&p, "PUT", "/cafes/5", r#"{"pcnt":999000}"#).0, 200);
    assert_eq!(stock::release(&p, "7"), Ok(true));
    p.finish(true);
    assert_eq!(pcnt(&p, 5), 1_000_000);
}

#[test]
fn explicit_ids_advance_the_sequence_in_one_step() {
    let p = MemPlatform::new();
    seed(&p, 100_000, 1);
    let t = kit::Traced::new(&p);
    let r = api::handle(
        &t,
        "POST",
        "/cafes",
        "",
        br#"{"cafeNm":"tea","chkDate":"1","pcnt":1}"#,
    );
    p.finish(r.status < 400);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((r.status, v["cafeId"].as_u64()), (201, Some(100_001)));
    assert!(t.documents_read() <= 2, "{:?}", t.reads());
}

#[test]
fn ids_taken_before_the_sequence_rule_cost_a_bounded_number_of_tries() {
    let p = MemPlatform::new();
    // live and deleted ids written without advancing the sequence
    for id in 1..=5000u64 {
        let doc = json!({"cafeId":id,"cafeNm":"old","chkDate":"1","pcnt":1});
        let coll = if id % 2 == 0 { "cafes" } else { "deleted" };
        p.put(coll, &kit::keys::id(id), doc.to_string().as_bytes());
    }
    p.finish(true);
    let t = kit::Traced::new(&p);
    let r = api::handle(
        &t,
        "POST",
        "/cafes",
        "",
        br#"{"cafeNm":"tea","chkDate":"1","pcnt":1}"#,
    );
    p.finish(r.status < 400);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let id = v["cafeId"].as_u64().unwrap();
    assert_eq!(r.status, 201);
    assert!(id > 5000, "{id}");
    assert!(t.documents_read() <= 2 * 24, "{}", t.documents_read());
    // and the next one is free at once
    let (s, v2) = call(
        &p,
        "POST",
        "/cafes",
        r#"{"cafeNm":"tea","chkDate":"1","pcnt":1}"#,
    );
    assert_eq!((s, v2["cafeId"].as_u64()), (201, Some(id + 1)));
}
