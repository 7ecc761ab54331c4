//! Per-component limits, circuit breakers (per component and per link) and
//! publish capabilities, each with its premise checked.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::on_both_backends;
use crate::support::eventually;
use crate::support::harness::{Harness, Kind};

/// Instances of `component`'s live version started so far.
fn invocations(h: &Harness, component: &str) -> u64 {
    h.rt.registry
        .get(component)
        .expect("loaded")
        .invocations
        .load(Ordering::Relaxed)
}

/// Failures open the breaker; while open no guest runs and the answer is a
/// fast 503 with Retry-After; after the cool-down one probe closes it.
async fn a_failing_component_is_cut_off_then_probed_back(kind: Kind) {
    let h = Harness::start_with(kind, |c| {
        let f = c.components.get_mut("faulty").expect("faulty");
        f.limits.consecutive_failures = 3;
        f.limits.open_ms = 400;
    })
    .await;
    for _ in 0..3 {
        let (s, body) = h
            .client
            .raw("POST", "/faulty/write-then-trap", Some("x"))
            .await;
        assert_eq!((s, body["error"].as_str()), (500, Some("component_failed")));
    }
    let (_, ready) = h.client.get("/health/ready").await;
    let faulty = ready["components"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "faulty"))
        .cloned()
        .expect("faulty in readiness");
    assert_eq!(faulty["breaker"], "open", "{ready}");
    let before = invocations(&h, "faulty");
    for _ in 0..20 {
        let resp = reqwest::Client::new()
            .post(format!("{}/faulty/write", h.client.base))
            .body("y")
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status().as_u16(), 503);
        assert!(resp.headers().contains_key("retry-after"));
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["error"], "circuit_open", "{body}");
    }
    assert_eq!(invocations(&h, "faulty"), before, "no guest ran while open");
    // Other components are untouched.
    let (s, _) = h.client.get("/cafes").await;
    assert_eq!(s, 200);
    // After the cool-down a good request is the probe and closes it.
    eventually(
        "the breaker lets a probe through",
        Duration::from_secs(10),
        || async {
            let (s, _) = h.client.raw("POST", "/faulty/write", Some("z")).await;
            (s == 200).then_some(())
        },
    )
    .await;
    let (s, _) = h.client.raw("POST", "/faulty/write", Some("w")).await;
    assert_eq!(s, 200, "closed again");
    h.stop().await;
}

/// order → cafe: a cafe that fails every linked call opens the link's
/// breaker; then order answers 503 at once without instantiating cafe.
async fn a_failing_provider_opens_the_link_breaker(kind: Kind) {
    let h = Harness::start_with(kind, |c| {
        let cafe = c.components.get_mut("cafe").expect("cafe");
        cafe.limits.consecutive_failures = 3;
        cafe.limits.open_ms = 60_000;
    })
    .await;
    h.client.seed_item(1, 10).await;
    // Make cafe fail: a version whose instances cannot get the memory they
    // need (same code, 1 MiB ceiling) replaces it through a reload-free swap.
    let live = h.rt.registry.get("cafe").expect("cafe");
    let mut config = live.config.clone();
    config.memory_mib = 1;
    h.rt.registry
        .install(std::sync::Arc::new(live.with_config(config)));
    for _ in 0..3 {
        let (s, body) = h
            .client
            .send("POST", "/orders", json!({"custNm": "Kim", "cafeId": 1}))
            .await;
        assert_eq!(
            (s, body["error"].as_str()),
            (503, Some("stock_unavailable")),
            "{body}"
        );
    }
    let cafe_before = invocations(&h, "cafe");
    let (s, body) = h
        .client
        .send("POST", "/orders", json!({"custNm": "Kim", "cafeId": 1}))
        .await;
    assert_eq!(s, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("circuit breaker is open"),
        "{body}"
    );
    assert_eq!(
        invocations(&h, "cafe"),
        cafe_before,
        "cafe was not instantiated"
    );
    let (_, ready) = h.client.get("/health/ready").await;
    assert_eq!(ready["links"]["order->cafe"], "open", "{ready}");
    assert!(
        h.client
            .get("/orders")
            .await
            .1
            .as_array()
            .is_some_and(Vec::is_empty),
        "nothing stored"
    );
    h.stop().await;
}

/// One slot: a second concurrent request waits its bounded time, then gets
/// 503 overloaded with Retry-After while the first still runs.
async fn excess_concurrency_gets_a_fast_503(kind: Kind) {
    let h = Harness::start_with(kind, |c| {
        let f = c.components.get_mut("faulty").expect("faulty");
        f.limits.max_in_flight = 1;
        f.limits.queue_ms = 50;
    })
    .await;
    let slow = {
        let c = h.client.clone();
        tokio::spawn(async move { c.get("/faulty/sleep?ms=400").await })
    };
    eventually(
        "the slow request holds the slot",
        Duration::from_secs(5),
        || async {
            let (_, ready) = h.client.get("/health/ready").await;
            let faulty = ready["components"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "faulty")?
                .clone();
            (faulty["inFlight"] == 1).then_some(())
        },
    )
    .await;
    let (s, body) = h.client.get("/faulty/sleep?ms=1").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (503, Some("overloaded")),
        "{body}"
    );
    assert!(!slow.is_finished(), "the first request was still running");
    let (s, _) = slow.await.expect("slow task");
    assert_eq!(s, 200);
    let (s, _) = h.client.get("/faulty/sleep?ms=1").await;
    assert_eq!(s, 200, "the slot is free again");
    h.stop().await;
}

/// A component publishing another context's topic fails the invocation and
/// nothing is committed; allowed by the manifest, the consumer still refuses
/// the source, so a hostile guest cannot make cafe release stock.
async fn foreign_topics_are_refused_at_publish_and_by_the_consumer(kind: Kind) {
    let forged = |id: u64| {
        json!({"id": id, "custNm": "x", "cafeId": 1, "cafeNm": "Coldbrew", "chkDate": "1", "qty": 1, "status": "CANCELED", "version": 2}).to_string()
    };
    for allowed in [false, true] {
        let h = Harness::start_with(kind, |c| {
            if allowed {
                c.components.get_mut("faulty").expect("faulty").publishes =
                    Some(vec!["faulty.*".into(), "order.canceled".into()]);
            }
        })
        .await;
        h.client.seed_item(1, 10).await;
        let (s, order) = h
            .client
            .send("POST", "/orders", json!({"custNm": "Kim", "cafeId": 1}))
            .await;
        assert_eq!(s, 201);
        let id = order["id"].as_u64().expect("id");
        let (s, body) = h
            .client
            .raw(
                "POST",
                &format!("/faulty/forge?topic=order.canceled&key={id}"),
                Some(&forged(id)),
            )
            .await;
        if allowed {
            assert_eq!(s, 200, "{body}");
        } else {
            assert_eq!(s, 500, "{body}");
            assert!(
                body["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("may not publish"),
                "{body}"
            );
        }
        h.settle().await;
        let (_, cafe) = h.client.get("/cafes/1").await;
        assert_eq!(cafe["pcnt"], 9, "no stock was released by a forged cancel");
        let (_, o) = h.client.get(&format!("/orders/{id}")).await;
        assert_ne!(o["status"], "CANCELED");
        let canceled = h.events_on("order.canceled").await;
        if allowed {
            assert_eq!(canceled.len(), 1, "the forged event reached the log");
            let letters = h.backend.dead_letters().await.expect("dead letters");
            assert!(
                letters
                    .iter()
                    .any(|l| l.subscriber == "cafe" && l.error.contains("faulty")),
                "cafe refused it by source: {letters:?}"
            );
        } else {
            assert!(canceled.is_empty(), "nothing was committed");
        }
        h.stop().await;
    }
}

on_both_backends!(
    a_failing_component_is_cut_off_then_probed_back,
    a_failing_provider_opens_the_link_breaker,
    excess_concurrency_gets_a_fast_503,
    foreign_topics_are_refused_at_publish_and_by_the_consumer,
);
