//! The few HTTP calls the driver makes itself (setup, checks, metrics):
//! never part of a measured load.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;

/// Register items `ids` with `pcnt` units each.
pub async fn seed(
    client: &reqwest::Client,
    url: &str,
    ids: impl Iterator<Item = u32>,
    pcnt: u32,
) -> Result<()> {
    for id in ids {
        let body = serde_json::json!({
            "cafeId": id, "cafeNm": format!("Bench {id}"), "chkDate": "20250101", "pcnt": pcnt
        });
        let resp = client
            .post(format!("{url}/cafes"))
            .body(body.to_string())
            .send()
            .await
            .context("POST /cafes failed")?;
        if !resp.status().is_success() {
            bail!(
                "seeding cafe {id}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Place `n` one-unit orders on random items among 1..=items from
/// `concurrency` clients (setup, not measured); returns how many got a 201.
pub async fn place_orders(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    items: u32,
    concurrency: usize,
) -> u64 {
    futures::stream::iter(0..n)
        .map(|i| {
            let item = 1 + (rand::random::<u32>() % items);
            let req = client
                .post(format!("{url}/orders"))
                .body(format!(r#"{{"custNm":"backlog-{i}","cafeId":{item}}}"#));
            async move {
                req.send()
                    .await
                    .map(|r| r.status().as_u16() == 201)
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await as u64
}

/// `GET /metrics` of the admin listener (no token needed), as
/// `name{labels}` → value. Labels are kept as printed.
pub async fn metrics(client: &reqwest::Client, admin: &str) -> Result<BTreeMap<String, f64>> {
    let text = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .context("GET /metrics failed")?
        .text()
        .await
        .context("reading /metrics failed")?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// The value of `label` in a series such as `x{component="order",outcome="ok"}`.
fn label<'a>(series: &'a str, label: &str) -> Option<&'a str> {
    let inner = series.split_once('{')?.1.strip_suffix('}')?;
    inner.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == label).then(|| v.trim_matches('"'))
    })
}

/// `sktarbucks_event_lag` per subscriber.
pub fn lags(m: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    m.iter()
        .filter(|(s, _)| s.starts_with("sktarbucks_event_lag{"))
        .filter_map(|(s, v)| Some((label(s, "component")?.to_owned(), *v as u64)))
        .collect()
}

/// Deliveries of `outcome` per subscriber (`sktarbucks_event_deliveries`).
pub fn deliveries(m: &BTreeMap<String, f64>, outcome: &str) -> BTreeMap<String, u64> {
    m.iter()
        .filter(|(s, _)| s.starts_with("sktarbucks_event_deliveries"))
        .filter(|(s, _)| label(s, "outcome") == Some(outcome))
        .filter_map(|(s, v)| Some((label(s, "component")?.to_owned(), *v as u64)))
        .collect()
}

/// Wait until every subscriber's lag is 0; returns how long that took.
pub async fn wait_drained(
    client: &reqwest::Client,
    admin: &str,
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let lag: u64 = lags(&metrics(client, admin).await?).values().sum();
        if lag == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("the event backlog did not drain within {limit:?} (lag {lag})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /cafes/{id}` → `pcnt`.
pub async fn pcnt(client: &reqwest::Client, url: &str, id: u32) -> Result<u64> {
    let v: serde_json::Value = client
        .get(format!("{url}/cafes/{id}"))
        .send()
        .await
        .context("GET /cafes failed")?
        .json()
        .await
        .context("GET /cafes answered no JSON")?;
    v["pcnt"].as_u64().context("no pcnt in the item")
}

/// Every stored order of item `id` (following `Link: rel="next"`):
/// (count, sum of qty).
pub async fn orders_of(client: &reqwest::Client, url: &str, id: u32) -> Result<(u64, u64)> {
    let (mut count, mut qty) = (0u64, 0u64);
    let mut next = Some(format!("/orders?cafeId={id}&limit=1000"));
    while let Some(path) = next.take() {
        let resp = client
            .get(format!("{url}{path}"))
            .send()
            .await
            .with_context(|| format!("GET {path} failed"))?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        next = resp
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once('>'))
            .map(|(target, _)| target.trim_start_matches('<').to_owned());
        let page: Vec<serde_json::Value> = resp.json().await.context("a page of orders")?;
        for o in &page {
            if o["cafeId"].as_u64() == Some(u64::from(id)) {
                count += 1;
                qty += o["qty"].as_u64().unwrap_or(0);
            }
        }
    }
    Ok((count, qty))
}
