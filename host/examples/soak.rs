//! `cargo xtask soak [minutes]` (or `cargo run --release -p sktarbucks
//! --example soak -- [minutes] [--hosts N] [--clients N]`): a soak test of
//! the real binary under chaos, not run by CI.
//!
//! It spawns its own `redis-server` (temp dir, unix socket, `appendonly yes`,
//! `appendfsync always`: a restart keeps every acknowledged write) and N
//! `target/release/sktarbucks serve` processes on it, registers 20 menu items
//! with 100 000 units each, and drives mixed load (orders, cancels, reads)
//! from concurrent clients while a chaos loop SIGKILLs and replaces hosts,
//! SIGTERMs and restarts hosts, and SIGKILLs and restarts Redis. Then it
//! stops, brings everything back up, waits until every order is settled,
//! and checks that every acknowledged order and cancel is there, once, with
//! exact stock. The report is printed and written to
//! `target/soak/<unix-time>.json`; the exit code is non-zero when anything
//! was lost or duplicated, an event was dead-lettered, a chaos step failed,
//! or the orders did not settle (the backlog stopped shrinking for 120 s).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use sktarbucks::config::{ComponentConfig, Config};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Menu items registered before the load (ids 1..=ITEMS).
const ITEMS: u64 = 20;
/// Units each item starts with; `pcnt + held` must stay exactly this.
const STOCK: u64 = 100_000;
/// Distinct customer names the clients order under.
const CUSTOMERS: u32 = 64;
/// How long the final settle may go without the event backlog shrinking
/// (a backlog that drains slowly is reported, not failed: see the time).
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
/// How long the final settle may take at most, even while draining.
const SETTLE_CAP: Duration = Duration::from_secs(20 * 60);
/// How long a host may take to print its listening line.
const START_LIMIT: Duration = Duration::from_secs(120);
/// How long a SIGTERMed host may take to drain and exit.
const TERM_LIMIT: Duration = Duration::from_secs(30);
/// How long a (re)started redis-server may take to answer PING (AOF replay).
const REDIS_READY_LIMIT: Duration = Duration::from_secs(60);
/// Client-side limit of one request of the load.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Stderr lines kept per host (ring buffer).
const STDERR_LINES: usize = 200;
/// Stderr lines of a host shown in a failure report.
const TAIL_LINES: usize = 40;
/// Stopped hosts whose stderr tail is kept for the report.
const RETIRED_KEPT: usize = 4;
/// A cancel that got no answer (transport error, 5xx) is retried this often.
const CANCEL_TRIES: u32 = 5;
/// Examples of lost orders and cancels kept in the report.
const EXAMPLES: usize = 20;
/// The components, with the route each one serves.
const COMPONENTS: [(&str, &str); 4] = [
    ("cafe", "/cafes"),
    ("order", "/orders"),
    ("production", "/productions"),
    ("mypage", "/myPages"),
];

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "soak",
    about = "Soak the real sktarbucks binary on Redis under chaos; exit 1 if anything was lost or duplicated"
)]
struct Args {
    /// Minutes of load and chaos (fractions allowed).
    #[arg(default_value_t = 2.0)]
    minutes: f64,
    /// Host processes sharing the one Redis.
    #[arg(long, default_value_t = 2)]
    hosts: usize,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 16)]
    clients: usize,
}

// ---------------------------------------------------------------- paths --

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The release binary the hosts run.
fn binary_path() -> PathBuf {
    root().join("target/release/sktarbucks")
}

/// A component built by `cargo xtask build`.
fn wasm_path(name: &str) -> PathBuf {
    root().join(format!(
        "components/target/wasm32-wasip2/release/{name}.wasm"
    ))
}

/// Fail early, with the command that fixes it, when a build output is missing.
fn preflight() -> Result<()> {
    let bin = binary_path();
    anyhow::ensure!(
        bin.is_file(),
        "{} is missing: run `cargo build --release -p sktarbucks` (or `cargo xtask soak`)",
        bin.display()
    );
    for (name, _) in COMPONENTS {
        let wasm = wasm_path(name);
        anyhow::ensure!(
            wasm.is_file(),
            "{} is missing: run `cargo xtask build`",
            wasm.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- small --

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The UTC time of day, `HH:MM:SSZ`.
fn clock() -> String {
    let s = unix_now();
    format!("{:02}:{:02}:{:02}Z", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// Lock a mutex, ignoring poisoning (a panicked client must not hide the report).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-lock, ignoring poisoning.
fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-lock, ignoring poisoning.
fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Append `line` to a bounded ring buffer.
fn push_line(ring: &Mutex<VecDeque<String>>, line: String) {
    let mut ring = lock(ring);
    if ring.len() >= STDERR_LINES {
        ring.pop_front();
    }
    ring.push_back(line);
}

/// The last `n` lines of a ring buffer.
fn ring_tail(ring: &Mutex<VecDeque<String>>, n: usize) -> Vec<String> {
    let ring = lock(ring);
    ring.iter()
        .skip(ring.len().saturating_sub(n))
        .cloned()
        .collect()
}

/// The customer name of number `n`.
fn customer(n: u32) -> String {
    format!("soak-c{n}")
}

// ------------------------------------------------------------- manifest --

/// Where hosts find Redis, their manifest settings, and the binary.
struct HostSpec {
    bin: PathBuf,
    redis_url: String,
    prefix: String,
    compile_cache: PathBuf,
}

/// The manifest of one host: the four components (absolute paths), order
/// linked to cafe's `stock`, this run's Redis prefix, 5 event attempts.
fn manifest(data: &Path, spec: &HostSpec) -> Result<String> {
    let mut config = Config::parse("", data)?;
    config.listen = "127.0.0.1:0".parse()?;
    config.data = data.to_path_buf();
    config.redis_prefix = spec.prefix.clone();
    config.compile_cache = Some(spec.compile_cache.clone());
    config.events.max_attempts = 5;
    for (name, route) in COMPONENTS {
        let mut c = ComponentConfig::new(wasm_path(name));
        c.routes = vec![route.to_owned()];
        if name == "order" {
            c.links.insert("stock".into(), "cafe".into());
        }
        config.components.insert(name.to_owned(), c);
    }
    config.check().context("the soak manifest is invalid")?;
    config.to_toml()
}

// ----------------------------------------------------------------- host --

/// One `sktarbucks serve` child process.
struct Host {
    name: String,
    dir: PathBuf,
    url: String,
    child: Child,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Host {
    /// Write the manifest into `dir`, start the binary on port 0 against
    /// Redis and wait for its `sktarbucks listening on URL` line.
    async fn start(spec: &HostSpec, name: &str, dir: &Path) -> Result<Host> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let manifest_path = dir.join("sktarbucks.toml");
        std::fs::write(&manifest_path, manifest(dir, spec)?)
            .with_context(|| format!("cannot write {}", manifest_path.display()))?;
        let mut child = Command::new(&spec.bin)
            .current_dir(dir)
            .arg("--config")
            .arg(&manifest_path)
            .arg("serve")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--redis",
                spec.redis_url.as_str(),
            ])
            .env("RUST_LOG", "info,wasmtime=warn")
            .env_remove("SKTARBUCKS_ADMIN")
            .env_remove("SKTARBUCKS_ADMIN_TOKEN")
            .env_remove("SKTARBUCKS_DATA")
            .env_remove("SKTARBUCKS_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", spec.bin.display()))?;
        let stderr: Arc<Mutex<VecDeque<String>>> =
            Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_LINES)));
        let err_pipe = child.stderr.take().context("stderr is piped")?;
        let ring = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut lines = BufReader::new(err_pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                push_line(&ring, line);
            }
        });
        let out_pipe = child.stdout.take().context("stdout is piped")?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(out_pipe).lines();
            // Keep draining after the line, so the pipe never fills.
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("sktarbucks listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let started = Instant::now();
        let url = loop {
            match tokio::time::timeout(Duration::from_millis(200), &mut rx).await {
                Ok(Ok(url)) => break url,
                Ok(Err(_)) => {
                    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    bail!(
                        "{name} closed its stdout before listening ({status:?}):\n{}",
                        ring_tail(&stderr, TAIL_LINES).join("\n")
                    );
                }
                Err(_) => {}
            }
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("cannot poll {name}"))?
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bail!(
                    "{name} exited with {status} before listening:\n{}",
                    ring_tail(&stderr, TAIL_LINES).join("\n")
                );
            }
            if started.elapsed() > START_LIMIT {
                bail!(
                    "{name} did not listen within {START_LIMIT:?}:\n{}",
                    ring_tail(&stderr, TAIL_LINES).join("\n")
                );
            }
        };
        Ok(Host {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            url,
            child,
            stderr,
        })
    }

    /// Whether the process is still running.
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL and reap: a crash.
    async fn sigkill(&mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("SIGKILL of {} failed", self.name))
    }

    /// SIGTERM, then wait for the drain; SIGKILL after [`TERM_LIMIT`].
    /// Returns whether it exited cleanly, and how.
    async fn sigterm(&mut self) -> Result<(bool, String)> {
        let pid = self
            .child
            .id()
            .with_context(|| format!("{} had already exited", self.name))?;
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .context("cannot run kill -TERM")?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed: {sent}");
        match tokio::time::timeout(TERM_LIMIT, self.child.wait()).await {
            Ok(Ok(status)) => Ok((status.success(), format!("{status}"))),
            Ok(Err(e)) => Err(anyhow!(e).context(format!("waiting for {} failed", self.name))),
            Err(_) => {
                let _ = self.child.kill().await;
                Ok((false, format!("no exit within {TERM_LIMIT:?}; SIGKILLed")))
            }
        }
    }

    /// The last `n` lines it wrote to stderr.
    fn log_tail(&self, n: usize) -> Vec<String> {
        ring_tail(&self.stderr, n)
    }
}

// ---------------------------------------------------------------- redis --

/// Our own `redis-server`: unix socket in `dir`, AOF with fsync always.
struct RedisServer {
    dir: PathBuf,
    url: String,
    child: Option<Child>,
}

impl RedisServer {
    /// A server that will live in `dir` (not started yet).
    fn new(dir: PathBuf) -> Result<RedisServer> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let url = format!("redis+unix://{}", dir.join("redis.sock").display());
        Ok(RedisServer {
            dir,
            url,
            child: None,
        })
    }

    /// Start it (again) on the same socket and data, and wait for PING.
    async fn launch(&mut self) -> Result<()> {
        let socket = self.dir.join("redis.sock");
        // A SIGKILLed server leaves its socket file behind.
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start redis-server (install it: apt-get install redis-server)")?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if ping(&self.url).await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "redis-server exited with {status}:\n{}",
                    self.log_tail(20).join("\n")
                );
            }
            if started.elapsed() > REDIS_READY_LIMIT {
                bail!(
                    "redis-server did not answer PING within {REDIS_READY_LIMIT:?}:\n{}",
                    self.log_tail(20).join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL and reap.
    async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .context("SIGKILL of redis-server failed")?;
        }
        Ok(())
    }

    /// Running and answering PING.
    async fn alive(&mut self) -> bool {
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        running && ping(&self.url).await.is_ok()
    }

    /// The last `n` lines of its log file.
    fn log_tail(&self, n: usize) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| (*l).to_owned())
            .collect()
    }
}

/// A fresh connection to `url` (an old one does not survive a restart).
async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("invalid redis url {url}"))?;
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("redis connect timed out")?
    .context("redis connect failed")
}

/// PING, bounded.
async fn ping(url: &str) -> Result<()> {
    let mut conn = redis_conn(url).await?;
    let reply: redis::RedisResult<String> = tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("PING").query_async(&mut conn),
    )
    .await
    .context("PING timed out")?;
    let pong = reply.context("PING failed")?;
    anyhow::ensure!(pong == "PONG", "PING answered {pong:?}");
    Ok(())
}

// -------------------------------------------------------------- cluster --

/// Redis, the running hosts, and the live URL set the clients pick from.
struct Cluster {
    spec: HostSpec,
    dir: PathBuf,
    redis: RedisServer,
    hosts: Vec<Host>,
    next_host: usize,
    /// (host and how it stopped, stderr tail) of the last stopped hosts.
    retired: VecDeque<(String, Vec<String>)>,
    live: Arc<RwLock<Vec<String>>>,
}

impl Cluster {
    /// Start one more host under a new name (new data dir, new port).
    async fn add_host(&mut self) -> Result<String> {
        self.next_host += 1;
        let name = format!("host-{}", self.next_host);
        let dir = self.dir.join(&name);
        let started = Instant::now();
        let host = Host::start(&self.spec, &name, &dir).await?;
        let note = format!(
            "{name} up on {} in {:.1} s",
            host.url,
            started.elapsed().as_secs_f64()
        );
        self.hosts.push(host);
        self.publish_live();
        Ok(note)
    }

    /// Tell the clients which hosts are up.
    fn publish_live(&self) {
        let urls: Vec<String> = self.hosts.iter().map(|h| h.url.clone()).collect();
        *write_lock(&self.live) = urls;
    }

    /// Keep a stopped host's stderr tail for the report.
    fn retire(&mut self, host: &Host, how: &str) {
        self.retired
            .push_back((format!("{} ({how})", host.name), host.log_tail(TAIL_LINES)));
        while self.retired.len() > RETIRED_KEPT {
            self.retired.pop_front();
        }
    }

    /// Index of a random running host.
    fn random_host(&self) -> Result<usize> {
        anyhow::ensure!(!self.hosts.is_empty(), "no host is running");
        Ok(rand::random_range(0..self.hosts.len()))
    }

    /// Chaos: SIGKILL a random host (a crash), then start a new one.
    async fn kill_and_replace(&mut self) -> Result<String> {
        let i = self.random_host()?;
        let mut host = self.hosts.remove(i);
        let killed = host.sigkill().await;
        self.publish_live();
        self.retire(&host, "SIGKILLed");
        let what = format!("SIGKILL {} ({})", host.name, host.url);
        drop(host);
        killed?;
        let started = self.add_host().await?;
        Ok(format!("{what}; {started}"))
    }

    /// Chaos: take a random host out of the live set, SIGTERM it (drain),
    /// and restart it on its data dir (new port).
    async fn term_and_restart(&mut self) -> Result<String> {
        let i = self.random_host()?;
        let mut host = self.hosts.remove(i);
        self.publish_live();
        let exit = host.sigterm().await;
        self.retire(&host, "SIGTERMed");
        let (name, dir, old_url) = (host.name.clone(), host.dir.clone(), host.url.clone());
        drop(host);
        let started = Instant::now();
        let new = Host::start(&self.spec, &name, &dir).await?;
        let note = format!(
            "SIGTERM {name} ({old_url}), {}; restarted on {} in {:.1} s",
            match &exit {
                Ok((_, how)) => how.clone(),
                Err(e) => format!("{e:#}"),
            },
            new.url,
            started.elapsed().as_secs_f64()
        );
        self.hosts.push(new);
        self.publish_live();
        match exit {
            Ok((true, _)) => Ok(note),
            Ok((false, _)) => bail!("did not stop cleanly: {note}"),
            Err(e) => Err(e.context(note)),
        }
    }

    /// Chaos: SIGKILL redis-server, leave it down 1–3 s, restart it on the
    /// same dir and socket.
    async fn restart_redis(&mut self) -> Result<String> {
        self.redis.kill().await?;
        let down = Duration::from_millis(rand::random_range(1000..=3000));
        tokio::time::sleep(down).await;
        let started = Instant::now();
        self.redis.launch().await?;
        Ok(format!(
            "SIGKILL redis-server, down {:.1} s, answering again {:.1} s after restart",
            down.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ))
    }

    /// Make sure Redis answers and `want` hosts run; returns what it fixed.
    async fn ensure_up(&mut self, want: usize) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        if !self.redis.alive().await {
            let _ = self.redis.kill().await;
            self.redis
                .launch()
                .await
                .context("cannot restart redis-server")?;
            notes.push("redis-server was down: restarted".to_owned());
        }
        let mut i = 0;
        while i < self.hosts.len() {
            if self.hosts[i].alive() {
                i += 1;
                continue;
            }
            let host = self.hosts.remove(i);
            self.retire(&host, "found dead");
            notes.push(format!("{} had exited", host.name));
        }
        while self.hosts.len() < want {
            notes.push(self.add_host().await?);
        }
        self.publish_live();
        Ok(notes)
    }

    /// Print the stderr tails of every running and recently stopped host,
    /// and of Redis (for a failed run).
    fn print_tails(&self) {
        for host in &self.hosts {
            eprintln!("--- {} (running) stderr ---", host.name);
            for line in host.log_tail(TAIL_LINES) {
                eprintln!("{line}");
            }
        }
        for (name, lines) in &self.retired {
            eprintln!("--- {name} stderr ---");
            for line in lines {
                eprintln!("{line}");
            }
        }
        eprintln!("--- redis-server log ---");
        for line in self.redis.log_tail(20) {
            eprintln!("{line}");
        }
    }

    /// Stop everything (SIGKILL: the data dir is thrown away).
    async fn shutdown(&mut self) {
        write_lock(&self.live).clear();
        for host in &mut self.hosts {
            let _ = host.child.kill().await;
        }
        self.hosts.clear();
        let _ = self.redis.kill().await;
    }
}

// ---------------------------------------------------------------- chaos --

/// One chaos action, as printed and reported.
#[derive(Debug, Clone, Serialize)]
struct ChaosEvent {
    at_s: f64,
    clock: String,
    kind: &'static str,
    ok: bool,
    detail: String,
}

/// Print and record one chaos action.
fn log_chaos(
    events: &mut Vec<ChaosEvent>,
    t0: Instant,
    kind: &'static str,
    result: Result<String>,
) {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(e) => (false, format!("{e:#}")),
    };
    let at_s = t0.elapsed().as_secs_f64();
    let clock = clock();
    println!(
        "[+{at_s:7.1}s {clock}] chaos {kind}: {}{detail}",
        if ok { "" } else { "FAILED: " }
    );
    events.push(ChaosEvent {
        at_s,
        clock,
        kind,
        ok,
        detail,
    });
}

/// Every 8–20 s one action: SIGKILL + replace a host, SIGTERM + restart a
/// host, or SIGKILL + restart Redis; a failed step is repaired before the
/// next one. Returns the cluster when `stop` turns true.
async fn chaos_loop(
    mut cluster: Cluster,
    want: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
    t0: Instant,
) -> (Cluster, Vec<ChaosEvent>) {
    let mut events = Vec::new();
    loop {
        let wait = Duration::from_millis(rand::random_range(8_000..=20_000));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
        let stopping = *stop.borrow();
        if stopping {
            break;
        }
        if cluster.hosts.len() < want {
            let repaired = cluster.ensure_up(want).await.map(|notes| notes.join("; "));
            log_chaos(&mut events, t0, "repair", repaired);
        }
        match rand::random_range(0..3u8) {
            0 => {
                let r = cluster.kill_and_replace().await;
                log_chaos(&mut events, t0, "kill-host", r);
            }
            1 => {
                let r = cluster.term_and_restart().await;
                log_chaos(&mut events, t0, "term-host", r);
            }
            _ => {
                let r = cluster.restart_redis().await;
                log_chaos(&mut events, t0, "restart-redis", r);
            }
        }
    }
    (cluster, events)
}

// --------------------------------------------------------------- client --

/// What one request came back with.
enum Reply {
    /// An HTTP answer (body parsed as JSON, `Null` if it is not).
    Answer { status: u16, body: Value },
    /// No answer: connection refused/reset, timeout, body cut off.
    Transport(&'static str),
}

/// Whether any error in `e`'s source chain mentions `word`.
fn chain_mentions(e: &(dyn std::error::Error + 'static), word: &str) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().to_lowercase().contains(word) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A short name for a transport error.
fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        if chain_mentions(e, "refused") {
            "connect_refused"
        } else {
            "connect"
        }
    } else if chain_mentions(e, "reset") {
        "reset"
    } else if chain_mentions(e, "closed") || chain_mentions(e, "incomplete") {
        "closed"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "other"
    }
}

/// Send one request and read the whole answer.
async fn send(http: &reqwest::Client, method: Method, url: String, body: Option<&Value>) -> Reply {
    let mut req = http.request(method, url);
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => return Reply::Transport(transport_kind(&e)),
    };
    let status = resp.status().as_u16();
    match resp.bytes().await {
        Ok(bytes) => Reply::Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        },
        Err(e) => Reply::Transport(transport_kind(&e)),
    }
}

/// The class of a reply: `2xx`, `4xx:<status>`, `5xx:<error kind>`, `transport:<kind>`.
fn class_of(reply: &Reply) -> String {
    match reply {
        Reply::Transport(kind) => format!("transport:{kind}"),
        Reply::Answer { status, .. } if (200..300).contains(status) => "2xx".to_owned(),
        Reply::Answer { status, .. } if (400..500).contains(status) => format!("4xx:{status}"),
        Reply::Answer { status, body } if *status >= 500 => {
            match body.get("error").and_then(Value::as_str) {
                Some(kind) => format!("5xx:{kind}"),
                None => format!("5xx:status-{status}"),
            }
        }
        Reply::Answer { status, .. } => format!("other:{status}"),
    }
}

/// A reply worth a short pause before the next request (host or Redis down).
fn backoff_after(reply: &Reply) -> bool {
    match reply {
        Reply::Transport(_) => true,
        Reply::Answer { status, .. } => *status >= 500,
    }
}

/// A reply, for an error message.
fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Transport(kind) => format!("transport error ({kind})"),
        Reply::Answer { status, body } => format!("{status} {body}"),
    }
}

/// An order a client was told exists (201).
#[derive(Debug, Clone)]
struct Acked {
    cafe_id: u64,
    qty: u64,
    cust: String,
}

/// What clients were told, and the cancels still to send.
#[derive(Default)]
struct Ledger {
    orders: HashMap<u64, Acked>,
    order_ids: Vec<u64>,
    /// Ids a 201 returned more than once.
    duplicate_acks: Vec<u64>,
    cancels: HashSet<u64>,
    /// (order id, tries so far) of cancels to send.
    cancel_queue: Vec<(u64, u32)>,
    anomalies: Vec<String>,
}

impl Ledger {
    /// Record a 201; about one in four acknowledged orders is queued for cancel.
    fn acknowledge_order(&mut self, id: u64, acked: Acked) {
        if self.orders.insert(id, acked).is_some() {
            self.duplicate_acks.push(id);
            return;
        }
        self.order_ids.push(id);
        if rand::random_bool(0.25) {
            self.cancel_queue.push((id, 0));
        }
    }

    /// A random queued cancel.
    fn take_cancel(&mut self) -> Option<(u64, u32)> {
        if self.cancel_queue.is_empty() {
            return None;
        }
        let i = rand::random_range(0..self.cancel_queue.len());
        Some(self.cancel_queue.swap_remove(i))
    }

    /// A random acknowledged order id.
    fn random_order(&self) -> Option<u64> {
        if self.order_ids.is_empty() {
            return None;
        }
        Some(self.order_ids[rand::random_range(0..self.order_ids.len())])
    }
}

/// State shared by the clients.
struct Shared {
    live: Arc<RwLock<Vec<String>>>,
    stop: AtomicBool,
    ledger: Mutex<Ledger>,
    /// operation → class → count.
    stats: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
}

/// What a client does next.
enum Op {
    Place,
    Cancel(u64, u32),
    GetCafe,
    GetOrder(u64),
    MyPage,
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    /// Count one reply of operation `op`.
    fn record(&self, op: &str, reply: &Reply) {
        let class = class_of(reply);
        let mut stats = lock(&self.stats);
        *stats
            .entry(op.to_owned())
            .or_default()
            .entry(class)
            .or_default() += 1;
    }

    /// A random live host URL.
    fn pick_host(&self) -> Option<String> {
        let live = read_lock(&self.live);
        if live.is_empty() {
            return None;
        }
        Some(live[rand::random_range(0..live.len())].clone())
    }

    /// The mix: a queued cancel a quarter of the time, else half orders,
    /// half reads (item, order, customer page).
    fn next_op(&self) -> Op {
        if rand::random_bool(0.25) {
            let taken = self.ledger().take_cancel();
            if let Some((id, tries)) = taken {
                return Op::Cancel(id, tries);
            }
        }
        let r: f64 = rand::random();
        if r < 0.5 {
            Op::Place
        } else if r < 0.65 {
            Op::GetCafe
        } else if r < 0.85 {
            let id = self.ledger().random_order();
            id.map_or(Op::GetCafe, Op::GetOrder)
        } else {
            Op::MyPage
        }
    }
}

/// POST /orders; a 201 is recorded in the ledger. Returns whether to pause.
async fn place_order(shared: &Shared, http: &reqwest::Client, base: &str) -> bool {
    let cust = customer(rand::random_range(0..CUSTOMERS));
    let cafe_id: u64 = rand::random_range(1..=ITEMS);
    let qty: u64 = rand::random_range(1..=3);
    let body = json!({"custNm": cust, "cafeId": cafe_id, "qty": qty});
    let reply = send(http, Method::POST, format!("{base}/orders"), Some(&body)).await;
    shared.record("POST /orders", &reply);
    if let Reply::Answer { status: 201, body } = &reply {
        match body.get("id").and_then(Value::as_u64) {
            Some(id) => shared
                .ledger()
                .acknowledge_order(id, Acked { cafe_id, qty, cust }),
            None => shared
                .ledger()
                .anomalies
                .push(format!("POST /orders answered 201 without an id: {body}")),
        }
    }
    backoff_after(&reply)
}

/// POST /orders/{id}/cancel; a 200 is an acknowledged cancel, no answer or
/// a 5xx puts it back in the queue (a few times). Returns whether to pause.
async fn cancel_order(
    shared: &Shared,
    http: &reqwest::Client,
    base: &str,
    id: u64,
    tries: u32,
) -> bool {
    let reply = send(
        http,
        Method::POST,
        format!("{base}/orders/{id}/cancel"),
        None,
    )
    .await;
    shared.record("POST /orders/{id}/cancel", &reply);
    match &reply {
        Reply::Answer { status: 200, .. } => {
            shared.ledger().cancels.insert(id);
        }
        Reply::Answer { status, .. } if *status < 500 => {}
        _ => {
            if tries + 1 < CANCEL_TRIES {
                shared.ledger().cancel_queue.push((id, tries + 1));
            }
        }
    }
    backoff_after(&reply)
}

/// One GET, counted under `op`. Returns whether to pause.
async fn read(shared: &Shared, http: &reqwest::Client, base: &str, op: &str, path: String) -> bool {
    let reply = send(http, Method::GET, format!("{base}{path}"), None).await;
    shared.record(op, &reply);
    backoff_after(&reply)
}

/// One client: requests back to back to random live hosts until stopped.
async fn client_loop(shared: Arc<Shared>, http: reqwest::Client) {
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(base) = shared.pick_host() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let pause = match shared.next_op() {
            Op::Place => place_order(&shared, &http, &base).await,
            Op::Cancel(id, tries) => cancel_order(&shared, &http, &base, id, tries).await,
            Op::GetCafe => {
                let id = rand::random_range(1..=ITEMS);
                read(
                    &shared,
                    &http,
                    &base,
                    "GET /cafes/{id}",
                    format!("/cafes/{id}"),
                )
                .await
            }
            Op::GetOrder(id) => {
                read(
                    &shared,
                    &http,
                    &base,
                    "GET /orders/{id}",
                    format!("/orders/{id}"),
                )
                .await
            }
            Op::MyPage => {
                let cust = customer(rand::random_range(0..CUSTOMERS));
                read(
                    &shared,
                    &http,
                    &base,
                    "GET /myPages?custNm=",
                    format!("/myPages?custNm={cust}"),
                )
                .await
            }
        };
        if pause {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An HTTP client with bounded requests.
fn http_client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(64)
        .build()
        .context("cannot build the HTTP client")
}

/// Register items 1..=ITEMS with STOCK units each (a few retries: no chaos
/// runs yet, but a host may still be warming up).
async fn seed(http: &reqwest::Client, base: &str) -> Result<()> {
    for id in 1..=ITEMS {
        let body = json!({"cafeId": id, "cafeNm": format!("soak item {id}"), "chkDate": "20210713", "pcnt": STOCK});
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reply = send(http, Method::POST, format!("{base}/cafes"), Some(&body)).await;
            match reply {
                Reply::Answer {
                    status: 200 | 201, ..
                } => break,
                _ if attempt < 10 => tokio::time::sleep(Duration::from_millis(300)).await,
                other => bail!("POST /cafes (item {id}) failed: {}", describe(&other)),
            }
        }
    }
    Ok(())
}

/// Sum of every operation's class counts.
fn by_class(stats: &BTreeMap<String, BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for classes in stats.values() {
        for (class, n) in classes {
            *out.entry(class.clone()).or_default() += n;
        }
    }
    out
}

/// One progress line during the load.
fn print_progress(shared: &Shared, t0: Instant) {
    let classes = by_class(&lock(&shared.stats));
    let sum = |prefix: &str| -> u64 {
        classes
            .iter()
            .filter(|(c, _)| c.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    };
    let (orders, cancels, queued) = {
        let ledger = shared.ledger();
        (
            ledger.orders.len(),
            ledger.cancels.len(),
            ledger.cancel_queue.len(),
        )
    };
    let live = read_lock(&shared.live).len();
    println!(
        "[+{:7.1}s {}] load: {} requests (2xx {}, 4xx {}, 5xx {}, transport {}), orders acked {orders}, cancels acked {cancels} ({queued} queued), {live} hosts live",
        t0.elapsed().as_secs_f64(),
        clock(),
        classes.values().sum::<u64>(),
        sum("2xx"),
        sum("4xx"),
        sum("5xx"),
        sum("transport")
    );
}

// --------------------------------------------------------------- settle --

/// The target of `<target>; rel="next"` in a `Link` header value.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

/// Every item of a paged list route, following `rel="next"` links.
async fn get_all(http: &reqwest::Client, base: &str, path: &str) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut next = Some(path.to_owned());
    while let Some(path) = next.take() {
        let resp = http
            .get(format!("{base}{path}"))
            .send()
            .await
            .with_context(|| format!("GET {base}{path}"))?;
        let status = resp.status();
        next = resp
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("reading GET {path}"))?;
        anyhow::ensure!(
            status.is_success(),
            "GET {path}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
        let page: Vec<Value> = serde_json::from_slice(&bytes)
            .with_context(|| format!("GET {path}: a page is not a JSON array"))?;
        items.extend(page);
    }
    Ok(items)
}

/// Events not yet acknowledged, summed over the subscribers (`/health/ready`).
async fn total_lag(http: &reqwest::Client, base: &str) -> Result<u64> {
    let resp = http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .context("GET /health/ready")?;
    let status = resp.status();
    let body: Value = resp.json().await.context("/health/ready is not JSON")?;
    anyhow::ensure!(status.is_success(), "/health/ready: {status} {body}");
    let lag = body
        .get("lag")
        .and_then(Value::as_object)
        .context("/health/ready has no lag")?;
    Ok(lag.values().filter_map(Value::as_u64).sum())
}

/// The three lists and the event lag at one moment.
struct Snapshot {
    orders: Vec<Value>,
    productions: Vec<Value>,
    pages: Vec<Value>,
    lag: Option<u64>,
}

/// The lists of a snapshot by id.
struct Index<'a> {
    orders: BTreeMap<u64, &'a Value>,
    duplicate_order_rows: u64,
    productions: HashMap<u64, Vec<&'a Value>>,
    pages: HashMap<u64, Vec<&'a Value>>,
    unparseable_rows: u64,
}

/// Index a snapshot: orders by `id`, productions and pages by `orderId`.
fn index(snap: &Snapshot) -> Index<'_> {
    let mut ix = Index {
        orders: BTreeMap::new(),
        duplicate_order_rows: 0,
        productions: HashMap::new(),
        pages: HashMap::new(),
        unparseable_rows: 0,
    };
    for order in &snap.orders {
        match order.get("id").and_then(Value::as_u64) {
            Some(id) => {
                if ix.orders.insert(id, order).is_some() {
                    ix.duplicate_order_rows += 1;
                }
            }
            None => ix.unparseable_rows += 1,
        }
    }
    for (rows, into) in [
        (&snap.productions, &mut ix.productions),
        (&snap.pages, &mut ix.pages),
    ] {
        for row in rows {
            match row.get("orderId").and_then(Value::as_u64) {
                Some(id) => into.entry(id).or_default().push(row),
                None => ix.unparseable_rows += 1,
            }
        }
    }
    ix
}

/// The production status that goes with an order status, once settled.
fn production_status(order_status: &str) -> Option<&'static str> {
    match order_status {
        "ORDERED" => Some("REGISTERED"),
        "CANCELED" => Some("CANCELED"),
        "FORCE_CANCELED" => Some("FORCE_CANCELED"),
        _ => None,
    }
}

/// What keeps a snapshot from being settled (all zero and lag 0: settled).
#[derive(Debug, Default, Clone, Serialize)]
struct Unsettled {
    /// Orders still REQUESTED.
    requested: u64,
    /// Orders without a production row.
    missing_production: u64,
    /// Productions whose status does not go with their order's.
    production_status: u64,
    /// Orders without a myPage row.
    missing_mypage: u64,
    /// myPage rows whose `status` differs from their order's.
    mypage_status: u64,
    /// myPage rows whose `productionStatus` differs from the production's.
    mypage_production_status: u64,
    /// Unacknowledged events (None: /health/ready did not answer).
    lag: Option<u64>,
}

impl Unsettled {
    fn is_settled(&self) -> bool {
        self.requested == 0
            && self.missing_production == 0
            && self.production_status == 0
            && self.missing_mypage == 0
            && self.mypage_status == 0
            && self.mypage_production_status == 0
            && self.lag == Some(0)
    }
}

/// Compare every order with its production and myPage rows.
fn unsettled(snap: &Snapshot) -> Unsettled {
    let ix = index(snap);
    let mut u = Unsettled {
        lag: snap.lag,
        ..Unsettled::default()
    };
    for (id, order) in &ix.orders {
        let status = order["status"].as_str().unwrap_or("");
        if status == "REQUESTED" {
            u.requested += 1;
        }
        let production = ix.productions.get(id).and_then(|rows| rows.first());
        match production {
            None => u.missing_production += 1,
            Some(p) => {
                if production_status(status).is_some_and(|want| p["status"] != want) {
                    u.production_status += 1;
                }
            }
        }
        match ix.pages.get(id).and_then(|rows| rows.first()) {
            None => u.missing_mypage += 1,
            Some(page) => {
                if page["status"] != order["status"] {
                    u.mypage_status += 1;
                }
                if let Some(p) = production
                    && page["productionStatus"] != p["status"]
                {
                    u.mypage_production_status += 1;
                }
            }
        }
    }
    u
}

/// One poll: the lag, and the lists once the lag is 0 (or when `force`).
async fn poll(
    http: &reqwest::Client,
    base: &str,
    force: bool,
) -> Result<(Option<u64>, Option<Snapshot>)> {
    let lag = match total_lag(http, base).await {
        Ok(lag) => Some(lag),
        Err(e) if !force => return Err(e),
        Err(_) => None,
    };
    if lag.is_some_and(|n| n > 0) && !force {
        return Ok((lag, None));
    }
    let orders = get_all(http, base, "/orders?limit=1000").await?;
    let productions = get_all(http, base, "/productions?limit=1000").await?;
    let pages = get_all(http, base, "/myPages?limit=1000").await?;
    Ok((
        lag,
        Some(Snapshot {
            orders,
            productions,
            pages,
            lag,
        }),
    ))
}

/// Poll (hosts in turn) until every order is settled, the event backlog
/// stops shrinking for [`SETTLE_LIMIT`], or [`SETTLE_CAP`] passes. Returns the last snapshot, what is unsettled in it, and the time taken.
async fn settle(
    http: &reqwest::Client,
    urls: &[String],
) -> Result<(Snapshot, Unsettled, Duration)> {
    anyhow::ensure!(!urls.is_empty(), "no host to settle through");
    let started = Instant::now();
    let mut last_print = Instant::now();
    let mut turn = 0usize;
    // The smallest backlog seen, and when it last shrank.
    let (mut least_lag, mut progressed) = (u64::MAX, Instant::now());
    loop {
        let force = progressed.elapsed() >= SETTLE_LIMIT || started.elapsed() >= SETTLE_CAP;
        let base = &urls[turn % urls.len()];
        turn += 1;
        let polled = poll(http, base, force).await;
        if let Ok((Some(lag), _)) = &polled
            && *lag < least_lag
        {
            least_lag = *lag;
            progressed = Instant::now();
        }
        let status = match polled {
            Ok((_, Some(snap))) => {
                let u = unsettled(&snap);
                if u.is_settled() || force {
                    return Ok((snap, u, started.elapsed()));
                }
                format!("{u:?}")
            }
            Ok((lag, None)) => format!("event lag {}", lag.unwrap_or(0)),
            Err(e) if force => return Err(e.context("no final snapshot could be taken")),
            Err(e) => format!("{base}: {e:#}"),
        };
        if last_print.elapsed() >= Duration::from_secs(5) {
            println!(
                "[settling {:5.1}s] {status}",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// ---------------------------------------------------------------- check --

/// Duplicated (or phantom) effects.
#[derive(Debug, Default, Serialize)]
struct Duplicates {
    /// Order ids two different 201s returned.
    acknowledged_order_ids: u64,
    /// Order ids listed twice by GET /orders.
    order_rows: u64,
    /// Orders with more than one production row.
    production_rows: u64,
    /// Orders with more than one myPage row.
    mypage_rows: u64,
    /// Production rows of orders that do not exist.
    phantom_productions: u64,
    /// myPage rows of orders that do not exist.
    phantom_mypage_rows: u64,
    /// Items whose pcnt + held or held is off (see `stock`).
    stock_mismatches: u64,
}

impl Duplicates {
    fn total(&self) -> u64 {
        self.acknowledged_order_ids
            + self.order_rows
            + self.production_rows
            + self.mypage_rows
            + self.phantom_productions
            + self.phantom_mypage_rows
            + self.stock_mismatches
    }
}

/// What the final snapshot says against what the clients were told.
struct Findings {
    orders_in_system: u64,
    unacknowledged_present: u64,
    orders_by_status: BTreeMap<String, u64>,
    lost_orders: u64,
    lost_cancels: u64,
    lost_examples: Vec<Value>,
    duplicates: Duplicates,
    /// cafe id → sum of qty over its ORDERED (and, if unsettled, REQUESTED) orders.
    expected_held: BTreeMap<u64, u64>,
    unparseable_rows: u64,
}

/// Lost orders and cancels, duplicate and phantom rows, expected stock.
fn findings(snap: &Snapshot, ledger: &Ledger) -> Findings {
    let ix = index(snap);
    let mut f = Findings {
        orders_in_system: ix.orders.len() as u64,
        unacknowledged_present: 0,
        orders_by_status: BTreeMap::new(),
        lost_orders: 0,
        lost_cancels: 0,
        lost_examples: Vec::new(),
        duplicates: Duplicates {
            acknowledged_order_ids: ledger.duplicate_acks.len() as u64,
            order_rows: ix.duplicate_order_rows,
            ..Duplicates::default()
        },
        expected_held: BTreeMap::new(),
        unparseable_rows: ix.unparseable_rows,
    };
    for (id, order) in &ix.orders {
        let status = order["status"].as_str().unwrap_or("?");
        *f.orders_by_status.entry(status.to_owned()).or_default() += 1;
        if !ledger.orders.contains_key(id) {
            f.unacknowledged_present += 1;
        }
        if matches!(status, "ORDERED" | "REQUESTED")
            && let (Some(cafe), Some(qty)) = (order["cafeId"].as_u64(), order["qty"].as_u64())
        {
            *f.expected_held.entry(cafe).or_default() += qty;
        }
    }
    let lost = |f: &mut Findings, what: Value| {
        if f.lost_examples.len() < EXAMPLES {
            f.lost_examples.push(what);
        }
    };
    for (id, acked) in &ledger.orders {
        match ix.orders.get(id) {
            None => {
                f.lost_orders += 1;
                lost(&mut f, json!({"orderId": id, "lost": "order missing"}));
            }
            Some(order) => {
                let same = order["cafeId"].as_u64() == Some(acked.cafe_id)
                    && order["qty"].as_u64() == Some(acked.qty)
                    && order["custNm"].as_str() == Some(acked.cust.as_str());
                if !same {
                    f.lost_orders += 1;
                    lost(
                        &mut f,
                        json!({"orderId": id, "lost": "order differs",
                               "acknowledged": {"cafeId": acked.cafe_id, "qty": acked.qty, "custNm": acked.cust},
                               "stored": order}),
                    );
                }
            }
        }
    }
    for id in &ledger.cancels {
        let status = ix.orders.get(id).and_then(|o| o["status"].as_str());
        if status != Some("CANCELED") {
            f.lost_cancels += 1;
            lost(
                &mut f,
                json!({"orderId": id, "lost": "cancel", "status": status}),
            );
        }
    }
    for (id, rows) in &ix.productions {
        if rows.len() > 1 {
            f.duplicates.production_rows += 1;
        }
        if !ix.orders.contains_key(id) {
            f.duplicates.phantom_productions += 1;
        }
    }
    for (id, rows) in &ix.pages {
        if rows.len() > 1 {
            f.duplicates.mypage_rows += 1;
        }
        if !ix.orders.contains_key(id) {
            f.duplicates.phantom_mypage_rows += 1;
        }
    }
    f
}

/// Stock of one item: pcnt from GET /cafes/{id}, pcnt and held from its
/// stored document (GET /cafes/{id} does not serve `held`).
#[derive(Debug, Serialize)]
struct ItemCheck {
    cafe_id: u64,
    pcnt_http: Option<u64>,
    pcnt_stored: Option<u64>,
    held_stored: Option<u64>,
    expected_held: u64,
    ok: bool,
    error: Option<String>,
}

/// (pcnt, held) of item `id` from its Redis document
/// (`{prefix}:doc:cafe:cafes`, field = 20-digit id, value = 20-digit
/// version, live flag `1`, JSON).
async fn stored_item(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    id: u64,
) -> Result<(u64, u64)> {
    let raw: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(format!("{prefix}:doc:cafe:cafes"))
        .arg(format!("{id:020}"))
        .query_async(conn)
        .await
        .with_context(|| format!("HGET of cafe {id} failed"))?;
    let raw = raw.with_context(|| format!("cafe {id} has no stored document"))?;
    anyhow::ensure!(
        raw.len() > 21 && raw[20] == b'1',
        "cafe {id}: the stored document is deleted or malformed"
    );
    let doc: Value = serde_json::from_slice(&raw[21..])
        .with_context(|| format!("cafe {id}: the stored document is not JSON"))?;
    let pcnt = doc
        .get("pcnt")
        .and_then(Value::as_u64)
        .with_context(|| format!("cafe {id}: no pcnt in {doc}"))?;
    let held = doc.get("held").and_then(Value::as_u64).unwrap_or(0);
    Ok((pcnt, held))
}

/// Check every item: pcnt + held = STOCK, held = expected, and the pcnt
/// served equals the one stored.
async fn check_stock(
    http: &reqwest::Client,
    base: &str,
    redis_url: &str,
    prefix: &str,
    expected: &BTreeMap<u64, u64>,
) -> Vec<ItemCheck> {
    let mut conn = redis_conn(redis_url).await;
    let mut out = Vec::new();
    for id in 1..=ITEMS {
        let expected_held = expected.get(&id).copied().unwrap_or(0);
        let mut errors = Vec::new();
        let pcnt_http = match send(http, Method::GET, format!("{base}/cafes/{id}"), None).await {
            Reply::Answer { status: 200, body } => body.get("pcnt").and_then(Value::as_u64),
            other => {
                errors.push(format!("GET /cafes/{id}: {}", describe(&other)));
                None
            }
        };
        let stored = match conn.as_mut() {
            Ok(conn) => match stored_item(conn, prefix, id).await {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(format!("{e:#}"));
                    None
                }
            },
            Err(e) => {
                errors.push(format!("no redis connection: {e:#}"));
                None
            }
        };
        let ok = match (pcnt_http, stored) {
            (Some(served), Some((pcnt, held))) => {
                served == pcnt && pcnt + held == STOCK && held == expected_held
            }
            (Some(served), None) => served + expected_held == STOCK,
            (None, Some((pcnt, held))) => pcnt + held == STOCK && held == expected_held,
            (None, None) => false,
        };
        out.push(ItemCheck {
            cafe_id: id,
            pcnt_http,
            pcnt_stored: stored.map(|(p, _)| p),
            held_stored: stored.map(|(_, h)| h),
            expected_held,
            ok,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        });
    }
    out
}

/// Entries in the dead-letter stream (`{prefix}:dead`).
async fn dead_letters(redis_url: &str, prefix: &str) -> Result<u64> {
    let mut conn = redis_conn(redis_url).await?;
    let n: u64 = redis::cmd("XLEN")
        .arg(format!("{prefix}:dead"))
        .query_async(&mut conn)
        .await
        .context("XLEN of the dead letters failed")?;
    Ok(n)
}

// --------------------------------------------------------------- report --

/// The whole report (printed, and written as JSON).
#[derive(Debug, Serialize)]
struct Report {
    started_unix: u64,
    minutes: f64,
    load_seconds: f64,
    total_seconds: f64,
    hosts: usize,
    clients: usize,
    redis_prefix: String,
    chaos_by_kind: BTreeMap<String, u64>,
    chaos_failed: u64,
    chaos: Vec<ChaosEvent>,
    final_repairs: Vec<String>,
    requests_total: u64,
    requests_by_class: BTreeMap<String, u64>,
    requests_by_op: BTreeMap<String, BTreeMap<String, u64>>,
    errors_5xx_by_kind: BTreeMap<String, u64>,
    transport_errors_by_kind: BTreeMap<String, u64>,
    orders_acknowledged: u64,
    cancels_acknowledged: u64,
    cancels_never_acknowledged: u64,
    orders_in_system: u64,
    orders_unacknowledged_but_present: u64,
    orders_by_status: BTreeMap<String, u64>,
    settled: bool,
    settle_seconds: f64,
    unsettled: Unsettled,
    lost_orders: u64,
    lost_cancels: u64,
    lost_examples: Vec<Value>,
    duplicates: Duplicates,
    stock: Vec<ItemCheck>,
    dead_letters: Option<u64>,
    anomalies: Vec<String>,
    failures: Vec<String>,
    ok: bool,
}

impl Report {
    /// Why the run failed (empty: it passed).
    fn compute_failures(&mut self) {
        let mut f = Vec::new();
        if !self.settled {
            f.push(format!(
                "orders did not settle (backlog stuck for {SETTLE_LIMIT:?}, or over {SETTLE_CAP:?}): {:?}",
                self.unsettled
            ));
        }
        if self.lost_orders > 0 {
            f.push(format!("{} acknowledged orders lost", self.lost_orders));
        }
        if self.lost_cancels > 0 {
            f.push(format!("{} acknowledged cancels lost", self.lost_cancels));
        }
        if self.duplicates.total() > 0 {
            f.push(format!("duplicated effects: {:?}", self.duplicates));
        }
        match self.dead_letters {
            Some(0) => {}
            Some(n) => f.push(format!("{n} dead-lettered events")),
            None => f.push("the dead letters could not be counted".to_owned()),
        }
        if self.chaos_failed > 0 {
            f.push(format!("{} chaos steps failed", self.chaos_failed));
        }
        if !self.anomalies.is_empty() {
            f.push(format!("{} anomalies", self.anomalies.len()));
        }
        self.ok = f.is_empty();
        self.failures = f;
    }

    /// `k v, k v` of a count map.
    fn counts(map: &BTreeMap<String, u64>) -> String {
        if map.is_empty() {
            return "none".to_owned();
        }
        map.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The human-readable report.
    fn print(&self, path: &Path) {
        let d = &self.duplicates;
        let stock_off: Vec<String> = self
            .stock
            .iter()
            .filter(|i| !i.ok)
            .map(|i| format!("{i:?}"))
            .collect();
        println!();
        println!("== soak report ==");
        println!(
            "duration        {:.1} s of load and chaos, {:.1} s in all; {} hosts, {} clients",
            self.load_seconds, self.total_seconds, self.hosts, self.clients
        );
        println!(
            "chaos           {} actions: {} (failed {})",
            self.chaos.len(),
            Self::counts(&self.chaos_by_kind),
            self.chaos_failed
        );
        println!(
            "requests        {}: {}",
            self.requests_total,
            Self::counts(&self.requests_by_class)
        );
        println!("5xx by kind     {}", Self::counts(&self.errors_5xx_by_kind));
        println!(
            "transport       {}",
            Self::counts(&self.transport_errors_by_kind)
        );
        println!(
            "orders          acknowledged {}, in the system {} ({} committed without an acknowledgement); {}",
            self.orders_acknowledged,
            self.orders_in_system,
            self.orders_unacknowledged_but_present,
            Self::counts(&self.orders_by_status)
        );
        println!(
            "cancels         acknowledged {} ({} never acknowledged)",
            self.cancels_acknowledged, self.cancels_never_acknowledged
        );
        println!(
            "settle          {} in {:.1} s",
            if self.settled {
                "settled"
            } else {
                "NOT settled"
            },
            self.settle_seconds
        );
        println!(
            "lost            orders {}, cancels {}",
            self.lost_orders, self.lost_cancels
        );
        println!(
            "duplicated      order ids {}, order rows {}, production rows {}, myPage rows {}, phantom productions {}, phantom myPage rows {}, stock mismatches {} of {ITEMS} items",
            d.acknowledged_order_ids,
            d.order_rows,
            d.production_rows,
            d.mypage_rows,
            d.phantom_productions,
            d.phantom_mypage_rows,
            d.stock_mismatches
        );
        println!(
            "dead letters    {}",
            self.dead_letters
                .map_or_else(|| "unknown".to_owned(), |n| n.to_string())
        );
        for line in &stock_off {
            println!("  stock off: {line}");
        }
        for example in &self.lost_examples {
            println!("  lost: {example}");
        }
        for anomaly in &self.anomalies {
            println!("  anomaly: {anomaly}");
        }
        if self.ok {
            println!("result          OK (report: {})", path.display());
        } else {
            println!("result          FAILED (report: {})", path.display());
            for failure in &self.failures {
                println!("  - {failure}");
            }
        }
    }
}

/// Write the report as JSON to `target/soak/<unix-time>.json`.
fn write_report(report: &Report) -> Result<PathBuf> {
    let dir = root().join("target/soak");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{}.json", report.started_unix));
    let text = serde_json::to_string_pretty(report).context("cannot serialize the report")?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

// ----------------------------------------------------------------- main --

/// Start Redis and the hosts, seed the menu.
async fn start_cluster(args: &Args, tmp: &Path, prefix: &str) -> Result<Cluster> {
    let compile_cache = root().join("target/soak/compile-cache");
    std::fs::create_dir_all(&compile_cache)
        .with_context(|| format!("cannot create {}", compile_cache.display()))?;
    let mut redis = RedisServer::new(tmp.join("redis"))?;
    redis.launch().await?;
    println!("redis-server up on {}", redis.url);
    let spec = HostSpec {
        bin: binary_path(),
        redis_url: redis.url.clone(),
        prefix: prefix.to_owned(),
        compile_cache,
    };
    let mut cluster = Cluster {
        spec,
        dir: tmp.to_path_buf(),
        redis,
        hosts: Vec::new(),
        next_host: 0,
        retired: VecDeque::new(),
        live: Arc::new(RwLock::new(Vec::new())),
    };
    // One at a time: the first compiles the components into the cache.
    for _ in 0..args.hosts {
        let note = cluster.add_host().await?;
        println!("{note}");
    }
    Ok(cluster)
}

/// Drive load and chaos for the duration; returns the cluster, the chaos
/// log and the load's length.
async fn run_load(
    args: &Args,
    cluster: Cluster,
    shared: &Arc<Shared>,
    t0: Instant,
) -> Result<(Cluster, Vec<ChaosEvent>, Duration)> {
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let http = http_client(REQUEST_TIMEOUT)?;
    let load_started = Instant::now();
    let clients: Vec<_> = (0..args.clients)
        .map(|_| tokio::spawn(client_loop(Arc::clone(shared), http.clone())))
        .collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let chaos = tokio::spawn(chaos_loop(cluster, args.hosts, stop_rx, t0));
    while load_started.elapsed() < duration {
        let left = duration.saturating_sub(load_started.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(10))).await;
        print_progress(shared, t0);
    }
    shared.stop.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for client in clients {
        client.await.context("a client task panicked")?;
    }
    let load = load_started.elapsed();
    println!(
        "[+{:7.1}s {}] load stopped; waiting for the chaos step in progress",
        t0.elapsed().as_secs_f64(),
        clock()
    );
    let (cluster, events) = chaos.await.context("the chaos task panicked")?;
    Ok((cluster, events, load))
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let args = Args::parse();
    anyhow::ensure!(
        args.minutes.is_finite() && args.minutes > 0.0,
        "minutes must be a positive number"
    );
    anyhow::ensure!(args.hosts >= 1, "--hosts must be at least 1");
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    preflight()?;
    let started_unix = unix_now();
    let t0 = Instant::now();
    let prefix = format!("soak{started_unix}");
    let tmp = tempfile::Builder::new()
        .prefix("sktarbucks-soak-")
        .tempdir()
        .context("cannot create a temp dir")?;
    println!(
        "sktarbucks soak: {} min, {} hosts, {} clients, redis prefix {prefix}, work dir {}",
        args.minutes,
        args.hosts,
        args.clients,
        tmp.path().display()
    );
    let cluster = start_cluster(&args, tmp.path(), &prefix).await?;
    let seed_http = http_client(Duration::from_secs(30))?;
    if let Err(e) = seed(&seed_http, &cluster.hosts[0].url).await {
        cluster.print_tails();
        return Err(e);
    }
    println!("{ITEMS} menu items registered with {STOCK} units each");

    let shared = Arc::new(Shared {
        live: Arc::clone(&cluster.live),
        stop: AtomicBool::new(false),
        ledger: Mutex::new(Ledger::default()),
        stats: Mutex::new(BTreeMap::new()),
    });
    let (mut cluster, chaos, load) = run_load(&args, cluster, &shared, t0).await?;

    let final_repairs = match cluster.ensure_up(args.hosts).await {
        Ok(notes) => notes,
        Err(e) => {
            cluster.print_tails();
            return Err(e.context("cannot bring Redis and the hosts back up"));
        }
    };
    for note in &final_repairs {
        println!("final repair: {note}");
    }
    let urls: Vec<String> = cluster.hosts.iter().map(|h| h.url.clone()).collect();
    let http = http_client(Duration::from_secs(60))?;
    let (snap, open, settle_time) = match settle(&http, &urls).await {
        Ok(s) => s,
        Err(e) => {
            cluster.print_tails();
            return Err(e);
        }
    };
    let ledger = std::mem::take(&mut *shared.ledger());
    let stats = std::mem::take(&mut *lock(&shared.stats));
    let found = findings(&snap, &ledger);
    let stock = check_stock(
        &http,
        &urls[0],
        &cluster.redis.url,
        &prefix,
        &found.expected_held,
    )
    .await;
    let dead = dead_letters(&cluster.redis.url, &prefix).await;

    let classes = by_class(&stats);
    let pick = |prefix: &str| -> BTreeMap<String, u64> {
        classes
            .iter()
            .filter_map(|(c, n)| c.strip_prefix(prefix).map(|k| (k.to_owned(), *n)))
            .collect()
    };
    let mut chaos_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for event in &chaos {
        *chaos_by_kind.entry(event.kind.to_owned()).or_default() += 1;
    }
    let mut anomalies = ledger.anomalies.clone();
    if found.unparseable_rows > 0 {
        anomalies.push(format!(
            "{} list rows without a numeric id/orderId",
            found.unparseable_rows
        ));
    }
    let mut duplicates = found.duplicates;
    duplicates.stock_mismatches = stock.iter().filter(|i| !i.ok).count() as u64;
    let mut report = Report {
        started_unix,
        minutes: args.minutes,
        load_seconds: load.as_secs_f64(),
        total_seconds: t0.elapsed().as_secs_f64(),
        hosts: args.hosts,
        clients: args.clients,
        redis_prefix: prefix.clone(),
        chaos_failed: chaos.iter().filter(|e| !e.ok).count() as u64,
        chaos_by_kind,
        chaos,
        final_repairs,
        requests_total: classes.values().sum(),
        errors_5xx_by_kind: pick("5xx:"),
        transport_errors_by_kind: pick("transport:"),
        requests_by_class: classes.clone(),
        requests_by_op: stats,
        orders_acknowledged: ledger.orders.len() as u64,
        cancels_acknowledged: ledger.cancels.len() as u64,
        cancels_never_acknowledged: ledger.cancel_queue.len() as u64,
        orders_in_system: found.orders_in_system,
        orders_unacknowledged_but_present: found.unacknowledged_present,
        orders_by_status: found.orders_by_status,
        settled: open.is_settled(),
        settle_seconds: settle_time.as_secs_f64(),
        unsettled: open,
        lost_orders: found.lost_orders,
        lost_cancels: found.lost_cancels,
        lost_examples: found.lost_examples,
        duplicates,
        stock,
        dead_letters: dead.as_ref().ok().copied(),
        anomalies,
        failures: Vec::new(),
        ok: false,
    };
    if let Err(e) = &dead {
        report.anomalies.push(format!("dead letters: {e:#}"));
    }
    report.compute_failures();
    let path = write_report(&report)?;
    report.print(&path);
    if !report.ok {
        cluster.print_tails();
    }
    cluster.shutdown().await;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
