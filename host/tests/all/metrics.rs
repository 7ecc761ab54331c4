//! `GET /metrics` on the admin listener: the Prometheus exposition parsed
//! with a real parser, and counters that move with the traffic sent.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::support::binary::Host;
use crate::support::{eventually, manifest_text, test_config};

/// (name, sorted labels) → value of every sample in one scrape.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

async fn scrape(admin: &str) -> Samples {
    let resp = reqwest::get(format!("{admin}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(resp.status().as_u16(), 200, "/metrics needs no token");
    let text = resp.text().await.expect("text");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("a valid exposition");
    parsed
        .samples
        .into_iter()
        .filter_map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            Some(((s.metric, labels), value))
        })
        .collect()
}

fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort();
    samples
        .get(&(name.to_owned(), want))
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_the_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = Host::start_admin(
        dir.path(),
        &manifest_text(&test_config(dir.path())),
        &["--listen", "127.0.0.1:0"],
    );
    let admin = host.admin.clone().expect("admin");
    let c = host.client.clone();
    c.seed_item(1, 10).await;
    for _ in 0..3 {
        assert_eq!(c.get("/cafes/1").await.0, 200);
    }
    assert_eq!(c.get("/cafes/999").await.0, 404);
    let before = scrape(&admin).await;
    let ok = |m: &Samples| {
        get(
            m,
            "sktarbucks_http_requests_total",
            &[
                ("component", "cafe"),
                ("route", "/cafes/:id"),
                ("class", "2xx"),
            ],
        )
    };
    assert_eq!(ok(&before), 3.0);
    assert_eq!(
        get(
            &before,
            "sktarbucks_http_requests_total",
            &[
                ("component", "cafe"),
                ("route", "/cafes/:id"),
                ("class", "4xx")
            ]
        ),
        1.0
    );
    for name in ["cafe", "order", "production", "mypage"] {
        assert!(
            before
                .keys()
                .any(|(n, l)| n == "sktarbucks_component_version_info"
                    && l.iter().any(|(k, v)| k == "component" && v == name)),
            "version of {name}"
        );
    }
    assert!(get(&before, "process_resident_memory_bytes", &[]) > 1e6);
    for _ in 0..2 {
        assert_eq!(c.get("/cafes/1").await.0, 200);
    }
    let (s, _) = c
        .send("POST", "/orders", json!({"custNm": "Kim", "cafeId": 1}))
        .await;
    assert_eq!(s, 201);
    let after = eventually(
        "the order's events were delivered",
        Duration::from_secs(30),
        || async {
            let m = scrape(&admin).await;
            (get(
                &m,
                "sktarbucks_event_deliveries_total",
                &[("component", "production"), ("outcome", "ok")],
            ) >= 1.0
                && get(&m, "sktarbucks_event_lag", &[("component", "mypage")]) == 0.0
                && get(
                    &m,
                    "sktarbucks_event_deliveries_total",
                    &[("component", "mypage"), ("outcome", "ok")],
                ) >= 2.0)
                .then_some(m)
        },
    )
    .await;
    assert_eq!(
        ok(&after) - ok(&before),
        2.0,
        "the counter moved by the two GETs"
    );
    assert_eq!(
        get(
            &after,
            "sktarbucks_link_calls_total",
            &[("link", "order->cafe"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            "sktarbucks_invocations_total",
            &[("component", "order"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        get(&after, "sktarbucks_breaker_state", &[("guard", "cafe")]),
        0.0
    );
    // The pipeline's latency per subscriber: one age per acknowledged
    // delivery, each counted from the event's append (so it covers the
    // handling, counted from the handler's start).
    for sub in ["production", "mypage"] {
        let labels = [("component", sub)];
        let ages = get(&after, "sktarbucks_event_age_seconds_count", &labels);
        let acked = get(
            &after,
            "sktarbucks_event_deliveries_total",
            &[("component", sub), ("outcome", "ok")],
        );
        assert!(acked >= 1.0, "premise: {sub} acknowledged a delivery");
        assert_eq!(ages, acked, "{sub}: one age per acknowledged delivery");
        let age = get(&after, "sktarbucks_event_age_seconds_sum", &labels);
        let handling = get(
            &after,
            "sktarbucks_event_handle_to_ack_seconds_sum",
            &labels,
        );
        assert!(
            age > handling && age < 30.0,
            "{sub}: ages {age} s in all, handling {handling} s"
        );
    }
    // The admin routes still need the token.
    let status = reqwest::get(format!("{admin}/admin/components"))
        .await
        .expect("get")
        .status();
    assert_eq!(status.as_u16(), 401);
}
