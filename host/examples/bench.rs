//! `cargo xtask bench [--seconds N] [--clients C] [--rounds R]
//! [--only get,orders,hot,pipeline,backlog,soak] [--no-redis] [--soak-rss]`
//!
//! Benchmarks the real `sktarbucks serve` (`target/dist/sktarbucks`, the
//! binary beside the bench; own process, temp data directory, generated
//! manifest, ephemeral ports) against a bare hyper + SQLite server doing the
//! same work by hand (`examples/bare.rs`, also its own process), with load
//! from a third process, `wrk`. Runs of the systems alternate within one
//! invocation (host, bare, host on Redis, round after round) and the report
//! gives the median of the rounds and the host/bare ratio: on a shared, noisy
//! machine a ratio measured side by side means more than an absolute figure.
//! Before every run each host's event backlog is drained first, so no run
//! pays for the previous one's events. The Redis figures use the bench's own
//! `redis-server`.
//!
//! Scenarios: `get` (GET /cafes/{id}), `orders` (POST /orders over 100
//! items, synchronous normal and full), `hot` (POST /orders on one item,
//! then an oversell/lost check), `pipeline` (orders paced at a fixed rate,
//! latency until ORDERED on order and on mypage, event lag), `backlog` (a
//! backlog built with production and mypage absent, drained by them),
//! `soak` (60 s of orders, RSS growth; only with --soak-rss or
//! --seconds >= 60). VmRSS of the host is sampled during every load run.
//!
//! Output: markdown tables on stdout, one JSON per scenario in
//! `target/bench/<timestamp>-<scenario>.json`. Only 127.0.0.1; every run
//! is bounded.

// The example's root is `examples/bench.rs`, so its modules are named by path.
#[path = "bench/api.rs"]
mod api;
#[path = "bench/paced.rs"]
mod paced;
#[path = "bench/procs.rs"]
mod procs;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/stats.rs"]
mod stats;
#[path = "bench/wrk.rs"]
mod wrk;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;

use procs::{Bare, Host, HostSpec, Redis, RssSampler};
use report::{Check, Row, Scenario};
use stats::median;
use wrk::{Load, Summary};

#[derive(Parser, Serialize, Clone)]
#[command(about = "Benchmark the sktarbucks binary against a bare hyper + SQLite server")]
struct Args {
    /// Length of one load run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent connections of wrk.
    #[arg(long, default_value_t = 32)]
    clients: u32,
    /// Rounds of alternating runs per scenario (the report gives the median).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Comma-separated scenarios: get, orders, hot, pipeline, backlog, soak.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the Redis backend (otherwise a redis-server is started).
    #[arg(long)]
    no_redis: bool,
    /// Run the 60 s RSS-growth soak (also on with --seconds >= 60).
    #[arg(long)]
    soak_rss: bool,
    /// Orders per second of the paced pipeline client.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Most polls in flight at once of the paced client's watchers.
    #[arg(long, default_value_t = 8)]
    poll_slots: usize,
    /// Orders placed to build the backlog of the `backlog` scenario.
    #[arg(long, default_value_t = 10_000)]
    backlog: usize,
    /// Keep the temp directory (manifests, data, host logs) for a look after.
    #[arg(long)]
    keep: bool,
    /// Run the components without instance reuse (the shipped manifest
    /// opts the four in).
    #[arg(long)]
    no_reuse: bool,
    /// Measure another sktarbucks binary (say, an earlier commit's build
    /// kept aside) instead of the one beside the bench (target/dist/
    /// sktarbucks for `cargo xtask bench`); one that predates
    /// instance reuse needs --no-reuse.
    #[arg(long)]
    host_bin: Option<PathBuf>,
}

const SCENARIOS: [&str; 6] = ["get", "orders", "hot", "pipeline", "backlog", "soak"];
const ALL: [&str; 4] = ["cafe", "order", "production", "mypage"];
/// Items every host and bare server has (ids 1..=ITEMS), and their stock:
/// enough that no run sells out.
const ITEMS: u32 = 100;
const STOCK: u32 = 1_000_000;
/// The longest wait for an event backlog to drain between runs.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Redis,
}

/// Shared by every scenario of one invocation.
struct Ctx {
    args: Args,
    root: PathBuf,
    bin: PathBuf,
    bare_bin: PathBuf,
    tmp: PathBuf,
    cache: PathBuf,
    redis: Option<Redis>,
    client: reqwest::Client,
    counter: AtomicUsize,
}

/// One system under load: a host or a bare server.
struct Target {
    name: String,
    url: String,
    pid: u32,
    /// The redis-server a host on Redis uses: its CPU counts with the host's.
    redis_pid: Option<u32>,
}

impl Target {
    /// Count the bench's redis-server's CPU with this host's.
    fn on(mut self, redis: Option<&Redis>) -> Self {
        self.redis_pid = redis.map(Redis::pid);
        self
    }

    /// CPU seconds used so far by the server (and its redis-server).
    fn cpu_seconds(&self) -> Option<f64> {
        let own = procs::cpu_seconds(self.pid)?;
        match self.redis_pid {
            Some(r) => Some(own + procs::cpu_seconds(r)?),
            None => Some(own),
        }
    }
}

/// One wrk run's result with the target's RSS during it.
#[derive(Serialize)]
struct WrkRun {
    what: String,
    system: String,
    round: usize,
    wrk: Summary,
    ok_per_s: f64,
    rss_max_kib: u64,
    rss_samples: Vec<(f64, u64)>,
    /// Time the host's event backlog took to drain after this run.
    drained_after_s: Option<f64>,
    /// Each subscriber's undelivered events the moment the run ended: how
    /// far the event pipeline fell behind the orders it accepted.
    lag_at_end: Option<std::collections::BTreeMap<String, u64>>,
    /// CPU seconds the server used from the start of the run to its end,
    /// or, for a host, until its backlog drained ([`note_drain`]).
    cpu_s: Option<f64>,
    /// The server's CPU time at the start of the run.
    #[serde(skip)]
    cpu_at_start: Option<f64>,
}

impl WrkRun {
    /// Server CPU per answered request, µs.
    fn cpu_us_per_ok(&self) -> f64 {
        let ok = self.wrk.ok() as f64;
        match self.cpu_s {
            Some(cpu) if ok >= 1.0 => cpu * 1e6 / ok,
            _ => f64::NAN,
        }
    }
}

impl Ctx {
    fn next(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A new directory under the bench's temp dir.
    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.join(format!("{:02}-{name}", self.next()))
    }

    /// Start a host in `dir` (SQLite data there, or a Redis prefix named
    /// after the directory, so a restart in the same `dir` finds its data).
    fn host_in(
        &self,
        dir: &Path,
        backend: Backend,
        sync: &str,
        components: &[&str],
    ) -> Result<Host> {
        let prefix = format!(
            "bench{}",
            dir.file_name()
                .map(|n| n.to_string_lossy().replace(['-', '.'], ""))
                .unwrap_or_default()
        );
        let redis = match backend {
            Backend::Sqlite => None,
            Backend::Redis => Some((
                self.redis
                    .as_ref()
                    .map(|r| r.url.as_str())
                    .context("no redis-server (started without --no-redis?)")?,
                prefix.as_str(),
            )),
        };
        Host::start(&HostSpec {
            bin: &self.bin,
            root: &self.root,
            dir,
            redis,
            synchronous: sync,
            components,
            compile_cache: &self.cache,
            reuse: !self.args.no_reuse,
        })
    }

    /// A new host with the four components and the bench's items seeded.
    async fn host(&self, backend: Backend, sync: &str, extra_items: &[u32]) -> Result<Host> {
        let name = match backend {
            Backend::Sqlite => format!("sqlite-{sync}"),
            Backend::Redis => "redis".into(),
        };
        let host = self.host_in(&self.dir(&name), backend, sync, &ALL)?;
        api::seed(&self.client, &host.url, 1..=ITEMS, STOCK).await?;
        api::seed(&self.client, &host.url, extra_items.iter().copied(), STOCK).await?;
        Ok(host)
    }

    fn bare(&self, read_db: Option<&Path>, write: bool, sync: &str) -> Result<Bare> {
        let dir = self.dir(&format!("bare-{sync}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let write_db = dir.join("bare.db");
        Bare::start(
            &self.bare_bin,
            read_db,
            write.then_some(write_db.as_path()),
            sync,
            &dir.join("bare.log"),
        )
    }

    /// Wait until every host in `admins` has no event backlog, let the
    /// bench's redis-server rewrite its AOF, then write out the file
    /// system's dirty pages, so that no run pays for the last one's events,
    /// for an AOF rewrite its writes triggered, or for the write-back of its
    /// files (a run that follows 10 s of orders otherwise starts with
    /// hundreds of MiB queued for the disk, and its `fsync`s wait behind
    /// them).
    async fn drain(&self, admins: &[&str]) -> Result<()> {
        for admin in admins {
            api::wait_drained(&self.client, admin, DRAIN_LIMIT).await?;
        }
        if let Some(redis) = &self.redis {
            redis.rewrite_aof().await?;
        }
        let synced = tokio::process::Command::new("sync")
            .status()
            .await
            .context("failed to run sync")?;
        anyhow::ensure!(synced.success(), "sync failed: {synced}");
        Ok(())
    }

    /// One wrk run against `target`, after every host's backlog drained.
    async fn wrk(
        &self,
        what: &str,
        target: &Target,
        load: Load,
        round: usize,
        seconds: u64,
        admins: &[&str],
    ) -> Result<WrkRun> {
        self.drain(admins).await?;
        let tag = format!("r{round}n{}", self.next());
        let script = self.tmp.join(format!("{tag}.lua"));
        std::fs::write(&script, wrk::script(load, &tag))
            .with_context(|| format!("failed to write {}", script.display()))?;
        let rss = RssSampler::start(target.pid, Duration::from_millis(200));
        let cpu_at_start = target.cpu_seconds();
        let summary = wrk::run(&target.url, &script, self.args.clients, seconds).await;
        let cpu_at_end = target.cpu_seconds();
        let rss_samples = rss.stop();
        let summary = summary?;
        let run = WrkRun {
            cpu_s: cpu_at_start.zip(cpu_at_end).map(|(a, b)| b - a),
            cpu_at_start,
            what: what.into(),
            system: target.name.clone(),
            round,
            ok_per_s: summary.ok_per_s(),
            rss_max_kib: rss_samples.iter().map(|s| s.1).max().unwrap_or(0),
            rss_samples,
            wrk: summary,
            drained_after_s: None,
            lag_at_end: None,
        };
        eprintln!(
            "  {what:<28} {:<22} round {round}: {:>8.0} ok/s  p50 {:>6.2} ms  p99 {:>7.2} ms  non-2xx {}  sock err {}",
            run.system,
            run.ok_per_s,
            run.wrk.p50_us as f64 / 1e3,
            run.wrk.p99_us as f64 / 1e3,
            run.wrk.non_2xx_3xx,
            run.wrk.socket_errors()
        );
        Ok(run)
    }
}

impl Ctx {
    /// One second of `load` on every target, not recorded: first requests
    /// pay for lazy set-up (connections, caches, page faults) in every system.
    async fn warm_up(&self, targets: &[&Target], load: Load, admins: &[&str]) -> Result<()> {
        for t in targets {
            self.drain(admins).await?;
            let script = self.tmp.join(format!("warm{}.lua", self.next()));
            std::fs::write(&script, wrk::script(load, &format!("warm{}", self.next())))
                .with_context(|| format!("failed to write {}", script.display()))?;
            wrk::run(&t.url, &script, self.args.clients, 1).await?;
        }
        Ok(())
    }
}

/// The median row of one system's runs.
fn row(what: &str, system: &str, runs: &[WrkRun]) -> Row {
    let mine: Vec<&WrkRun> = runs
        .iter()
        .filter(|r| r.system == system && r.what == what)
        .collect();
    Row {
        what: what.into(),
        system: system.into(),
        ok_per_s: median(mine.iter().map(|r| r.ok_per_s)),
        p50_ms: median(mine.iter().map(|r| r.wrk.p50_us as f64 / 1e3)),
        p99_ms: median(mine.iter().map(|r| r.wrk.p99_us as f64 / 1e3)),
        non_2xx: mine.iter().map(|r| r.wrk.non_2xx_3xx).sum(),
        socket_errors: mine.iter().map(|r| r.wrk.socket_errors()).sum(),
        rss_max_mib: mine.iter().map(|r| r.rss_max_kib).max().unwrap_or(0) as f64 / 1024.0,
        cpu_us_per_ok: median(mine.iter().map(|r| r.cpu_us_per_ok())),
        rounds: mine.len(),
    }
}

/// The server CPU per answered request of `host` against `bare`'s: how
/// many times the work the host spends on one request (and its events).
fn cpu_ratio(what: &str, host: Option<&Row>, bare: &Row) -> Option<Check> {
    let host = host?;
    let ratio = host.cpu_us_per_ok / bare.cpu_us_per_ok;
    ratio.is_finite().then(|| {
        Check::info(
            format!("{what}: CPU per answer, {} / {}", host.system, bare.system),
            format!(
                "{:.0} / {:.0} µs = {ratio:.1}×",
                host.cpu_us_per_ok, bare.cpu_us_per_ok
            ),
        )
    })
}

/// A ratio as a percentage with one decimal, so a check just under its
/// target (49.7 % against ≥ 50 %) does not read as met.
fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn host_target(name: &str, host: &Host) -> Target {
    Target {
        name: name.into(),
        url: host.url.clone(),
        pid: host.pid(),
        redis_pid: None,
    }
}

/// GET /cafes/{id}: host on SQLite, bare server reading the same file,
/// host on Redis.
async fn get(ctx: &Ctx) -> Result<Scenario> {
    let mut s = Scenario {
        name: "get".into(),
        ..Scenario::default()
    };
    let what = "GET /cafes/{id}";
    let sqlite = ctx.host(Backend::Sqlite, "normal", &[]).await?;
    let bare = ctx.bare(Some(&sqlite.data.join("sktarbucks.db")), false, "normal")?;
    let redis = match ctx.redis {
        Some(_) => Some(ctx.host(Backend::Redis, "normal", &[]).await?),
        None => None,
    };
    let mut targets = vec![
        host_target("host sqlite", &sqlite),
        Target {
            name: "bare hyper+sqlite".into(),
            url: bare.url.clone(),
            pid: bare.pid(),
            redis_pid: None,
        },
    ];
    let mut admins = vec![sqlite.admin.as_str()];
    if let Some(r) = &redis {
        targets.push(host_target("host redis", r).on(ctx.redis.as_ref()));
        admins.push(r.admin.as_str());
    }
    // The premise of the ratio: every system answers the same item the same
    // way (bare merges the stock counter in, as cafe does).
    for id in [1, ITEMS / 2, ITEMS] {
        let want = api::item(&ctx.client, &targets[0].url, id).await?;
        if want.get("pcnt").is_none() {
            bail!("GET /cafes/{id} on the host has no pcnt: {want}");
        }
        for t in &targets[1..] {
            let got = api::item(&ctx.client, &t.url, id).await?;
            if got != want {
                bail!(
                    "GET /cafes/{id}: {} answered {got}, the host {want}",
                    t.name
                );
            }
        }
    }
    let load = Load::GetCafes { items: ITEMS };
    ctx.warm_up(&targets.iter().collect::<Vec<_>>(), load, &admins)
        .await?;
    let mut runs = Vec::new();
    for round in 1..=ctx.args.rounds {
        for t in &targets {
            runs.push(
                ctx.wrk(what, t, load, round, ctx.args.seconds, &admins)
                    .await?,
            );
        }
    }
    for t in &targets {
        s.rows.push(row(what, &t.name, &runs));
    }
    let bare_rps = s.rows[1].ok_per_s;
    let ratio = s.rows[0].ok_per_s / bare_rps;
    s.checks.push(Check::new(
        "GET /cafes/{id} host sqlite / bare (ok/s)",
        pct(ratio),
        "≥ 50 %",
        ratio >= 0.5,
    ));
    if let Some(r) = s.rows.get(2) {
        let ratio = r.ok_per_s / bare_rps;
        s.checks.push(Check::new(
            "GET /cafes/{id} host redis / bare sqlite (ok/s)",
            pct(ratio),
            "≥ 40 %",
            ratio >= 0.4,
        ));
    }
    for host in [0, 2] {
        if let Some(check) = cpu_ratio(what, s.rows.get(host), &s.rows[1]) {
            s.checks.push(check);
        }
    }
    s.runs = runs.iter().map(to_json).collect();
    Ok(s)
}

fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// After a run of `target` (a host): how long its event backlog took to
/// drain.
async fn note_drain(ctx: &Ctx, run: &mut WrkRun, target: &Target, admin: &str) -> Result<()> {
    run.lag_at_end = Some(api::lags(&api::metrics(&ctx.client, admin).await?));
    let d = api::wait_drained(&ctx.client, admin, DRAIN_LIMIT).await?;
    run.drained_after_s = Some(d.as_secs_f64());
    // The run's events are part of what its requests cost.
    if let (Some(start), Some(now)) = (run.cpu_at_start, target.cpu_seconds()) {
        run.cpu_s = Some(now - start);
    }
    Ok(())
}

/// How far `system`'s event pipeline fell behind during its runs of
/// `what`: the most-behind subscriber's undelivered events when each run
/// ended, and that as events per second of the run. A closed-loop client
/// can have more orders accepted than the handlers keep up with; the
/// difference is this lag (delivered after the run), so the ok/s beside it
/// is a sustained rate only where this stays near zero.
fn fell_behind(what: &str, system: &str, runs: &[WrkRun]) -> Option<Check> {
    let per_run: Vec<String> = runs
        .iter()
        .filter(|r| r.what == what && r.system == system)
        .filter_map(|r| {
            let (component, lag) = r.lag_at_end.as_ref()?.iter().max_by_key(|(_, lag)| **lag)?;
            let seconds = r.wrk.duration_us as f64 / 1e6;
            Some(format!(
                "{component} {lag} ({:.0}/s)",
                *lag as f64 / seconds.max(1e-3)
            ))
        })
        .collect();
    (!per_run.is_empty()).then(|| {
        Check::info(
            format!("{what}, {system}: event lag when each run ended (most-behind subscriber)"),
            per_run.join("; "),
        )
    })
}

/// POST /orders over 100 items, synchronous normal and full, against the
/// bare server's hand-written transaction with the same setting.
async fn orders(ctx: &Ctx) -> Result<Scenario> {
    let mut s = Scenario {
        name: "orders".into(),
        ..Scenario::default()
    };
    let mut runs = Vec::new();
    let load = Load::OrdersSpread { items: ITEMS };
    for (sync, target_rate) in [("normal", 5000.0), ("full", 3000.0)] {
        let what = format!("POST /orders, 100 items, sync {sync}");
        let host = ctx.host(Backend::Sqlite, sync, &[]).await?;
        let bare = ctx.bare(None, true, sync)?;
        let redis = match (&ctx.redis, sync) {
            (Some(_), "normal") => Some(ctx.host(Backend::Redis, sync, &[]).await?),
            _ => None,
        };
        let mut targets = vec![
            (host_target("host sqlite", &host), Some(host.admin.clone())),
            (
                Target {
                    name: "bare hyper+sqlite".into(),
                    url: bare.url.clone(),
                    pid: bare.pid(),
                    redis_pid: None,
                },
                None,
            ),
        ];
        if let Some(r) = &redis {
            targets.push((
                host_target("host redis (AOF everysec)", r).on(ctx.redis.as_ref()),
                Some(r.admin.clone()),
            ));
        }
        let admins: Vec<&str> = targets.iter().filter_map(|t| t.1.as_deref()).collect();
        ctx.warm_up(
            &targets.iter().map(|t| &t.0).collect::<Vec<_>>(),
            load,
            &admins,
        )
        .await?;
        for round in 1..=ctx.args.rounds {
            for (t, admin) in &targets {
                let mut run = ctx
                    .wrk(&what, t, load, round, ctx.args.seconds, &admins)
                    .await?;
                if let Some(admin) = admin {
                    note_drain(ctx, &mut run, t, admin).await?;
                }
                runs.push(run);
            }
        }
        let rows: Vec<Row> = targets
            .iter()
            .map(|(t, _)| row(&what, &t.name, &runs))
            .collect();
        let bare_rps = rows[1].ok_per_s;
        for (i, r) in rows.iter().enumerate() {
            if i == 1 {
                continue;
            }
            let label = if i == 0 {
                format!("POST /orders spread, {} sync {sync}", r.system)
            } else {
                format!("POST /orders spread, {} (sqlite-normal targets)", r.system)
            };
            s.checks.push(Check::new(
                format!("{label}: ok/s"),
                format!("{:.0}/s", r.ok_per_s),
                &format!("≥ {target_rate:.0}/s"),
                r.ok_per_s >= target_rate,
            ));
            s.checks.push(Check::new(
                format!("{label}: p99, {} clients", ctx.args.clients),
                format!("{:.2} ms", r.p99_ms),
                "≤ 20 ms",
                r.p99_ms <= 20.0,
            ));
            s.checks.push(Check::new(
                format!("{label}: non-2xx + socket errors"),
                format!("{}", r.non_2xx + r.socket_errors),
                "0",
                r.non_2xx + r.socket_errors == 0,
            ));
            s.checks.push(Check::info(
                format!("{label}: host / bare sync {sync} (ok/s)"),
                pct(r.ok_per_s / bare_rps),
            ));
            if let Some(check) = cpu_ratio(&label, Some(r), &rows[1]) {
                s.checks.push(check);
            }
        }
        let drains: Vec<String> = runs
            .iter()
            .filter(|r| r.what == what)
            .filter_map(|r| {
                r.drained_after_s
                    .map(|d| format!("{} {:.1} s", r.system, d))
            })
            .collect();
        s.notes.push(format!(
            "{what}: event backlog drained after each host run in: {}",
            drains.join(", ")
        ));
        for r in &rows {
            if let Some(check) = fell_behind(&what, &r.system, &runs) {
                s.checks.push(check);
            }
        }
        s.rows.extend(rows);
    }
    s.runs = runs.iter().map(to_json).collect();
    Ok(s)
}

/// The stock/order check of one hot-item run.
#[derive(Serialize)]
struct HotCheck {
    system: String,
    round: usize,
    item: u32,
    accepted_201: u64,
    stock_decrement: u64,
    orders_stored: u64,
    qty_stored: u64,
    ok: bool,
}

/// Stock and orders of `item` on a host, or on the bare server.
async fn hot_state(ctx: &Ctx, url: &str, item: u32, bare: bool) -> Result<(u64, u64, u64)> {
    if bare {
        let stats: Vec<serde_json::Value> = ctx
            .client
            .get(format!("{url}/bare/stats"))
            .send()
            .await
            .context("GET /bare/stats failed")?
            .json()
            .await
            .context("bad /bare/stats")?;
        let it = stats
            .iter()
            .find(|v| v["cafeId"].as_u64() == Some(u64::from(item)))
            .context("item missing from /bare/stats")?;
        let n = |k: &str| it[k].as_u64().unwrap_or(0);
        return Ok((n("pcnt"), n("orders"), n("sold")));
    }
    let pcnt = api::pcnt(&ctx.client, url, item).await?;
    let (count, qty) = api::orders_of(&ctx.client, url, item).await?;
    Ok((pcnt, count, qty))
}

/// POST /orders all on one item (every order conflicts on its stock), then
/// check nothing was oversold or lost. Each round uses a fresh hot item.
async fn hot(ctx: &Ctx) -> Result<Scenario> {
    let mut s = Scenario {
        name: "hot".into(),
        ..Scenario::default()
    };
    let what = "POST /orders, one hot item";
    let hot_items: Vec<u32> = (1..=ctx.args.rounds as u32).map(|r| 1000 + r).collect();
    let host = ctx.host(Backend::Sqlite, "normal", &hot_items).await?;
    let bare = ctx.bare(None, true, "normal")?;
    let redis = match ctx.redis {
        Some(_) => Some(ctx.host(Backend::Redis, "normal", &hot_items).await?),
        None => None,
    };
    // (target, admin, is bare)
    let mut targets = vec![
        (
            host_target("host sqlite", &host),
            Some(host.admin.clone()),
            false,
        ),
        (
            Target {
                name: "bare hyper+sqlite".into(),
                url: bare.url.clone(),
                pid: bare.pid(),
                redis_pid: None,
            },
            None,
            true,
        ),
    ];
    if let Some(r) = &redis {
        targets.push((
            host_target("host redis (AOF everysec)", r).on(ctx.redis.as_ref()),
            Some(r.admin.clone()),
            false,
        ));
    }
    let admins: Vec<&str> = targets.iter().filter_map(|t| t.1.as_deref()).collect();
    ctx.warm_up(
        &targets.iter().map(|t| &t.0).collect::<Vec<_>>(),
        Load::OrdersSpread { items: ITEMS },
        &admins,
    )
    .await?;
    let mut runs = Vec::new();
    let mut checks = Vec::new();
    for round in 1..=ctx.args.rounds {
        for (t, admin, is_bare) in &targets {
            // The bare server's items are 1..=100: its hot item is the round's.
            let item = if *is_bare {
                round as u32
            } else {
                1000 + round as u32
            };
            let (pcnt0, orders0, qty0) = hot_state(ctx, &t.url, item, *is_bare).await?;
            let mut run = ctx
                .wrk(
                    what,
                    t,
                    Load::OrdersHot { item },
                    round,
                    ctx.args.seconds,
                    &admins,
                )
                .await?;
            if let Some(admin) = admin {
                note_drain(ctx, &mut run, t, admin).await?;
            }
            let (pcnt1, orders1, qty1) = hot_state(ctx, &t.url, item, *is_bare).await?;
            let accepted = run.wrk.ok();
            let c = HotCheck {
                system: t.name.clone(),
                round,
                item,
                accepted_201: accepted,
                stock_decrement: pcnt0.saturating_sub(pcnt1),
                orders_stored: orders1.saturating_sub(orders0),
                qty_stored: qty1.saturating_sub(qty0),
                // No oversell or lost update: the stock went down by exactly
                // the units of the orders stored. No lost order: every 201
                // is stored; at most `clients` more may be stored, orders
                // whose answer wrk dropped when the run's time was up.
                ok: false,
            };
            let c = HotCheck {
                ok: pcnt1 <= pcnt0
                    && c.stock_decrement == c.qty_stored
                    && c.orders_stored >= accepted
                    && c.orders_stored <= accepted + u64::from(ctx.args.clients),
                ..c
            };
            checks.push(c);
            runs.push(run);
        }
    }
    for (t, _, is_bare) in &targets {
        let r = row(what, &t.name, &runs);
        if !is_bare {
            s.checks.push(Check::new(
                format!("POST /orders hot item, {}: ok/s", r.system),
                format!("{:.0}/s", r.ok_per_s),
                "≥ 2000/s",
                r.ok_per_s >= 2000.0,
            ));
            if let Some(check) = fell_behind(what, &t.name, &runs) {
                s.checks.push(check);
            }
        }
        let mine: Vec<&HotCheck> = checks.iter().filter(|c| c.system == t.name).collect();
        s.checks.push(Check::new(
            format!("POST /orders hot item, {}: none oversold or lost", t.name),
            mine.iter()
                .map(|c| {
                    format!(
                        "stock −{} = Σqty {}; orders {} vs 201s {}",
                        c.stock_decrement, c.qty_stored, c.orders_stored, c.accepted_201
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            "stock decrement = Σqty stored; 201s ≤ orders ≤ 201s + clients",
            mine.iter().all(|c| c.ok),
        ));
        s.rows.push(r);
    }
    s.notes.push(format!(
        "hot item: wrk stops at the deadline with up to {} requests in flight; the server may \
         have committed those, so the stored orders may exceed the 201s wrk counted by at most that.",
        ctx.args.clients
    ));
    s.runs = runs.iter().map(to_json).collect();
    s.runs.push(to_json(&checks));
    Ok(s)
}

/// One paced run of one system.
struct PacedRun {
    system: String,
    round: usize,
    paced: paced::Paced,
    rss_max: u64,
    drained_s: f64,
    /// Host CPU (with its redis-server's) per accepted order, from the
    /// first order to the drained log.
    cpu_us: f64,
    /// Per subscriber, p50 and p99 of the event ages at acknowledgement
    /// (`sktarbucks_event_age_seconds`, bucket upper bounds, ms).
    ages: std::collections::BTreeMap<String, (f64, f64)>,
}

/// Orders paced at a fixed rate; time until ORDERED on order and on mypage.
async fn pipeline(ctx: &Ctx) -> Result<Scenario> {
    let mut s = Scenario {
        name: "pipeline".into(),
        ..Scenario::default()
    };
    let mut hosts = vec![(
        "host sqlite",
        ctx.host(Backend::Sqlite, "normal", &[]).await?,
    )];
    if ctx.redis.is_some() {
        hosts.push((
            "host redis (AOF everysec)",
            ctx.host(Backend::Redis, "normal", &[]).await?,
        ));
    }
    let admins: Vec<&str> = hosts.iter().map(|(_, h)| h.admin.as_str()).collect();
    let mut results: Vec<PacedRun> = Vec::new();
    for round in 1..=ctx.args.rounds {
        for (name, host) in &hosts {
            ctx.drain(&admins).await?;
            // The host's CPU (and its redis-server's) from the first order
            // to the drained log, watchers' reads included.
            let redis_pid = ctx
                .redis
                .as_ref()
                .filter(|_| name.contains("redis"))
                .map(Redis::pid);
            let cpu = |pid: u32| {
                procs::cpu_seconds(pid).unwrap_or(f64::NAN)
                    + redis_pid.and_then(procs::cpu_seconds).unwrap_or(0.0)
            };
            let cpu_before = cpu(host.pid());
            let ages_before = api::age_buckets(&api::metrics(&ctx.client, &host.admin).await?);
            let rss = RssSampler::start(host.pid(), Duration::from_millis(200));
            let p = paced::run(
                &ctx.client,
                &host.url,
                &host.admin,
                ctx.args.rate,
                ctx.args.seconds,
                ITEMS,
                ctx.args.poll_slots,
            )
            .await;
            let rss_max = rss.stop().iter().map(|s| s.1).max().unwrap_or(0);
            let p = p?;
            let drained = api::wait_drained(&ctx.client, &host.admin, DRAIN_LIMIT).await?;
            let cpu_us = (cpu(host.pid()) - cpu_before) * 1e6 / p.accepted.max(1) as f64;
            // The host's own view of each hop: p50 / p99 of the event ages
            // at acknowledgement during this run (bucket upper bounds, ms).
            let ages_after = api::age_buckets(&api::metrics(&ctx.client, &host.admin).await?);
            let ages: std::collections::BTreeMap<String, (f64, f64)> = ages_after
                .iter()
                .filter_map(|(sub, after)| {
                    let before = ages_before.get(sub).map_or(&[][..], Vec::as_slice);
                    let q = |q| api::bucket_quantile(before, after, q).map(|s| s * 1000.0);
                    Some((sub.clone(), (q(0.5)?, q(0.99)?)))
                })
                .collect();
            eprintln!(
                "  paced {:.0}/s {name:<26} round {round}: accepted {}  ORDERED p50 {:.1} p99 {:.1} max {:.1} ms  mypage p50 {:.1} p99 {:.1} max {:.1} ms  polls {:.0}/s  CPU {cpu_us:.0} µs/order",
                ctx.args.rate,
                p.accepted,
                p.ordered_ms.p50,
                p.ordered_ms.p99,
                p.ordered_ms.max,
                p.mypage_ms.p50,
                p.mypage_ms.p99,
                p.mypage_ms.max,
                p.poll_reads_per_s
            );
            results.push(PacedRun {
                system: (*name).into(),
                round,
                paced: p,
                rss_max,
                drained_s: drained.as_secs_f64(),
                cpu_us,
                ages,
            });
        }
    }
    for (name, _) in &hosts {
        let mine: Vec<&PacedRun> = results.iter().filter(|r| r.system == *name).collect();
        let med = |f: &dyn Fn(&paced::Paced) -> f64| median(mine.iter().map(|r| f(&r.paced)));
        let what = format!("POST /orders paced {:.0}/s", ctx.args.rate);
        s.rows.push(Row {
            what: what.clone(),
            system: (*name).into(),
            ok_per_s: med(&|p| p.accepted as f64 / p.seconds),
            p50_ms: med(&|p| p.post_ms.p50),
            p99_ms: med(&|p| p.post_ms.p99),
            non_2xx: mine.iter().map(|r| r.paced.refused_or_failed).sum(),
            socket_errors: 0,
            rss_max_mib: mine.iter().map(|r| r.rss_max).max().unwrap_or(0) as f64 / 1024.0,
            cpu_us_per_ok: median(mine.iter().map(|r| r.cpu_us)),
            rounds: mine.len(),
        });
        let fmt = |f: &dyn Fn(&paced::Paced) -> stats::Percentiles| {
            let p50 = median(mine.iter().map(|r| f(&r.paced).p50));
            let p99 = median(mine.iter().map(|r| f(&r.paced).p99));
            let max = mine
                .iter()
                .map(|r| f(&r.paced).max)
                .fold(f64::NAN, f64::max);
            (
                p99,
                format!("p50 {p50:.1} / p99 {p99:.1} / max {max:.1} ms"),
            )
        };
        let never: u64 = mine.iter().map(|r| r.paced.never_ordered).sum();
        let (p99, text) = fmt(&|p| p.ordered_ms);
        s.checks.push(Check::new(
            format!("{name}: placed → ORDERED (GET /orders/{{id}})"),
            format!("{text}; {never} never"),
            "p99 ≤ 10 ms",
            p99 <= 10.0 && never == 0,
        ));
        let never: u64 = mine.iter().map(|r| r.paced.never_on_mypage).sum();
        let (p99, text) = fmt(&|p| p.mypage_ms);
        s.checks.push(Check::new(
            format!("{name}: placed → mypage ORDERED (GET /myPages/{{id}})"),
            format!("{text}; {never} never"),
            "p99 ≤ 20 ms",
            p99 <= 20.0 && never == 0,
        ));
        // Bounded: the lag of the second half of the run stays within twice
        // the first half's (plus a little slack for sampling), i.e. it does
        // not grow with time.
        let mut bounded = true;
        let mut texts = Vec::new();
        for r in &mine {
            let half = r.paced.seconds / 2.0;
            let first = r
                .paced
                .lag_samples
                .iter()
                .filter(|s| s.0 < half)
                .map(|s| s.1)
                .max()
                .unwrap_or(0);
            let second = r
                .paced
                .lag_samples
                .iter()
                .filter(|s| s.0 >= half)
                .map(|s| s.1)
                .max()
                .unwrap_or(0);
            bounded &= second <= 2 * first + 100;
            texts.push(format!(
                "max lag 1st half {first}, 2nd half {second}, drained {:.2} s after",
                r.drained_s
            ));
        }
        s.checks.push(Check::new(
            format!("{name}: event lag during paced load"),
            texts.join("; "),
            "bounded (2nd-half max ≤ 2 × 1st-half max + 100)",
            bounded,
        ));
        let mut failures: std::collections::BTreeMap<&str, u64> = Default::default();
        for r in &mine {
            for (k, v) in &r.paced.failures {
                *failures.entry(k.as_str()).or_default() += v;
            }
        }
        if !failures.is_empty() {
            s.notes
                .push(format!("{name}: paced POSTs not accepted: {failures:?}"));
        }
        let ages: Vec<String> = mine
            .iter()
            .map(|r| {
                let each: Vec<String> = r
                    .ages
                    .iter()
                    .map(|(sub, (p50, p99))| format!("{sub} ≤ {p50:.1} / ≤ {p99:.1}"))
                    .collect();
                format!("round {}: {}", r.round, each.join(", "))
            })
            .collect();
        s.notes.push(format!(
            "{name}: the host's event ages at acknowledgement during the paced runs \
             (`sktarbucks_event_age_seconds`, from an event's append to its subscriber's \
             acknowledgement; p50 / p99 as histogram bucket bounds, ms): {}",
            ages.join("; ")
        ));
        let polls = median(mine.iter().map(|r| r.paced.poll_reads_per_s));
        s.notes.push(format!(
            "{name}: the watching client added about {polls:.0} GET/s of read load (each order in \
             flight polled on /orders/{{id}} and /myPages/{{id}} every ~1 ms, at most {} polls in \
             flight at once; latencies are from the POST's answer to the first poll that saw \
             ORDERED, so they include up to one poll round trip); its CPU µs/ok is the host's \
             (with its redis-server's) from the first order until the log drained, per accepted \
             order, those reads included",
            ctx.args.poll_slots
        ));
    }
    s.runs = results
        .iter()
        .map(|r| {
            serde_json::json!({"system": r.system, "round": r.round, "paced": to_json(&r.paced), "rss_max_kib": r.rss_max, "drained_after_s": r.drained_s, "cpu_us_per_order": r.cpu_us, "event_age_ms_p50_p99": r.ages})
        })
        .collect();
    Ok(s)
}

/// Compile every component into the bench's shared compile cache with a
/// host that is stopped at once, so a scenario run alone measures neither
/// the compile time nor the compiler's memory.
fn warm_compile_cache(ctx: &Ctx, scenario: &str) -> Result<()> {
    ctx.host_in(
        &ctx.dir(&format!("{scenario}-compile")),
        Backend::Sqlite,
        "normal",
        &ALL,
    )?
    .terminate()
}

/// Build a backlog (production and mypage absent while orders are placed),
/// then time its drain once they are started, per subscriber.
async fn backlog(ctx: &Ctx) -> Result<Scenario> {
    let mut s = Scenario {
        name: "backlog".into(),
        ..Scenario::default()
    };
    let mut backends = vec![(Backend::Sqlite, "host sqlite")];
    if ctx.redis.is_some() {
        backends.push((Backend::Redis, "host redis (AOF everysec)"));
    }
    // Run alone (`--only backlog`), the restarted host would otherwise
    // compile production and mypage inside the timed drain (~0.35 s here).
    warm_compile_cache(ctx, "backlog")?;
    for (backend, name) in backends {
        let dir = ctx.dir(&format!(
            "backlog-{}",
            if backend == Backend::Sqlite {
                "sqlite"
            } else {
                "redis"
            }
        ));
        let first = ctx.host_in(&dir, backend, "normal", &["cafe", "order"])?;
        api::seed(&ctx.client, &first.url, 1..=ITEMS, STOCK).await?;
        let placed = api::place_orders(&ctx.client, &first.url, ctx.args.backlog, ITEMS, 32).await;
        api::wait_drained(&ctx.client, &first.admin, DRAIN_LIMIT).await?;
        first.terminate()?;
        eprintln!(
            "  {name}: {placed} orders placed without production and mypage; restarting with them"
        );

        let host = ctx.host_in(&dir, backend, "normal", &ALL)?;
        let listening = host.spawned.elapsed().as_secs_f64();
        let redis_pid = match backend {
            Backend::Redis => ctx.redis.as_ref().map(procs::Redis::pid),
            Backend::Sqlite => None,
        };
        let cpu = || {
            (
                procs::cpu_seconds(host.pid()),
                redis_pid.and_then(procs::cpu_seconds),
            )
        };
        let cpu_at_start = cpu();
        let rss = RssSampler::start(host.pid(), Duration::from_millis(200));
        // Per subscriber: when its lag was last seen above 0, and the first
        // sample after that with 0.
        let mut last_busy: std::collections::BTreeMap<String, f64> = Default::default();
        let mut zero_at: std::collections::BTreeMap<String, f64> = Default::default();
        let mut peak: std::collections::BTreeMap<String, u64> = Default::default();
        let deadline = std::time::Instant::now() + DRAIN_LIMIT;
        let handled = loop {
            let m = api::metrics(&ctx.client, &host.admin).await?;
            let t = host.spawned.elapsed().as_secs_f64();
            let lags = api::lags(&m);
            for (sub, lag) in &lags {
                let p = peak.entry(sub.clone()).or_default();
                *p = (*p).max(*lag);
                if *lag > 0 {
                    last_busy.insert(sub.clone(), t);
                    zero_at.remove(sub);
                } else if last_busy.contains_key(sub) {
                    zero_at.entry(sub.clone()).or_insert(t);
                }
            }
            let ok = api::deliveries(&m, "ok");
            let production = ok.get("production").copied().unwrap_or(0);
            if lags.values().all(|l| *l == 0) && production >= placed {
                break ok;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{name}: backlog not drained within {DRAIN_LIMIT:?}: lags {lags:?}, delivered {ok:?}"
                );
            }
            if lags.values().all(|l| *l == 0) && host.spawned.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{name}: every lag is 0 but production handled {production} of {placed} \
                     order.requested events: new subscribers did not read the log from the beginning"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let cpu_at_end = cpu();
        let rss_max = rss.stop().iter().map(|s| s.1).max().unwrap_or(0);
        // CPU per delivered event over the drain, beside its rate: the
        // rate moves with whatever else this machine runs, CPU much less.
        let delivered: u64 = handled.values().sum();
        let per_event = |start: Option<f64>, end: Option<f64>| match (start, end) {
            (Some(a), Some(b)) if delivered > 0 => Some((b - a) * 1e6 / delivered as f64),
            _ => None,
        };
        let host_us = per_event(cpu_at_start.0, cpu_at_end.0);
        let redis_us = per_event(cpu_at_start.1, cpu_at_end.1);
        let mut measured = format!(
            "{delivered} deliveries: host {} µs",
            host_us.map_or("?".into(), |u| format!("{u:.0}"))
        );
        if let Some(r) = redis_us {
            measured.push_str(&format!(", redis-server {r:.0} µs"));
        }
        s.checks.push(Check::info(
            format!("{name}: backlog drain, CPU per delivered event"),
            measured,
        ));
        s.notes.push(format!(
            "{name}: {placed} orders placed while production and mypage were absent; \
             on restart with them, production handled {} order.requested events (new \
             subscribers read the log from the beginning). Host listening {listening:.2} s \
             after spawn; drain times count from spawn (start-up included). Max RSS {} MiB.",
            handled.get("production").copied().unwrap_or(0),
            rss_max / 1024
        ));
        let mut runs = Vec::new();
        for (sub, at) in &zero_at {
            let events = handled.get(sub).copied().unwrap_or(0);
            let rate = events as f64 / at;
            s.checks.push(Check::new(
                format!("{name}: backlog drain, subscriber {sub}"),
                format!(
                    "{events} events in {at:.2} s = {rate:.0} events/s (peak lag {})",
                    peak.get(sub).copied().unwrap_or(0)
                ),
                "≥ 5000 events/s",
                rate >= 5000.0,
            ));
            runs.push(serde_json::json!({
                "system": name, "subscriber": sub, "events": events, "drained_s": at,
                "events_per_s": rate, "peak_lag": peak.get(sub),
            }));
        }
        s.runs.push(serde_json::json!({
            "system": name, "placed": placed, "listening_s": listening,
            "rss_max_kib": rss_max, "subscribers": runs, "delivered": delivered,
            "host_cpu_us_per_event": host_us, "redis_cpu_us_per_event": redis_us,
        }));
    }
    Ok(s)
}

/// 60 s (or --seconds, if longer) of spread orders; RSS growth of the host.
async fn soak(ctx: &Ctx) -> Result<Scenario> {
    let mut s = Scenario {
        name: "soak".into(),
        ..Scenario::default()
    };
    let seconds = ctx.args.seconds.max(60);
    let what = format!("POST /orders, 100 items, {seconds} s soak");
    // Run alone (`--only soak`), the host would compile the components as
    // it starts, and the compiler's memory (RSS 158 MiB at the run's start,
    // 96 MiB at most with the cache filled) would be read as the load's.
    warm_compile_cache(ctx, "soak")?;
    let host = ctx.host(Backend::Sqlite, "normal", &[]).await?;
    let t = host_target("host sqlite", &host);
    let run = ctx
        .wrk(
            &what,
            &t,
            Load::OrdersSpread { items: ITEMS },
            1,
            seconds,
            &[host.admin.as_str()],
        )
        .await?;
    let avg = |from: f64, to: f64| {
        let v: Vec<f64> = run
            .rss_samples
            .iter()
            .filter(|s| s.0 >= from && s.0 < to)
            .map(|s| s.1 as f64 / 1024.0)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let end = run.rss_samples.last().map_or(0.0, |s| s.0);
    let (first, last) = (avg(0.0, 10.0), avg(end - 10.0, end + 1.0));
    let max = run.rss_max_kib as f64 / 1024.0;
    // "No growth", with room for the allocator's and the page cache's
    // breathing: the last 10 s average at most 10 % above the first's.
    s.checks.push(Check::new(
        format!("host sqlite RSS over {seconds} s of orders: first 10 s vs last 10 s"),
        format!(
            "{first:.0} MiB → {last:.0} MiB ({:+.0} MiB, {:+.0} %), max {max:.0} MiB",
            last - first,
            (last / first - 1.0) * 100.0,
        ),
        "last ≤ first + 10 %",
        first > 0.0 && last <= first * 1.10,
    ));
    // Its maximum is held to MAX_RSS_MIB with every other host run's, by
    // the `memory` check (`max_rss_check`).
    s.rows
        .push(row(&what, "host sqlite", std::slice::from_ref(&run)));
    s.runs.push(to_json(&run));
    Ok(s)
}

/// The memory ceiling for a host under load.
const MAX_RSS_MIB: f64 = 150.0;

/// The largest RSS any host reached in any load run of this invocation,
/// against [`MAX_RSS_MIB`] (the bare server is not held to it).
fn max_rss_check(done: &[Scenario]) -> Option<Check> {
    let (max, what, system) = done
        .iter()
        .flat_map(|s| &s.rows)
        .filter(|r| r.system.starts_with("host"))
        .map(|r| (r.rss_max_mib, &r.what, &r.system))
        .max_by(|a, b| a.0.total_cmp(&b.0))?;
    Some(Check::new(
        "max RSS of a host in any load run",
        format!("{max:.0} MiB ({what}, {system})"),
        &format!("≤ {MAX_RSS_MIB:.0} MiB"),
        max <= MAX_RSS_MIB,
    ))
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    for o in &args.only {
        if !SCENARIOS.contains(&o.as_str()) {
            bail!("unknown scenario {o:?}; known: {}", SCENARIOS.join(", "));
        }
    }
    if args.rounds == 0 || args.seconds == 0 || args.clients == 0 || args.rate <= 0.0 {
        bail!("--rounds, --seconds, --clients and --rate must be positive");
    }
    if !which("wrk") {
        bail!(
            "wrk is not installed: `apt-get install wrk` (cargo xtask bench does it when it can)"
        );
    }
    let wanted = |name: &str| {
        if args.only.is_empty() {
            name != "soak" || args.soak_rss || args.seconds >= 60
        } else {
            args.only.iter().any(|o| o == name)
        }
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("the host crate has a parent directory")?;
    // The host and bare from the bench's own profile (target/<profile>/
    // examples/bench): both built alike, as `cargo xtask bench` builds them.
    let examples = std::env::current_exe()
        .context("failed to find the bench's own path")?
        .parent()
        .map(Path::to_path_buf)
        .context("the bench binary has a directory")?;
    let profile_dir = examples
        .parent()
        .map(Path::to_path_buf)
        .context("the examples directory has a parent")?;
    let bin = args
        .host_bin
        .clone()
        .unwrap_or_else(|| profile_dir.join("sktarbucks"));
    let bare_bin = examples.join("bare");
    for b in [&bin, &bare_bin] {
        if !b.is_file() {
            bail!(
                "{} is missing: run `cargo xtask build-dist` (or `cargo build --profile dist -p sktarbucks --bins --examples`)",
                b.display()
            );
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("sktarbucks-bench-")
        .tempdir()
        .context("failed to create a temp directory")?;
    let redis = if args.no_redis {
        None
    } else {
        Some(Redis::start(&tmp.path().join("redis"))?)
    };
    let machine = report::Machine::probe(&root);
    let (_, stamp) = report::utc_now();
    let ctx = Ctx {
        args: args.clone(),
        root: root.clone(),
        bin,
        bare_bin,
        tmp: tmp.path().to_path_buf(),
        cache: tmp.path().join("compile-cache"),
        redis,
        client: reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(256)
            .build()
            .context("http client")?,
        counter: AtomicUsize::new(0),
    };
    println!(
        "sktarbucks bench: {} s runs, {} wrk clients (-t1), {} rounds, alternating systems; 127.0.0.1; {}",
        args.seconds,
        args.clients,
        args.rounds,
        machine.one_line()
    );
    if let Some(r) = &ctx.redis {
        println!(
            "redis-server pid {} on port {} (appendonly yes, appendfsync everysec, no RDB)",
            r.pid(),
            r.port
        );
    }
    let settings = to_json(&args);
    let out_dir = root.join("target/bench");
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for name in SCENARIOS {
        if !wanted(name) {
            continue;
        }
        eprintln!("== {name}");
        let result = match name {
            "get" => get(&ctx).await,
            "orders" => orders(&ctx).await,
            "hot" => hot(&ctx).await,
            "pipeline" => pipeline(&ctx).await,
            "backlog" => backlog(&ctx).await,
            _ => soak(&ctx).await,
        };
        match result {
            Ok(s) => {
                let path = report::write_json(&out_dir, &stamp, &machine, &settings, &s)?;
                eprintln!("   wrote {}", path.display());
                done.push(s);
            }
            Err(e) => {
                eprintln!("   scenario {name} failed: {e:#}");
                failed.push(format!("{name}: {e:#}"));
            }
        }
    }
    println!(
        "\ncommand: cargo xtask bench {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    println!("machine: {}\n", machine.one_line());
    if let Some(check) = max_rss_check(&done) {
        done.push(Scenario {
            name: "memory".into(),
            checks: vec![check],
            ..Scenario::default()
        });
    }
    println!("{}", report::rows_table(&done));
    println!("{}", report::checks_table(&done));
    for s in &done {
        for n in &s.notes {
            println!("- {n}");
        }
    }
    println!("\nJSON: {}/{stamp}-<scenario>.json", out_dir.display());
    drop(ctx);
    if args.keep {
        println!("kept {}", tmp.keep().display());
    }
    if !failed.is_empty() {
        bail!("scenarios failed:\n{}", failed.join("\n"));
    }
    Ok(())
}
