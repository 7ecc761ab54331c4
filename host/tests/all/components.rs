//! Component tests: each component in wasmtime against an in-process host
//! (a real SQLite backend in a temp dir), exercised through its WIT exports —
//! HTTP through `http-handler`, events delivered to `event-handler`, and
//! cafe's `stock` export through order's import.

use serde_json::{Value, json};

use crate::support::harness::{Harness, Kind};

async fn cafe(h: &Harness, id: u64, pcnt: u64) {
    let (status, body) = h
        .client
        .send("POST", "/cafes", json!({"cafeId": id.to_string(), "cafeNm": "Coldbrew", "chkDate": "20210713", "pcnt": pcnt}))
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn order(h: &Harness, cafe_id: u64) -> u64 {
    let (status, body) = h
        .client
        .send("POST", "/orders", json!({"custNm": "Hwang", "cafeId": cafe_id, "cafeNm": "Coldbrew", "chkDate": "20210713"}))
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_u64().expect("order id")
}

async fn pcnt(h: &Harness, cafe_id: u64) -> i64 {
    let (status, body) = h.client.get(&format!("/cafes/{cafe_id}")).await;
    assert_eq!(status, 200, "{body}");
    body["pcnt"].as_i64().expect("pcnt")
}

fn assert_error(status: u16, body: &Value, expected: u16, needle: &str) {
    assert_eq!(status, expected, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(body["error"].is_string(), "error kind missing: {body}");
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "message {message:?} should mention {needle:?}"
    );
}

/// cafe: the seed's request with a string id registers, re-posting it upserts.
async fn cafe_registers_with_a_string_id_and_reposting_upserts(kind: Kind) {
    let h = Harness::start(kind).await;
    let seed = r#"{"cafeId":"99","cafeNm":"coffee","chkDate":"210713","pcnt":20}"#;
    let (status, body) = h.client.raw("POST", "/cafes", Some(seed)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["cafeId"], 99);
    let (status, body) = h.client.raw("POST", "/cafes", Some(seed)).await;
    assert_eq!(status, 200, "{body}");
    let (status, list) = h.client.get("/cafes").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let (status, body) = h
        .client
        .send(
            "POST",
            "/cafes",
            json!({"cafeNm": "latte", "chkDate": "210714", "pcnt": 3}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["cafeId"].as_u64().is_some_and(|id| id != 99), "{body}");
    h.stop().await;
}

/// cafe: every malformed registration is a 400 naming the problem, and stores nothing.
async fn cafe_rejects_bad_input_with_clear_messages(kind: Kind) {
    let h = Harness::start(kind).await;
    let cases: &[(Option<&str>, &str)] = &[
        (None, "empty"),
        (Some(""), "empty"),
        (Some("{not json"), "json"),
        (Some("[1,2]"), "object"),
        (Some(r#"{"cafeNm":"a","chkDate":"1","pcnt":-1}"#), "pcnt"),
        (
            Some(r#"{"cafeNm":"a","chkDate":"1","pcnt":"many"}"#),
            "pcnt",
        ),
        (Some(r#"{"cafeNm":"a","chkDate":"1","pcnt":1.5}"#), "pcnt"),
        (Some(r#"{"chkDate":"1","pcnt":1}"#), "cafeNm"),
        (Some(r#"{"cafeNm":"  ","chkDate":"1","pcnt":1}"#), "cafeNm"),
        (Some(r#"{"cafeNm":"a","pcnt":1}"#), "chkDate"),
        (
            Some(r#"{"cafeId":"x9","cafeNm":"a","chkDate":"1","pcnt":1}"#),
            "cafeId",
        ),
        (
            Some(r#"{"cafeId":0,"cafeNm":"a","chkDate":"1","pcnt":1}"#),
            "cafeId",
        ),
    ];
    for (body, needle) in cases {
        let (status, reply) = h.client.raw("POST", "/cafes", *body).await;
        assert_error(status, &reply, 400, needle);
    }
    let (_, list) = h.client.get("/cafes").await;
    assert_eq!(list, json!([]));
    let (status, reply) = h.client.get("/cafes/abc").await;
    assert_error(status, &reply, 400, "abc");
    let (status, reply) = h.client.get("/cafes/12345").await;
    assert_error(status, &reply, 404, "12345");
    h.stop().await;
}

/// cafe: deleting publishes cafe.deleted once; the id is never reused.
async fn cafe_delete_is_final_and_announced_once(kind: Kind) {
    let h = Harness::start(kind).await;
    cafe(&h, 5, 10).await;
    let (status, body) = h.client.raw("DELETE", "/cafes/5", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = h.client.get("/cafes/5").await;
    assert_eq!(status, 404);
    let (status, body) = h.client.raw("DELETE", "/cafes/5", None).await;
    assert_error(status, &body, 404, "5");
    let (status, body) = h
        .client
        .send(
            "POST",
            "/cafes",
            json!({"cafeId": 5, "cafeNm": "again", "chkDate": "1", "pcnt": 1}),
        )
        .await;
    assert_error(status, &body, 409, "deleted");
    assert_eq!(h.count_events("cafe.deleted").await, 1);
    h.stop().await;
}

/// order → cafe `stock`: placing decrements synchronously; sold out and unknown items are refused and store nothing.
async fn ordering_reserves_stock_synchronously_and_refuses_what_it_cannot_serve(kind: Kind) {
    let h = Harness::start(kind).await;
    cafe(&h, 5, 2).await;
    let first = order(&h, 5).await;
    assert_eq!(pcnt(&h, 5).await, 1);
    let (status, body) = h.client.get(&format!("/orders/{first}")).await;
    assert_eq!(status, 200);
    // Placed REQUESTED; the running dispatchers may have moved it on already.
    assert!(
        body["status"] == "REQUESTED" || body["status"] == "ORDERED",
        "{body}"
    );
    let (status, body) = h
        .client
        .send(
            "POST",
            "/orders",
            json!({"custNm": "Kim", "cafeId": 5, "qty": 2}),
        )
        .await;
    assert_error(status, &body, 409, "left");
    let (status, body) = h
        .client
        .send("POST", "/orders", json!({"custNm": "Kim", "cafeId": 77}))
        .await;
    assert_error(status, &body, 404, "77");
    let (status, body) = h
        .client
        .send(
            "POST",
            "/orders",
            json!({"custNm": "Kim", "cafeId": 5, "cafeNm": "Latte"}),
        )
        .await;
    assert_error(status, &body, 409, "Latte");
    for (bad, needle) in [
        (json!({"cafeId": 5}), "custNm"),
        (json!({"custNm": "Kim"}), "cafeId"),
        (json!({"custNm": "Kim", "cafeId": 5, "qty": 0}), "qty"),
        (json!({"custNm": "Kim", "cafeId": 5, "qty": -3}), "qty"),
        (json!({"custNm": "Kim", "cafeId": "five"}), "cafeId"),
    ] {
        let (status, body) = h.client.send("POST", "/orders", bad).await;
        assert_error(status, &body, 400, needle);
    }
    assert_eq!(pcnt(&h, 5).await, 1, "refused orders must not touch stock");
    let (_, orders) = h.client.get("/orders?limit=1000").await;
    assert_eq!(orders.as_array().map(Vec::len), Some(1), "{orders}");
    assert_eq!(h.count_events("order.requested").await, 1);
    h.stop().await;
}

/// order: the seed's cancel (PUT with status) and the explicit endpoint; repeated cancels publish once.
async fn cancelling_is_idempotent_and_publishes_once(kind: Kind) {
    let h = Harness::start(kind).await;
    cafe(&h, 5, 10).await;
    let id = order(&h, 5).await;
    let seed = json!({"custNm":"Hwang","cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713","status":"CANCELED"});
    let (status, body) = h
        .client
        .send("PUT", &format!("/orders/{id}"), seed.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "CANCELED");
    let (status, _) = h
        .client
        .send(
            "PUT",
            &format!("/orders/{id}"),
            json!({"status": "CANCELED"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = h
        .client
        .raw("POST", &format!("/orders/{id}/cancel"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(h.count_events("order.canceled").await, 1);
    let (status, body) = h
        .client
        .send(
            "PUT",
            &format!("/orders/{id}"),
            json!({"status": "ORDERED"}),
        )
        .await;
    assert_error(status, &body, 400, "CANCELED");
    let (status, body) = h
        .client
        .send("PUT", "/orders/999", json!({"status": "CANCELED"}))
        .await;
    assert_error(status, &body, 404, "999");
    h.settle().await;
    assert_eq!(pcnt(&h, 5).await, 10, "stock comes back once");
    h.stop().await;
}

/// cafe's order.canceled handler restores stock exactly once, even when the event is delivered twice.
async fn a_duplicated_cancel_event_restores_stock_once(kind: Kind) {
    let h = Harness::start(kind).await;
    cafe(&h, 5, 10).await;
    let id = order(&h, 5).await;
    let (_, canceled) = h
        .client
        .raw("POST", &format!("/orders/{id}/cancel"), None)
        .await;
    h.inject("order", "order.canceled", &id.to_string(), canceled.clone())
        .await;
    h.settle().await;
    assert_eq!(pcnt(&h, 5).await, 10);
    h.stop().await;
}

/// production + order: order.requested registers production, whose event moves the order to ORDERED.
async fn an_order_becomes_ordered_once_production_registers_it(kind: Kind) {
    let h = Harness::start(kind).await;
    cafe(&h, 5, 10).await;
    let id = order(&h, 5).await;
    h.settle().await;
    let (_, order) = h.client.get(&format!("/orders/{id}")).await;
    assert_eq!(order["status"], "ORDERED", "{order}");
    let (status, production) = h.client.get(&format!("/productions/{id}")).await;
    assert_eq!(status, 200, "{production}");
    assert_eq!(production["status"], "REGISTERED");
    let (_, mypage) = h.client.get(&format!("/myPages/{id}")).await;
    assert_eq!(mypage["status"], "ORDERED", "{mypage}");
    assert_eq!(mypage["productionStatus"], "REGISTERED", "{mypage}");
    h.stop().await;
}

/// production: a cancel seen before the request still ends CANCELED; duplicates register once.
async fn production_is_order_insensitive_and_idempotent(kind: Kind) {
    let h = Harness::start(kind).await;
    let snapshot = |status: &str, version: u64| json!({"id": 41, "custNm": "Lee", "cafeId": 3, "cafeNm": "Mocha", "chkDate": "1", "qty": 1, "status": status, "version": version});
    // The cancel is delivered first (possible on Redis, where topics are separate streams).
    h.inject("order", "order.canceled", "41", snapshot("CANCELED", 2))
        .await;
    h.settle().await;
    h.settle().await;
    h.inject("order", "order.requested", "41", snapshot("REQUESTED", 1))
        .await;
    h.inject("order", "order.requested", "41", snapshot("REQUESTED", 1))
        .await;
    h.settle().await;
    h.settle().await;
    let (_, list) = h.client.get("/productions?limit=1000").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["status"], "CANCELED", "{list}");
    let (_, view) = h.client.get("/myPages/41").await;
    assert_eq!(
        view["status"], "CANCELED",
        "older snapshot must not win: {view}"
    );
    assert_eq!(h.count_events("production.registered").await, 0);
    h.stop().await;
}

/// Deleting a menu item force-cancels its open orders and productions, and later requests for it too.
async fn deleting_a_menu_item_force_cancels_its_orders_and_productions(kind: Kind) {
    let h = Harness::start(kind).await;
    cafe(&h, 5, 10).await;
    cafe(&h, 6, 10).await;
    let a = order(&h, 5).await;
    let b = order(&h, 5).await;
    let other = order(&h, 6).await;
    h.client
        .raw("POST", &format!("/orders/{b}/cancel"), None)
        .await;
    h.settle().await;
    h.client.raw("DELETE", "/cafes/5", None).await;
    h.settle().await;
    let (_, oa) = h.client.get(&format!("/orders/{a}")).await;
    assert_eq!(oa["status"], "FORCE_CANCELED", "{oa}");
    let (_, ob) = h.client.get(&format!("/orders/{b}")).await;
    assert_eq!(
        ob["status"], "CANCELED",
        "a canceled order stays canceled: {ob}"
    );
    let (_, oo) = h.client.get(&format!("/orders/{other}")).await;
    assert_eq!(oo["status"], "ORDERED");
    let (_, pa) = h.client.get(&format!("/productions/{a}")).await;
    assert_eq!(pa["status"], "FORCE_CANCELED", "{pa}");
    let (_, view) = h.client.get(&format!("/myPages/{a}")).await;
    assert_eq!(view["status"], "FORCE_CANCELED", "{view}");
    let (status, body) = h
        .client
        .raw("POST", &format!("/orders/{a}/cancel"), None)
        .await;
    assert_error(status, &body, 409, "force");
    let (status, body) = h
        .client
        .send("POST", "/orders", json!({"custNm": "Kim", "cafeId": 5}))
        .await;
    assert_error(status, &body, 404, "5");
    // Production follows order: a force-cancel that overtakes its request
    // creates the record final, and the late request cannot revive it.
    let snapshot = |status: &str, version: u64| json!({"id": 900, "custNm": "Z", "cafeId": 5, "cafeNm": "Coldbrew", "chkDate": "1", "qty": 1, "status": status, "version": version});
    h.inject(
        "order",
        "order.force-canceled",
        "900",
        snapshot("FORCE_CANCELED", 2),
    )
    .await;
    h.settle().await;
    h.inject("order", "order.requested", "900", snapshot("REQUESTED", 1))
        .await;
    h.settle().await;
    let (_, late) = h.client.get("/productions/900").await;
    assert_eq!(late["status"], "FORCE_CANCELED", "{late}");
    h.stop().await;
}

/// mypage: lists with a customer filter, 404 for unknown orders, 405 for writes.
async fn mypage_lists_filters_and_refuses_writes(kind: Kind) {
    let h = Harness::start(kind).await;
    cafe(&h, 5, 10).await;
    order(&h, 5).await;
    let (_, _) = h
        .client
        .send("POST", "/orders", json!({"custNm": "Kim", "cafeId": 5}))
        .await;
    h.settle().await;
    let (_, all) = h.client.get("/myPages?limit=1000").await;
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    let (_, mine) = h.client.get("/myPages?custNm=Kim").await;
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(mine[0]["custNm"], "Kim");
    let (status, body) = h.client.get("/myPages/4242").await;
    assert_error(status, &body, 404, "4242");
    let (status, _) = h.client.send("POST", "/myPages", json!({})).await;
    assert_eq!(status, 405);
    let (status, _) = h.client.send("POST", "/productions", json!({})).await;
    assert_eq!(status, 405);
    h.stop().await;
}

crate::on_both_backends!(
    cafe_registers_with_a_string_id_and_reposting_upserts,
    cafe_rejects_bad_input_with_clear_messages,
    cafe_delete_is_final_and_announced_once,
    ordering_reserves_stock_synchronously_and_refuses_what_it_cannot_serve,
    cancelling_is_idempotent_and_publishes_once,
    a_duplicated_cancel_event_restores_stock_once,
    an_order_becomes_ordered_once_production_registers_it,
    production_is_order_insensitive_and_idempotent,
    deleting_a_menu_item_force_cancels_its_orders_and_productions,
    mypage_lists_filters_and_refuses_writes,
);
