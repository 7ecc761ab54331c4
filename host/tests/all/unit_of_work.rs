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

/// In a batch of acknowledgements, the acks before a conflict keep their
/// writes and events; the conflicting one keeps nothing (SQLite stops there,
/// Redis may go on), and whatever was not applied is delivered again, in
/// order.
async fn a_conflicting_ack_in_a_batch_keeps_nothing(kind: Kind) {
    use sktarbucks::backend::Commit;
    use sktarbucks::uow::{Changes, DocKey, NewEvent};

    let h = Harness::start(kind).await;
    let sub = h.subscribe("batcher", vec!["batch.test".into()]).await;
    let event = |topic: &str, key: &str| NewEvent {
        topic: topic.into(),
        key: key.into(),
        payload: b"{}".to_vec(),
        source: "test".into(),
        trace: Default::default(),
    };
    let doc = |key: &str| DocKey::new("batcher", "docs", key);
    let write = |key: &str| Changes {
        writes: vec![(doc(key), Some(key.as_bytes().to_vec()))],
        ..Changes::default()
    };
    let committed = h
        .backend
        .commit(Changes {
            events: ["k1", "k2", "k3"]
                .iter()
                .map(|k| event("batch.test", k))
                .collect(),
            ..write("watched")
        })
        .await
        .expect("commit");
    assert_eq!(committed, Commit::Applied);
    let seen = h.backend.get(&doc("watched")).await.expect("get").version;
    // Someone else changes the document the second handler read.
    let bumped = h.backend.commit(write("watched")).await.expect("commit");
    assert_eq!(bumped, Commit::Applied);

    let first = poll(&h, &sub, 3).await;
    let keys: Vec<&str> = first.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, ["k1", "k2", "k3"], "the premise: all three delivered");
    let with_event = |mut changes: Changes, key: &str| {
        changes.events.push(event("batch.followed", key));
        changes
    };
    let stale = Changes {
        reads: vec![(doc("watched"), seen)],
        ..with_event(write("b"), "k2")
    };
    let acks = vec![
        (first[0].clone(), with_event(write("a"), "k1")),
        (first[1].clone(), stale),
        (first[2].clone(), with_event(write("c"), "k3")),
    ];
    let outcomes = h.backend.ack_batch(&sub, acks).await.expect("ack batch");
    // SQLite moves one offset, so it stops at the conflict; Redis acks
    // entries one by one and may go on (the wave's keys differ).
    assert_eq!(outcomes[..2], [Commit::Applied, Commit::Conflict]);
    let applied: Vec<bool> = (0..3)
        .map(|i| outcomes.get(i) == Some(&Commit::Applied))
        .collect();
    if kind == Kind::Sqlite {
        assert_eq!(outcomes.len(), 2, "offsets stop at the first conflict");
    }
    for (key, applied) in ["a", "b", "c"].iter().zip(&applied) {
        let read = h.backend.get(&doc(key)).await.expect("get");
        assert_eq!(read.value.is_some(), *applied, "{key} written iff applied");
    }
    let followed = h.events_on("batch.followed").await;
    assert_eq!(
        followed.len(),
        applied.iter().filter(|a| **a).count(),
        "one event per applied ack: {followed:?}"
    );

    let left: Vec<&str> = ["k1", "k2", "k3"]
        .into_iter()
        .zip(&applied)
        .filter(|(_, a)| !**a)
        .map(|(k, _)| k)
        .collect();
    let again = poll(&h, &sub, left.len()).await;
    let keys: Vec<&str> = again.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, left, "the rest delivered again, in order");
    h.stop().await;
}

/// Poll `sub` until `wanted` deliveries came (or 50 polls passed).
async fn poll(
    h: &Harness,
    sub: &sktarbucks::backend::Subscription,
    wanted: usize,
) -> Vec<sktarbucks::backend::Delivery> {
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(
            h.backend
                .poll(sub, 10, std::time::Duration::from_millis(100))
                .await
                .expect("poll"),
        );
        if got.len() >= wanted {
            break;
        }
    }
    got
}

/// Units that read the same version of a document and rewrite it commit
/// at the same moment (on SQLite, mostly in one commit group, whose units
/// share a commit version): exactly one of each round applies, and every
/// round leaves the document at a version no earlier round had.
async fn concurrent_rewrites_of_one_read_version_apply_exactly_once(kind: Kind) {
    use sktarbucks::backend::Commit;
    use sktarbucks::uow::{Changes, DocKey};

    let h = Harness::start(kind).await;
    let doc = DocKey::new("racer", "docs", "contended");
    let write = |value: String, seen: u64| Changes {
        reads: vec![(doc.clone(), seen)],
        writes: vec![(doc.clone(), Some(value.into_bytes()))],
        ..Changes::default()
    };
    let mut versions = Vec::new();
    for round in 0..40 {
        let seen = h.backend.get(&doc).await.expect("get").version;
        versions.push(seen);
        let commits = (0..8).map(|unit| {
            let backend = Arc::clone(&h.backend);
            let changes = write(format!("{round}-{unit}"), seen);
            tokio::spawn(async move { backend.commit(changes).await.expect("commit") })
        });
        let mut applied = 0;
        for commit in futures::future::join_all(commits).await {
            if commit.expect("task") == Commit::Applied {
                applied += 1;
            }
        }
        assert_eq!(
            applied, 1,
            "round {round}: one of eight rewrites of version {seen} applies"
        );
    }
    let last = h.backend.get(&doc).await.expect("get").version;
    versions.push(last);
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "every round moved the version on: {versions:?}"
    );
    h.stop().await;
}

crate::on_both_backends!(
    concurrent_rewrites_of_one_read_version_apply_exactly_once,
    a_conflicting_ack_in_a_batch_keeps_nothing,
    a_trap_after_writing_persists_nothing_and_publishes_nothing,
    two_hundred_concurrent_orders_for_fifty_units_sell_exactly_fifty,
    concurrent_duplicate_cancels_restore_stock_exactly_once,
);
