//! The paced (open-loop) client of the event-pipeline scenario: orders are
//! placed on a fixed schedule (`rate` per second, whatever the answers'
//! speed, so a slow host cannot slow the load down), and each order in
//! flight is watched black-box: from the moment its POST returned, GET
//! /orders/{id} and GET /myPages/{id} about every millisecond until each
//! shows `"status":"ORDERED"`. Those polls are extra read load on the host
//! (counted and reported). At most `poll_slots` polls are in flight at once:
//! unbounded, every order still in flight would be one more closed-loop
//! reader, and a host that falls behind would be buried under its own
//! watchers (the measurement would cause the backlog it measures). When
//! more orders are in flight than slots, each is polled less often than
//! every millisecond. Meanwhile the admin metrics' event lag is sampled to
//! see whether a backlog builds up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::time::Instant;

use super::api;
use super::stats::Percentiles;

/// How long one order is watched before it counts as never seen.
const WATCH_LIMIT: Duration = Duration::from_secs(10);
/// Pause between two polls of one order.
const POLL_EVERY: Duration = Duration::from_millis(1);

#[derive(Debug, Serialize)]
pub struct Paced {
    pub rate_per_s: f64,
    pub seconds: f64,
    pub scheduled: u64,
    pub accepted: u64,
    pub refused_or_failed: u64,
    /// Refused or failed POSTs by status and error kind.
    pub failures: std::collections::BTreeMap<String, u64>,
    /// From the scheduled send time to the POST's answer (queueing included).
    pub post_ms: Percentiles,
    /// From the POST's answer to GET /orders/{id} showing ORDERED.
    pub ordered_ms: Percentiles,
    /// From the POST's answer to GET /myPages/{id} showing ORDERED.
    pub mypage_ms: Percentiles,
    pub never_ordered: u64,
    pub never_on_mypage: u64,
    /// Polls in flight at most.
    pub poll_slots: usize,
    /// Reads the watching added, per second of the run.
    pub poll_reads_per_s: f64,
    /// (seconds into the run, total event lag over every subscriber).
    pub lag_samples: Vec<(f64, u64)>,
}

struct One {
    post: Duration,
    ordered: Option<Duration>,
    mypage: Option<Duration>,
}

/// Poll `url` until its JSON has `"status":"ORDERED"`; the time since `from`.
async fn watch(
    client: &reqwest::Client,
    url: String,
    from: Instant,
    w: &Watchers,
) -> Option<Duration> {
    while from.elapsed() < WATCH_LIMIT {
        let seen = {
            let _slot = w.slots.acquire().await.ok()?;
            w.polls.fetch_add(1, Ordering::Relaxed);
            match client.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => resp
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["status"] == "ORDERED"),
                _ => false,
            }
        };
        if seen {
            return Some(from.elapsed());
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    None
}

/// Shared by every watching task.
struct Watchers {
    /// Bounds the polls in flight (see the module doc).
    slots: tokio::sync::Semaphore,
    polls: AtomicU64,
}

async fn one(
    client: reqwest::Client,
    url: Arc<str>,
    n: u64,
    items: u32,
    scheduled: Instant,
    w: Arc<Watchers>,
) -> Result<One, String> {
    let item = 1 + (n as u32 % items);
    let resp = client
        .post(format!("{url}/orders"))
        .body(format!(r#"{{"custNm":"paced-{n}","cafeId":{item}}}"#))
        .timeout(WATCH_LIMIT)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timeout".to_owned()
            } else {
                "transport error".to_owned()
            }
        })?;
    let returned = Instant::now();
    if resp.status().as_u16() != 201 {
        let status = resp.status().as_u16();
        let kind = resp
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        return Err(format!("{status} {kind}"));
    }
    let order: serde_json::Value = resp.json().await.map_err(|_| "bad 201 body".to_owned())?;
    let id = order["id"]
        .as_u64()
        .ok_or_else(|| "201 without id".to_owned())?;
    let (ordered, mypage) = tokio::join!(
        watch(&client, format!("{url}/orders/{id}"), returned, &w),
        watch(&client, format!("{url}/myPages/{id}"), returned, &w),
    );
    Ok(One {
        post: returned - scheduled,
        ordered,
        mypage,
    })
}

/// Place `rate` orders per second for `seconds` on items 1..=items.
pub async fn run(
    client: &reqwest::Client,
    url: &str,
    admin: &str,
    rate: f64,
    seconds: u64,
    items: u32,
    poll_slots: usize,
) -> Result<Paced> {
    let total = (rate * seconds as f64).round() as u64;
    let every = Duration::from_secs_f64(1.0 / rate);
    let url: Arc<str> = Arc::from(url);
    let w = Arc::new(Watchers {
        slots: tokio::sync::Semaphore::new(poll_slots.max(1)),
        polls: AtomicU64::new(0),
    });
    let start = Instant::now() + Duration::from_millis(20);
    let stop = Arc::new(tokio::sync::Notify::new());
    let sampler = {
        let (client, admin, stop) = (client.clone(), admin.to_owned(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                if let Ok(m) = api::metrics(&client, &admin).await {
                    samples.push((
                        start.elapsed().as_secs_f64(),
                        api::lags(&m).values().sum::<u64>(),
                    ));
                }
                tokio::select! {
                    () = stop.notified() => break,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            samples
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let at = start + every.mul_f64(n as f64);
        tokio::time::sleep_until(at).await;
        tasks.spawn(one(
            client.clone(),
            Arc::clone(&url),
            n,
            items,
            at,
            Arc::clone(&w),
        ));
    }
    let mut done = Vec::new();
    let mut failed = 0u64;
    let mut failures: std::collections::BTreeMap<String, u64> = Default::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(one)) => done.push(one),
            Ok(Err(kind)) => {
                failed += 1;
                *failures.entry(kind).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                *failures.entry(format!("task failed: {e}")).or_default() += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.notify_one();
    let lag_samples = sampler.await.unwrap_or_default();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Paced {
        rate_per_s: rate,
        seconds: seconds as f64,
        scheduled: total,
        accepted: done.len() as u64,
        refused_or_failed: failed,
        failures,
        post_ms: Percentiles::of(done.iter().map(|o| ms(o.post)).collect()),
        ordered_ms: Percentiles::of(done.iter().filter_map(|o| o.ordered.map(ms)).collect()),
        mypage_ms: Percentiles::of(done.iter().filter_map(|o| o.mypage.map(ms)).collect()),
        never_ordered: done.iter().filter(|o| o.ordered.is_none()).count() as u64,
        never_on_mypage: done.iter().filter(|o| o.mypage.is_none()).count() as u64,
        poll_slots,
        poll_reads_per_s: w.polls.load(Ordering::Relaxed) as f64 / elapsed.max(1e-9),
        lag_samples,
    })
}
