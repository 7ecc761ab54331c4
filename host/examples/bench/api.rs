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

/// `sktarbucks_event_age_seconds` per subscriber: its buckets as (upper
/// bound in seconds, cumulative count), lowest bound first.
pub fn age_buckets(m: &BTreeMap<String, f64>) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (s, v) in m
        .iter()
        .filter(|(s, _)| s.starts_with("sktarbucks_event_age_seconds_bucket{"))
    {
        let (Some(component), Some(le)) = (label(s, "component"), label(s, "le")) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(le) => le,
                Err(_) => continue,
            }
        };
        out.entry(component.to_owned()).or_default().push((le, *v));
    }
    for buckets in out.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// The upper bound of the bucket that holds quantile `q` of what was
/// observed between two scrapes of one histogram (`None`: nothing was).
pub fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let earlier = |le: f64| before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
    let total = after.last()?.1 - before.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return None;
    }
    after
        .iter()
        .find(|(le, count)| count - earlier(*le) >= q * total)
        .map(|(le, _)| *le)
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

/// `GET /cafes/{id}` as JSON, whatever its status.
pub async fn item(client: &reqwest::Client, url: &str, id: u32) -> Result<serde_json::Value> {
    client
        .get(format!("{url}/cafes/{id}"))
        .send()
        .await
        .context("GET /cafes failed")?
        .json()
        .await
        .context("GET /cafes answered no JSON")
}

/// `GET /cafes/{id}` → `pcnt`.
pub async fn pcnt(client: &reqwest::Client, url: &str, id: u32) -> Result<u64> {
    item(client, url, id).await?["pcnt"]
        .as_u64()
        .context("no pcnt in the item")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_is_read_from_the_buckets_filled_between_two_scrapes() {
        let before = [
            (0.001, 10.0),
            (0.002, 10.0),
            (0.004, 10.0),
            (f64::INFINITY, 10.0),
        ];
        // 100 more: 50 under 1 ms, 45 more under 2 ms, 5 more under 4 ms.
        let after = [
            (0.001, 60.0),
            (0.002, 105.0),
            (0.004, 110.0),
            (f64::INFINITY, 110.0),
        ];
        assert_eq!(bucket_quantile(&before, &after, 0.5), Some(0.001));
        assert_eq!(bucket_quantile(&before, &after, 0.9), Some(0.002));
        assert_eq!(bucket_quantile(&before, &after, 0.99), Some(0.004));
        assert_eq!(bucket_quantile(&before, &before, 0.5), None);
    }
}
