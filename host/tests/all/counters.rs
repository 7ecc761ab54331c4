//! The store's counters (`store.add`): additions apply to whatever the
//! counter holds at commit, do not conflict with each other, and are
//! refused at commit when they would pass their floor.

use std::sync::Arc;

use serde_json::json;
use sktarbucks::backend::{Backend, Commit};
use sktarbucks::metrics::ComponentLabels;
use sktarbucks::uow::{Add, Changes, DocKey};

use crate::on_both_backends;
use crate::support::harness::{Harness, Kind};

fn counter() -> DocKey {
    DocKey::new("cafe", "stock", "1")
}

fn adding(delta: i64, floor: i64) -> Changes {
    Changes {
        adds: vec![(counter(), Add { delta, floor })],
        ..Changes::default()
    }
}

async fn value(backend: &dyn Backend) -> (Option<String>, u64) {
    let read = backend.get(&counter()).await.expect("read");
    (
        read.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
        read.version,
    )
}

/// Two units prepared against the same value both commit (no version
/// check); one that would pass the floor at commit is refused as a
/// conflict and leaves nothing of its unit behind; a unit that *read* the
/// counter still conflicts with an addition committed since.
async fn additions_commit_together_and_the_floor_holds_at_commit(kind: Kind) {
    let h = Harness::start(kind).await;
    let backend = h.backend.as_ref();
    let put = Changes {
        writes: vec![(counter(), Some(b"5".to_vec()))],
        ..Changes::default()
    };
    assert_eq!(backend.commit(put).await.expect("seed"), Commit::Applied);
    let (_, seeded) = value(backend).await;

    // Both were computed against 5: a version check would refuse the second.
    assert_eq!(
        backend.commit(adding(-3, 0)).await.expect("a"),
        Commit::Applied
    );
    assert_eq!(
        backend.commit(adding(-2, 0)).await.expect("b"),
        Commit::Applied
    );
    let (now, version) = value(backend).await;
    assert_eq!(now.as_deref(), Some("0"));
    assert!(
        version > seeded,
        "an addition is a write: {version} > {seeded}"
    );

    // 0 - 1 < 0: refused at commit, with the rest of its unit.
    let mut refused = adding(-1, 0);
    let order = DocKey::new("order", "orders", "x");
    refused.writes.push((order.clone(), Some(b"{}".to_vec())));
    assert_eq!(backend.commit(refused).await.expect("c"), Commit::Conflict);
    assert_eq!(value(backend).await.0.as_deref(), Some("0"));
    assert_eq!(backend.get(&order).await.expect("read").value, None);

    // A floor below zero lets it go negative, as asked.
    assert_eq!(
        backend.commit(adding(-2, -10)).await.expect("d"),
        Commit::Applied
    );
    assert_eq!(value(backend).await.0.as_deref(), Some("-2"));

    // Whoever read the counter depends on its exact value.
    let (_, seen) = value(backend).await;
    assert_eq!(
        backend.commit(adding(7, i64::MIN)).await.expect("e"),
        Commit::Applied
    );
    let stale = Changes {
        reads: vec![(counter(), seen)],
        writes: vec![(counter(), Some(b"100".to_vec()))],
        ..Changes::default()
    };
    assert_eq!(backend.commit(stale).await.expect("f"), Commit::Conflict);
    assert_eq!(value(backend).await.0.as_deref(), Some("5"));

    // An absent counter counts as 0; a document that is no integer is an
    // error, not a conflict (re-running cannot help).
    let fresh = DocKey::new("cafe", "stock", "2");
    let add_fresh = Changes {
        adds: vec![(fresh.clone(), Add { delta: 4, floor: 0 })],
        ..Changes::default()
    };
    assert_eq!(backend.commit(add_fresh).await.expect("g"), Commit::Applied);
    assert_eq!(
        backend.get(&fresh).await.expect("read").value.as_deref(),
        Some(&b"4"[..])
    );
    let not_a_number = Changes {
        writes: vec![(counter(), Some(b"{\"pcnt\":1}".to_vec()))],
        ..Changes::default()
    };
    backend.commit(not_a_number).await.expect("h");
    let err = backend
        .commit(adding(1, 0))
        .await
        .expect_err("a JSON object is no counter");
    assert!(format!("{err:#}").contains("integer"), "{err:#}");
    h.stop().await;
}

fn conflicts(h: &Harness, component: &str) -> u64 {
    h.rt.env
        .metrics
        .conflicts
        .get_or_create(&ComponentLabels {
            component: component.to_owned(),
        })
        .get()
}

/// One request per body, all in flight at once; the answers in body order.
async fn all_at_once(
    h: &Harness,
    method: &'static str,
    path: &'static str,
    bodies: Vec<serde_json::Value>,
) -> Vec<(u16, serde_json::Value)> {
    let client = Arc::new(h.client.clone());
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { client.send(method, path, body).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }
    answers
}

/// Many concurrent orders of one item: each takes its units without a
/// single re-run, stock ends exact. The control: as many concurrent
/// updates of that item's document do conflict, so the requests overlapped.
async fn concurrent_orders_of_one_item_never_conflict(kind: Kind) {
    let h = Harness::start(kind).await;
    h.client.seed_item(1, 1000).await;
    let orders = (0..64)
        .map(|i| json!({"custNm": format!("c{i}"), "cafeId": 1, "qty": 2}))
        .collect();
    for (status, body) in all_at_once(&h, "POST", "/orders", orders).await {
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(conflicts(&h, "order"), 0, "no order re-ran");
    let (_, cafe) = h.client.get("/cafes/1").await;
    assert_eq!(cafe["pcnt"], 1000 - 64 * 2, "{cafe}");

    let updates = (0..64)
        .map(|i| json!({"cafeNm": format!("n{i}")}))
        .collect();
    all_at_once(&h, "PUT", "/cafes/1", updates).await;
    assert!(
        conflicts(&h, "cafe") > 0,
        "the control: 64 concurrent updates of one document overlapped"
    );
    let (_, cafe) = h.client.get("/cafes/1").await;
    assert_eq!(
        cafe["pcnt"],
        1000 - 64 * 2,
        "updates left the count alone: {cafe}"
    );
    h.stop().await;
}

on_both_backends!(
    additions_commit_together_and_the_floor_holds_at_commit,
    concurrent_orders_of_one_item_never_conflict,
);
