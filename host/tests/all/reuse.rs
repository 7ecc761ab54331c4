//! Instance reuse (`reuse` in the manifest): a reused instance serves one
//! invocation after another with the host's per-invocation state reset, is
//! retired on failures, error answers, wear and idleness, and its pool is
//! closed when its version stops being live. Every test first checks its
//! premise — that the instance really was reused — on the metrics.

use std::time::Duration;

use serde_json::json;
use sktarbucks::config::ReuseConfig;
use sktarbucks::metrics::{ComponentLabels, RetireLabels};

use crate::support::eventually;
use crate::support::harness::{Harness, Kind};

/// A host where `components` reuse instances with `reuse`.
async fn start(components: &[&str], reuse: ReuseConfig) -> Harness {
    Harness::start_with(Kind::Sqlite, |config| {
        for name in components {
            let component = config
                .components
                .get_mut(*name)
                .unwrap_or_else(|| panic!("{name} is in the test manifest"));
            component.reuse = Some(reuse.clone());
        }
    })
    .await
}

/// Reuse with at most one idle instance: sequential calls all land on it.
fn one_idle() -> ReuseConfig {
    ReuseConfig {
        max_idle: 1,
        ..ReuseConfig::default()
    }
}

/// Instance counters of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    created: u64,
    reused: u64,
    idle: i64,
}

fn counts(h: &Harness, component: &str) -> Counts {
    let m = &h.rt.env.metrics;
    let labels = ComponentLabels {
        component: component.to_owned(),
    };
    Counts {
        created: m.instances_created.get_or_create(&labels).get(),
        reused: m.instances_reused.get_or_create(&labels).get(),
        idle: m.instances_idle.get_or_create(&labels).get(),
    }
}

fn retired(h: &Harness, component: &str, reason: &str) -> u64 {
    h.rt.env
        .metrics
        .instances_retired
        .get_or_create(&RetireLabels {
            component: component.to_owned(),
            reason: reason.to_owned(),
        })
        .get()
}

/// A menu item's available count.
fn pcnt(item: &serde_json::Value) -> Option<u64> {
    item["pcnt"].as_u64()
}

/// The isolation proof. Order's `POST /orders` calls cafe's `stock.reserve`
/// (cafe's write: `pcnt` 10 → 9, plus a reservation), then answers 409 because
/// the menu name does not match, so the whole unit of work is discarded.
/// Cafe's call itself succeeded, so its instance goes back to the pool; the
/// next `GET /cafes/1` runs on that very instance (one idle instance, none
/// created meanwhile) and must see nothing of the discarded reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_discarded_unit_leaves_nothing_on_the_reused_instance() {
    let h = start(&["cafe", "order"], one_idle()).await;
    let (s, _) = h
        .client
        .send(
            "POST",
            "/cafes",
            json!({"cafeId": 1, "cafeNm": "Coldbrew", "chkDate": "20210713", "pcnt": 10}),
        )
        .await;
    assert_eq!(s, 201);
    h.settle().await;
    let (s, item) = h.client.get("/cafes/1").await;
    assert_eq!((s, pcnt(&item)), (200, Some(10)), "{item}");
    let before = counts(&h, "cafe");
    assert_eq!(before.idle, 1, "one warm cafe instance waits: {before:?}");

    let (s, body) = h
        .client
        .send(
            "POST",
            "/orders",
            json!({"custNm": "Kim", "cafeId": 1, "cafeNm": "Latte"}),
        )
        .await;
    assert_eq!((s, body["error"].as_str()), (409, Some("menu_mismatch")));
    let (s, item) = h.client.get("/cafes/1").await;
    assert_eq!(s, 200);

    // Premise: the reserve and the read both ran on the one pooled cafe
    // instance (nothing created, two reuses, it is back in the pool).
    let after = counts(&h, "cafe");
    assert_eq!(
        (after.created, after.reused, after.idle),
        (before.created, before.reused + 2, 1),
        "both calls ran on the reused instance: {before:?} -> {after:?}"
    );
    // The reservation the reused instance buffered went with order's unit.
    assert_eq!(pcnt(&item), Some(10), "{item}");
    // Order's instance answered an error, so it was retired, not pooled.
    assert_eq!(retired(&h, "order", "error_response"), 1);
    assert_eq!(retired(&h, "cafe", "error_response"), 0);

    // The reused instance still works: a matching order takes one unit.
    let (s, _) = h
        .client
        .send(
            "POST",
            "/orders",
            json!({"custNm": "Kim", "cafeId": 1, "cafeNm": "Coldbrew"}),
        )
        .await;
    assert_eq!(s, 201);
    h.settle().await;
    let (_, item) = h.client.get("/cafes/1").await;
    assert_eq!(pcnt(&item), Some(9), "{item}");
    assert_eq!(counts(&h, "cafe").created, before.created);
    h.stop().await;
}

/// The unit-of-work budget (16 MiB buffered per unit) starts from zero on a
/// reused instance: two 10 MiB floods in a row both succeed on one instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_budget_starts_from_zero_on_a_reused_instance() {
    let h = start(&["faulty"], one_idle()).await;
    let (s, body) = h.client.raw("POST", "/faulty/flood?n=10", None).await;
    assert_eq!((s, &body["written"]), (200, &json!(10)), "{body}");
    let before = counts(&h, "faulty");
    let (s, body) = h.client.raw("POST", "/faulty/flood?n=10", None).await;
    assert_eq!((s, &body["written"]), (200, &json!(10)), "{body}");
    let after = counts(&h, "faulty");
    assert_eq!(
        (after.created, after.reused),
        (before.created, before.reused + 1),
        "the second flood ran on the reused instance"
    );
    h.stop().await;
}

/// A successful call on faulty that publishes nothing (faulty consumes its
/// own events, which would run on the same pool).
async fn ok_call(h: &Harness) {
    let (s, body) = h.client.raw("GET", "/faulty/sleep?ms=0", None).await;
    assert_eq!(s, 200, "{body}");
}

/// A trap, a timeout and an error answer each retire the instance; the next
/// call gets a fresh one, and the failed calls left nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_retire_the_instance() {
    let h = start(&["faulty"], one_idle()).await;
    ok_call(&h).await;
    let warm = counts(&h, "faulty");
    assert_eq!(warm.idle, 1);
    let (s, _) = h
        .client
        .raw("POST", "/faulty/write-then-trap?key=b", Some("2"))
        .await;
    assert_eq!(s, 500);
    assert_eq!(retired(&h, "faulty", "trap"), 1);
    assert_eq!(counts(&h, "faulty").idle, 0, "the trapped instance is gone");
    ok_call(&h).await;
    let (s, _) = h.client.raw("GET", "/faulty/loop", None).await;
    assert_eq!(s, 504);
    assert_eq!(retired(&h, "faulty", "timeout"), 1);
    let (s, _) = h
        .client
        .raw("POST", "/faulty/write-then-500?key=d", Some("4"))
        .await;
    assert_eq!(s, 500);
    assert_eq!(retired(&h, "faulty", "error_response"), 1);
    let (s, _) = h.client.raw("GET", "/faulty/alloc?mib=x", None).await;
    assert_eq!(s, 400);
    assert_eq!(retired(&h, "faulty", "error_response"), 2);
    let (s, things) = h.client.get("/faulty/things").await;
    assert_eq!((s, &things), (200, &json!([])));
    let after = counts(&h, "faulty");
    // The warm instance, then a new one after each of the four failures
    // (each failure ran on the instance the previous call left).
    assert_eq!(after.created, warm.created + 4, "{warm:?} -> {after:?}");
    assert_eq!(after.idle, 1);
    h.stop().await;
}

/// Wear: an instance serves at most `max_uses` calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_wear_out() {
    let h = start(
        &["faulty"],
        ReuseConfig {
            max_uses: 2,
            ..one_idle()
        },
    )
    .await;
    let before = counts(&h, "faulty");
    for _ in 0..6 {
        ok_call(&h).await;
    }
    let c = counts(&h, "faulty");
    let (created, reused) = (c.created - before.created, c.reused - before.reused);
    // Each instance serves one or two calls (its cap is drawn from 1..=2).
    assert_eq!(created + reused, 6, "{c:?}");
    assert!((3..=6).contains(&created), "{c:?}");
    assert!(retired(&h, "faulty", "max_uses") >= 2, "{c:?}");
    h.stop().await;
}

/// Idleness: an instance left unused past `idle_ms` is dropped by the
/// sweeper, without any further traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_instances_expire() {
    let h = start(
        &["faulty"],
        ReuseConfig {
            idle_ms: 300,
            ..one_idle()
        },
    )
    .await;
    ok_call(&h).await;
    assert_eq!(counts(&h, "faulty").idle, 1);
    eventually(
        "the idle instance to expire",
        Duration::from_secs(5),
        || {
            let c = counts(&h, "faulty");
            let expired = retired(&h, "faulty", "idle");
            async move { (c.idle == 0 && expired == 1).then_some(()) }
        },
    )
    .await;
    h.stop().await;
}

/// A swap (here: the same code under a new manifest entry) closes the old
/// version's pool: its idle instance is dropped and the new version
/// creates its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swap_clears_the_pool() {
    let h = start(&["faulty"], one_idle()).await;
    ok_call(&h).await;
    assert_eq!(counts(&h, "faulty").idle, 1);
    let live = h.rt.registry.get("faulty").expect("faulty");
    let mut config = live.config.clone();
    config.deadline_ms += 1;
    h.rt.registry
        .install(std::sync::Arc::new(live.with_config(config)));
    assert_eq!(retired(&h, "faulty", "swap"), 1);
    assert_eq!(counts(&h, "faulty").idle, 0);
    let before = counts(&h, "faulty");
    ok_call(&h).await;
    let after = counts(&h, "faulty");
    assert_eq!(
        (after.created, after.reused, after.idle),
        (before.created + 1, before.reused, 1)
    );
    h.stop().await;
}
