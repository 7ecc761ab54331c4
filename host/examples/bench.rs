//! `cargo xtask bench [seconds] [concurrency]`: throughput and latency of the
//! host, measured in one run against a bare hyper server doing the same work
//! (read one document from the same SQLite file, answer it as JSON), so the
//! ratio — the price of a fresh wasm instance per request plus the unit of
//! work — survives a noisy shared machine. Also: order placement (reserve
//! through cafe + commit) and the event pipeline (order → production →
//! order ORDERED → mypage), and data growth: paging through 20,000
//! maximum-length orders and force-cancelling them all by deleting their
//! item. Only 127.0.0.1, bounded duration.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sktarbucks::config::{ComponentConfig, Config, Synchronous};
use sktarbucks::runtime::Runtime;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// The bench configuration, built as a typed `Config`: the four cafe
/// components on SQLite (synchronous = normal) on an ephemeral port.
fn bench_config(data: &std::path::Path) -> Result<Config> {
    let wasm = |n: &str| root().join(format!("components/target/wasm32-wasip2/release/{n}.wasm"));
    let mut config = Config::parse("", data)?;
    config.listen = "127.0.0.1:0".parse()?;
    config.data = data.to_path_buf();
    config.sqlite.synchronous = Synchronous::Normal;
    for (name, route) in [
        ("cafe", "/cafes"),
        ("order", "/orders"),
        ("production", "/productions"),
        ("mypage", "/myPages"),
    ] {
        let mut c = ComponentConfig::new(wasm(name));
        c.routes = vec![route.to_owned()];
        if name == "order" {
            c.links.insert("stock".into(), "cafe".into());
        }
        config.components.insert(name.to_owned(), c);
    }
    config.check()?;
    Ok(config)
}

/// Latencies of one load run.
struct Run {
    name: String,
    ok: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }

    fn print(&self) {
        println!(
            "{:<34} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ok {:>7}  failed {}",
            self.name,
            self.rps(),
            self.pct(0.50).as_secs_f64() * 1e3,
            self.pct(0.99).as_secs_f64() * 1e3,
            self.ok,
            self.failed
        );
    }
}

/// Drive `make` (method, url, body) from `concurrency` clients for `duration`.
async fn load(
    name: &str,
    client: &reqwest::Client,
    concurrency: usize,
    duration: Duration,
    make: impl Fn(usize) -> (reqwest::Method, String, Option<String>) + Send + Sync + 'static,
) -> Run {
    let make = Arc::new(make);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (client, make, stop) = (client.clone(), Arc::clone(&make), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0usize, 0usize, Vec::new());
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                let (method, url, body) = make(n);
                n += concurrency;
                let t0 = Instant::now();
                let mut req = client.request(method, url);
                if let Some(body) = body {
                    req = req.body(body);
                }
                match req.send().await {
                    Ok(resp) if resp.status().is_success() || resp.status().as_u16() == 409 => {
                        let _ = resp.bytes().await;
                        ok += 1;
                        lat.push(t0.elapsed());
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed, lat)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut run = Run {
        name: name.to_owned(),
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for t in tasks {
        if let Ok((ok, failed, lat)) = t.await {
            run.ok += ok;
            run.failed += failed;
            run.latencies.extend(lat);
        }
    }
    run.elapsed = started.elapsed();
    run.latencies.sort_unstable();
    run
}

/// The baseline: hyper reading the same row from the same SQLite file.
async fn bare_hyper(db: std::path::PathBuf) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let pool: Arc<Vec<std::sync::Mutex<rusqlite::Connection>>> = Arc::new(
        (0..4)
            .map(|_| rusqlite::Connection::open(&db).map(std::sync::Mutex::new))
            .collect::<rusqlite::Result<_>>()?,
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let pool = Arc::clone(&pool);
                    async move {
                        let key = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
                        let conn = pool
                            .iter()
                            .find_map(|c| c.try_lock().ok())
                            .unwrap_or_else(|| pool[0].lock().unwrap_or_else(|p| p.into_inner()));
                        let raw: Option<Vec<u8>> = conn
                            .query_row(
                                "SELECT value FROM docs WHERE ns = 'cafe' AND coll = 'cafes' AND key = ?1",
                                [key],
                                |r| r.get(0),
                            )
                            .ok();
                        drop(conn);
                        let value: serde_json::Value = raw
                            .and_then(|r| serde_json::from_slice(&r).ok())
                            .unwrap_or(serde_json::Value::Null);
                        let body = serde_json::to_vec(&value).unwrap_or_default();
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// `bytes` with a custom section appended: a new digest, the same code.
fn variant(mut bytes: Vec<u8>, tag: &str) -> Vec<u8> {
    fn leb(out: &mut Vec<u8>, mut n: usize) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = format!("bench-variant-{tag}");
    let mut payload = Vec::new();
    leb(&mut payload, name.len());
    payload.extend_from_slice(name.as_bytes());
    bytes.push(0);
    leb(&mut bytes, payload.len());
    bytes.extend_from_slice(&payload);
    bytes
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Steady reads and orders, then the same while cafe and order are swapped
/// about once a second; then 100 swaps back to back for memory.
async fn swap_under_load(
    client: &reqwest::Client,
    host: &str,
    running: &sktarbucks::app::RunningHost,
    concurrency: usize,
    duration: Duration,
) -> Result<()> {
    let mixed = || {
        let (read, order) = (format!("{host}/cafes/1"), format!("{host}/orders"));
        move |n: usize| {
            if n.is_multiple_of(2) {
                (reqwest::Method::GET, read.clone(), None)
            } else {
                (
                    reqwest::Method::POST,
                    order.clone(),
                    Some(format!(r#"{{"custNm":"swap{n}","cafeId":1}}"#)),
                )
            }
        }
    };
    let steady = load("GET+POST steady", client, concurrency, duration, mixed()).await;
    steady.print();
    let config = running.rt.config();
    let originals: Vec<(String, Vec<u8>)> = ["cafe", "order"]
        .iter()
        .map(|n| Ok(((*n).to_owned(), std::fs::read(&config.components[*n].path)?)))
        .collect::<Result<_>>()?;
    let deployer = std::sync::Arc::clone(&running.deployer);
    let swapping = std::sync::Arc::new(AtomicBool::new(true));
    let swapper = {
        let (deployer, swapping, originals) = (
            std::sync::Arc::clone(&deployer),
            std::sync::Arc::clone(&swapping),
            originals.clone(),
        );
        tokio::spawn(async move {
            let mut swaps = 0usize;
            let mut refused = 0usize;
            let mut i = 0usize;
            while swapping.load(Ordering::Relaxed) {
                let (name, bytes) = &originals[i % originals.len()];
                let bytes = if (i / originals.len()).is_multiple_of(2) {
                    variant(bytes.clone(), "b")
                } else {
                    bytes.clone()
                };
                match deployer.deploy(name, bytes).await {
                    Ok(_) => swaps += 1,
                    Err(_) => refused += 1,
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
            (swaps, refused)
        })
    };
    let during = load(
        "GET+POST while swapping ~1/s",
        client,
        concurrency,
        duration,
        mixed(),
    )
    .await;
    swapping.store(false, Ordering::Relaxed);
    let (swaps, refused) = swapper.await?;
    during.print();
    println!(
        "  hot swap under load: {swaps} swaps ({refused} refused), failed requests {} (steady {}), p99 during swaps / steady = {:.2}x",
        during.failed,
        steady.failed,
        during.pct(0.99).as_secs_f64() / steady.pct(0.99).as_secs_f64().max(1e-9)
    );
    let before = rss_kib();
    let started = Instant::now();
    for i in 0..100 {
        let (name, bytes) = &originals[0];
        let bytes = if i % 2 == 0 {
            variant(bytes.clone(), "b")
        } else {
            bytes.clone()
        };
        deployer
            .deploy(name, bytes)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "  100 swaps of cafe in {:.1} s: RSS {} MiB before, {} MiB after",
        started.elapsed().as_secs_f64(),
        before / 1024,
        rss_kib() / 1024
    );
    Ok(())
}

/// Orders of the data-growth runs.
const GROWTH_ORDERS: usize = 20_000;

async fn wait_drained(rt: &Runtime, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let lag: u64 = rt.lag().await?.iter().map(|(_, n)| n).sum();
        if lag == 0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "events did not drain within {limit:?} (lag {lag})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Follow `rel="next"` links from `path`; returns (items, pages).
async fn page_through(client: &reqwest::Client, host: &str, path: &str) -> Result<(usize, usize)> {
    let (mut items, mut pages) = (0, 0);
    let mut next = Some(path.to_owned());
    while let Some(path) = next.take() {
        let resp = client.get(format!("{host}{path}")).send().await?;
        anyhow::ensure!(resp.status().is_success(), "GET {path}: {}", resp.status());
        next = resp
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once('>'))
            .map(|(target, _)| target.trim_start_matches('<').to_owned());
        let page: Vec<serde_json::Value> = resp.json().await?;
        items += page.len();
        pages += 1;
    }
    Ok((items, pages))
}

/// 20,000 maximum-length orders on one item: time to page through every
/// order, and to force-cancel them all by deleting the item (chunked sweep
/// through order, then production and mypage following its events).
async fn data_growth(
    client: &reqwest::Client,
    host: &str,
    rt: &Runtime,
    concurrency: usize,
) -> Result<()> {
    use futures::StreamExt;
    let long = |tag: char| format!("{}{tag}", "🙂".repeat(199));
    let item: serde_json::Value = client
        .post(format!("{host}/cafes"))
        .body(
            serde_json::json!({"cafeNm": long('n'), "chkDate": long('d'), "pcnt": 1_000_000})
                .to_string(),
        )
        .send()
        .await?
        .json()
        .await?;
    let cafe_id = item["cafeId"].as_u64().context("the item has an id")?;
    let loaded = Instant::now();
    let failures = futures::stream::iter(0..GROWTH_ORDERS)
        .map(|i| {
            let body = serde_json::json!({"custNm": long(char::from(b'a' + (i % 26) as u8)), "cafeId": cafe_id});
            let req = client.post(format!("{host}/orders")).body(body.to_string());
            async move { req.send().await.map(|r| r.status().as_u16() != 201).unwrap_or(true) }
        })
        .buffer_unordered(concurrency)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    anyhow::ensure!(failures == 0, "{failures} of {GROWTH_ORDERS} orders failed");
    wait_drained(rt, Duration::from_secs(600)).await?;
    println!(
        "data growth: {GROWTH_ORDERS} max-length orders placed and their events drained in {:.1} s",
        loaded.elapsed().as_secs_f64()
    );
    for path in [
        format!("/orders?cafeId={cafe_id}"),
        format!("/orders?cafeId={cafe_id}&limit=1000"),
        "/myPages?limit=1000".to_owned(),
    ] {
        let t0 = Instant::now();
        let (items, pages) = page_through(client, host, &path).await?;
        println!(
            "  page through {path:<34} {items:>6} items in {pages:>4} pages: {:>7.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    let t0 = Instant::now();
    let deleted = client
        .delete(format!("{host}/cafes/{cafe_id}"))
        .send()
        .await?;
    anyhow::ensure!(
        deleted.status().is_success(),
        "delete: {}",
        deleted.status()
    );
    wait_drained(rt, Duration::from_secs(600)).await?;
    let open = page_through(
        client,
        host,
        &format!("/orders?cafeId={cafe_id}&status=ORDERED&limit=1000"),
    )
    .await?
    .0;
    anyhow::ensure!(open == 0, "{open} orders were not force-cancelled");
    println!(
        "  force-cancel {GROWTH_ORDERS} orders (delete → order, production, mypage settled): {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let concurrency: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let duration = Duration::from_secs(seconds);

    let dir = tempfile::tempdir()?;
    let config = bench_config(dir.path())?;
    let running = sktarbucks::app::start(config, sktarbucks::app::Options::default())
        .await
        .context("the host starts (run `cargo xtask build` first)")?;
    let host = running.url();
    let rt = Arc::clone(&running.rt);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let setup = client
        .post(format!("{host}/cafes"))
        .body(r#"{"cafeId":1,"cafeNm":"Coldbrew","chkDate":"20210713","pcnt":1000000}"#)
        .send()
        .await?;
    anyhow::ensure!(
        setup.status().is_success(),
        "setup failed: {}",
        setup.status()
    );
    let bare = format!(
        "http://{}",
        bare_hyper(dir.path().join("sktarbucks.db")).await?
    );

    println!(
        "sktarbucks bench: {seconds} s per run, {concurrency} concurrent clients, 127.0.0.1, same process"
    );
    let read_bare = {
        let url = format!("{bare}/cafes/1");
        load(
            "GET /cafes/1  bare hyper + sqlite",
            &client,
            concurrency,
            duration,
            move |_| (reqwest::Method::GET, url.clone(), None),
        )
        .await
    };
    read_bare.print();
    let read_host = {
        let url = format!("{host}/cafes/1");
        load(
            "GET /cafes/1  sktarbucks (wasm)",
            &client,
            concurrency,
            duration,
            move |_| (reqwest::Method::GET, url.clone(), None),
        )
        .await
    };
    read_host.print();
    println!(
        "  ratio bare/host throughput {:.2}x, p50 latency host/bare {:.2}x",
        read_bare.rps() / read_host.rps().max(1e-9),
        read_host.pct(0.5).as_secs_f64() / read_bare.pct(0.5).as_secs_f64().max(1e-9)
    );
    let orders = {
        let url = format!("{host}/orders");
        load(
            "POST /orders (order→cafe stock)",
            &client,
            concurrency,
            duration,
            move |n| {
                (
                    reqwest::Method::POST,
                    url.clone(),
                    Some(format!(r#"{{"custNm":"bench{n}","cafeId":1}}"#)),
                )
            },
        )
        .await
    };
    orders.print();

    // Event pipeline: how long until every order placed above is ORDERED
    // and visible on mypage (order → production → order → mypage).
    let started = Instant::now();
    let placed = orders.ok;
    loop {
        let lag: u64 = rt.lag().await?.iter().map(|(_, n)| n).sum();
        if lag == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            println!("event pipeline did not drain within 120 s (lag {lag})");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = started.elapsed();
    println!(
        "event pipeline: backlog of {placed} orders drained {:.2} s after the load stopped",
        drained.as_secs_f64()
    );
    swap_under_load(&client, &host, &running, concurrency, duration).await?;
    data_growth(&client, &host, &rt, concurrency).await?;
    drop(rt);
    running.stop().await?;
    Ok(())
}
