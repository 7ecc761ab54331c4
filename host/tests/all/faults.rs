//! Fault isolation and event failure handling: hostile guests fail their own
//! invocation only; failing handlers are retried, then dead-lettered.

use std::time::Duration;

use serde_json::json;

use crate::support::eventually;
use crate::support::harness::{Harness, Kind};

/// How many invocations of `component` are running right now.
fn in_flight(h: &Harness, component: &str) -> usize {
    h.rt.registry
        .get(component)
        .expect("component loaded")
        .in_flight
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// An infinite loop is interrupted at its deadline while other routes keep answering.
async fn an_infinite_loop_times_out_without_blocking_other_routes(kind: Kind) {
    // A 2 s deadline: room for the other routes to answer while it loops.
    let h = Harness::start_with(kind, |c| {
        if let Some(f) = c.components.get_mut("faulty") {
            f.deadline_ms = 2_000;
        }
    })
    .await;
    let looping = {
        let client = h.client.clone();
        tokio::spawn(async move { client.get("/faulty/loop").await })
    };
    eventually("the loop running", Duration::from_secs(10), || async {
        (in_flight(&h, "faulty") == 1).then_some(())
    })
    .await;
    let (status, _) = h.client.get("/cafes").await;
    assert_eq!(status, 200, "cafe answers while faulty loops");
    let (status, _) = h.client.get("/orders").await;
    assert_eq!(status, 200, "order answers while faulty loops");
    // Premise: they answered while the loop was still running.
    assert!(
        !looping.is_finished() && in_flight(&h, "faulty") == 1,
        "the looping request was still running when the other routes answered"
    );
    let (status, body) = looping.await.expect("loop task");
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"], "timeout");
    assert_eq!(in_flight(&h, "faulty"), 0, "the loop was stopped");
    h.stop().await;
}

/// A memory bomb hits the component's memory limit and fails alone. The
/// limit that stops it is faulty's own 32 MiB, not the engine's pool (64
/// MiB, the largest `memory_mib`): 40 MiB fails for faulty, yet the same
/// allocation succeeds once faulty's own limit is 64 MiB.
async fn a_memory_bomb_fails_only_its_own_invocation(kind: Kind) {
    let h = Harness::start(kind).await;
    let config = h.rt.config();
    let pool_mib = config.components.values().map(|c| c.memory_mib).max();
    assert_eq!(pool_mib, Some(64), "the engine's pool limit");
    assert_eq!(config.components["faulty"].memory_mib, 32);
    let (status, body) = h.client.get("/faulty/alloc?mib=16").await;
    assert_eq!(
        (status, body["allocatedMib"].clone()),
        (200, json!(16)),
        "{body}"
    );
    let (status, body) = h.client.get("/faulty/alloc?mib=40").await;
    assert_eq!(status, 500, "40 MiB is over faulty's own 32 MiB: {body}");
    let (status, body) = h.client.get("/faulty/bomb").await;
    assert_eq!(status, 500, "{body}");
    let (status, _) = h.client.get("/orders").await;
    assert_eq!(status, 200);
    let (status, _) = h
        .client
        .raw("POST", "/faulty/write?key=after", Some("ok"))
        .await;
    assert_eq!(
        status, 200,
        "the faulty component itself recovers on a fresh instance"
    );
    h.stop().await;
    // The same pool, faulty allowed 64 MiB: the 40 MiB allocation fits.
    let h = Harness::start_with(kind, |c| {
        if let Some(f) = c.components.get_mut("faulty") {
            f.memory_mib = 64;
        }
    })
    .await;
    let pool_mib =
        h.rt.config()
            .components
            .values()
            .map(|c| c.memory_mib)
            .max();
    assert_eq!(pool_mib, Some(64), "the same pool limit");
    let (status, body) = h.client.get("/faulty/alloc?mib=40").await;
    assert_eq!(
        (status, body["allocatedMib"].clone()),
        (200, json!(40)),
        "40 MiB fits the pool; only faulty's own limit refused it: {body}"
    );
    h.stop().await;
}

/// A guest cannot make the host buffer unbounded data: past 16 MiB in one unit it fails, storing nothing.
async fn a_unit_of_work_cannot_buffer_unbounded_bytes(kind: Kind) {
    let h = Harness::start(kind).await;
    let (status, body) = h.client.raw("POST", "/faulty/flood?n=2", None).await;
    assert_eq!(status, 200, "2 MiB is fine: {body}");
    let (status, body) = h.client.raw("POST", "/faulty/flood?n=40", None).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("bytes buffered"),
        "{body}"
    );
    let (_, things) = h.client.get("/faulty/things").await;
    assert_eq!(
        things.as_array().map(Vec::len),
        Some(2),
        "only the first flood was kept"
    );
    h.stop().await;
}

/// An event whose deliveries never completed (its hosts died handling it) is
/// dead-lettered without being run again once over the attempt limit.
async fn an_event_that_keeps_killing_its_hosts_is_dead_lettered_without_running(kind: Kind) {
    // No dispatcher for faulty: the test plays the hosts that died.
    let h = Harness::start_with(kind, |c| {
        if let Some(f) = c.components.get_mut("faulty") {
            f.subscribe = Some(Vec::new());
        }
    })
    .await;
    h.inject("test", "faulty.happened", "killer", json!("x"))
        .await;
    let sub = h.subscribe("faulty", vec!["faulty.happened".into()]).await;
    // Three deliveries that ended without an outcome (max_attempts = 3).
    for _ in 0..3 {
        let got = h
            .backend
            .poll(&sub, 1, std::time::Duration::ZERO)
            .await
            .expect("poll");
        h.backend
            .fail(&sub, &got[0], "host died", false)
            .await
            .expect("record");
    }
    sktarbucks::events::dispatcher::drain(&h.rt, &sub)
        .await
        .expect("drain");
    let letters = h.backend.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].error.contains("without completing"),
        "{}",
        letters[0].error
    );
    let (_, counts) = h.client.get("/faulty/counts").await;
    assert_eq!(counts, json!({}), "the handler never ran");
    h.stop().await;
}

/// A poison event is retried up to max_attempts, dead-lettered with its error, and later events still flow.
async fn a_poison_event_is_dead_lettered_and_the_subscriber_moves_on(kind: Kind) {
    let h = Harness::start(kind).await;
    h.inject("test", "faulty.poison", "p", json!("x")).await;
    let changes = sktarbucks::uow::Changes {
        events: vec![sktarbucks::uow::NewEvent {
            topic: "faulty.poison".into(),
            key: "p".into(),
            payload: b"poison".to_vec(),
            source: "test".into(),
            trace: Default::default(),
        }],
        ..Default::default()
    };
    h.backend.commit(changes).await.expect("commit");
    h.inject("test", "faulty.happened", "after", json!("fine"))
        .await;
    h.settle().await;
    let letters = h.backend.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].attempts, 3);
    assert!(
        letters[0].error.contains("poison pill"),
        "{}",
        letters[0].error
    );
    let (_, seen) = h.client.get("/faulty/seen").await;
    assert_eq!(
        seen.as_array().map(Vec::len),
        Some(2),
        "the first and the later event were handled: {seen}"
    );
    // Replay puts it back; it fails again and returns to the dead letters.
    assert!(h.backend.replay(&letters[0].id).await.expect("replay"));
    assert!(h.backend.dead_letters().await.expect("dl").is_empty());
    h.settle().await;
    assert_eq!(h.backend.dead_letters().await.expect("dl").len(), 1);
    h.stop().await;
}

/// A trapping handler is treated like a failing one: nothing it wrote is kept.
async fn a_trapping_handler_is_retried_then_dead_lettered(kind: Kind) {
    let h = Harness::start(kind).await;
    let changes = sktarbucks::uow::Changes {
        events: vec![sktarbucks::uow::NewEvent {
            topic: "faulty.happened".into(),
            key: "t".into(),
            payload: b"trap".to_vec(),
            source: "test".into(),
            trace: Default::default(),
        }],
        ..Default::default()
    };
    h.backend.commit(changes).await.expect("commit");
    h.settle().await;
    let letters = h.backend.dead_letters().await.expect("dead letters");
    assert_eq!(letters.len(), 1);
    assert!(letters[0].error.contains("trap"), "{}", letters[0].error);
    let (_, seen) = h.client.get("/faulty/seen").await;
    assert_eq!(seen, json!([]));
    h.stop().await;
}

/// Oversized bodies are refused with 413 before reaching a guest; unknown paths are JSON 404s.
async fn oversized_bodies_and_unknown_routes_get_json_errors(kind: Kind) {
    let h = Harness::start(kind).await;
    let big = "x".repeat(1024 * 1024 + 1);
    let (status, body) = h.client.raw("POST", "/cafes", Some(&big)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");
    let (status, body) = h.client.get("/nowhere").await;
    assert_eq!(status, 404);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("/orders"),
        "{body}"
    );
    let (status, body) = h.client.get("/health/ready").await;
    assert_eq!(status, 200, "{body}");
    h.stop().await;
}

crate::on_both_backends!(
    an_event_that_keeps_killing_its_hosts_is_dead_lettered_without_running,
    a_unit_of_work_cannot_buffer_unbounded_bytes,
    an_infinite_loop_times_out_without_blocking_other_routes,
    a_memory_bomb_fails_only_its_own_invocation,
    a_poison_event_is_dead_lettered_and_the_subscriber_moves_on,
    a_trapping_handler_is_retried_then_dead_lettered,
    oversized_bodies_and_unknown_routes_get_json_errors,
);
