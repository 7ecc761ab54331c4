//! Host tests of the unit of work: all-or-nothing commits, concurrency on a
//! hot key, exactly-once stock release.

use std::sync::Arc;

use serde_json::json;

use crate::support::harness::{Harness, Kind};

/// A component that writes, publishes and then traps persists and publishes nothing.
async fn a_trap_after_writing_persists_nothing_and_publishes_nothing(kind: Kind) {
    let h = Harness::start(kind).await;
    let (status, body) = h
        .client
        .raw("POST", "/faulty/write-then-trap?key=a", Some("x"))
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "component_failed", "{body}");
    let (status, body) = h
        .client
        .raw("POST", "/faulty/write-then-500?key=b", Some("y"))
        .await;
    assert_eq!(status, 500, "{body}");
    let (_, things) = h.client.get("/faulty/things").await;
    assert_eq!(things, json!([]));
    assert_eq!(h.count_events("faulty.happened").await, 0);
    // The control: the same write without the failure is kept.
    let (status, _) = h.client.raw("POST", "/faulty/write?key=c", Some("z")).await;
    assert_eq!(status, 200);
    let (_, things) = h.client.get("/faulty/things").await;
    assert_eq!(things.as_array().map(Vec::len), Some(1), "{things}");
    assert_eq!(h.count_events("faulty.happened").await, 1);
    h.stop().await;
}

/// 200 concurrent orders for 50 units: exactly 50 accepted, the rest refused as sold out, no 5xx, stock 0.
async fn two_hundred_concurrent_orders_for_fifty_units_sell_exactly_fifty(kind: Kind) {
    let h = Harness::start(kind).await;
    let (status, _) = h
        .client
        .send(
            "POST",
            "/cafes",
            json!({"cafeId": 1, "cafeNm": "Coldbrew", "chkDate": "20210713", "pcnt": 50}),
        )
        .await;
    assert_eq!(status, 201);
    let client = Arc::new(h.client.clone());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                client
                    .send(
                        "POST",
                        "/orders",
                        json!({"custNm": format!("c{i}"), "cafeId": 1}),
                    )
                    .await
            })
        })
        .collect();
    let (mut accepted, mut sold_out, mut other) = (0, 0, Vec::new());
    for task in tasks {
        let (status, body) = task.await.expect("request task did not panic");
        match status {
            201 => accepted += 1,
            409 if body["error"] == "sold_out" => sold_out += 1,
            _ => other.push((status, body)),
        }
    }
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert_eq!((accepted, sold_out), (50, 150));
    let (_, cafe) = h.client.get("/cafes/1").await;
    assert_eq!(cafe["pcnt"], 0, "{cafe}");
    let (_, orders) = h.client.get("/orders?limit=1000").await;
    assert_eq!(orders.as_array().map(Vec::len), Some(50));
    assert_eq!(h.count_events("order.requested").await, 50);
    h.stop().await;
}

/// Cancels sent twice, concurrently, restore each order's stock exactly once.
async fn concurrent_duplicate_cancels_restore_stock_exactly_once(kind: Kind) {
    let h = Harness::start(kind).await;
    h.client
        .send(
            "POST",
            "/cafes",
            json!({"cafeId": 1, "cafeNm": "Coldbrew", "chkDate": "1", "pcnt": 20}),
        )
        .await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let (status, body) = h
            .client
            .send(
                "POST",
                "/orders",
                json!({"custNm": format!("c{i}"), "cafeId": 1}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_u64().expect("id"));
    }
    let client = Arc::new(h.client.clone());
    let tasks: Vec<_> = ids
        .iter()
        .flat_map(|id| [*id, *id])
        .map(|id| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                client
                    .raw("POST", &format!("/orders/{id}/cancel"), None)
                    .await
            })
        })
        .collect();
    for task in tasks {
        let (status, body) = task.await.expect("cancel task did not panic");
        assert_eq!(status, 200, "{body}");
    }
    h.settle().await;
    let (_, cafe) = h.client.get("/cafes/1").await;
    assert_eq!(cafe["pcnt"], 20, "{cafe}");
    assert_eq!(h.count_events("order.canceled").await, 10);
    assert_eq!(h.count_events("cafe.stock-released").await, 10);
    h.stop().await;
}

crate::on_both_backends!(
    a_trap_after_writing_persists_nothing_and_publishes_nothing,
    two_hundred_concurrent_orders_for_fifty_units_sell_exactly_fifty,
    concurrent_duplicate_cancels_restore_stock_exactly_once,
);
