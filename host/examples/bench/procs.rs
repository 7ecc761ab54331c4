//! The processes a bench run drives: the real `sktarbucks serve`, the bare
//! reference server, its own `redis-server`, and a VmRSS sampler. Each is
//! killed on drop, so an error anywhere leaves nothing running.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The admin token of every bench host (the listener is on 127.0.0.1 only).
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// What a host is started with.
pub struct HostSpec<'a> {
    /// The binary measured (`target/dist/sktarbucks` by default).
    pub bin: &'a Path,
    /// Workspace root: component paths in the manifest are absolute below it.
    pub root: &'a Path,
    /// Directory for the manifest, the log and (SQLite) the data.
    pub dir: &'a Path,
    /// `redis://…` and the key prefix; `None` = SQLite in `dir/data`.
    pub redis: Option<(&'a str, &'a str)>,
    /// `[sqlite] synchronous`.
    pub synchronous: &'a str,
    /// Which of cafe, order, production, mypage to run.
    pub components: &'a [&'a str],
    /// Shared by every host of one bench run, so only the first one compiles.
    pub compile_cache: &'a Path,
    /// `reuse = true` for every component, as the shipped manifest has it.
    pub reuse: bool,
}

/// A running `sktarbucks serve`.
pub struct Host {
    child: Child,
    pub url: String,
    pub admin: String,
    pub data: PathBuf,
    pub log: PathBuf,
    /// When the process was spawned (the backlog drain is timed from here).
    pub spawned: Instant,
}

/// The generated manifest: the real components with their real routes,
/// links and default limits, on an ephemeral port.
fn manifest(spec: &HostSpec<'_>) -> Result<String> {
    use toml::{Table, Value};
    let mut m = Table::new();
    let path = |p: &Path| Value::String(p.display().to_string());
    m.insert("listen".into(), Value::String("127.0.0.1:0".into()));
    m.insert("data".into(), path(&spec.dir.join("data")));
    m.insert("compile_cache".into(), path(spec.compile_cache));
    if let Some((url, prefix)) = spec.redis {
        m.insert("redis".into(), Value::String(url.into()));
        m.insert("redis_prefix".into(), Value::String(prefix.into()));
    }
    let mut sqlite = Table::new();
    sqlite.insert("synchronous".into(), Value::String(spec.synchronous.into()));
    m.insert("sqlite".into(), Value::Table(sqlite));
    let mut components = Table::new();
    for name in spec.components {
        let route = match *name {
            "cafe" => "/cafes",
            "order" => "/orders",
            "production" => "/productions",
            _ => "/myPages",
        };
        let mut c = Table::new();
        c.insert(
            "path".into(),
            path(&spec.root.join(format!(
                "components/target/wasm32-wasip2/release/{name}.wasm"
            ))),
        );
        c.insert(
            "routes".into(),
            Value::Array(vec![Value::String(route.into())]),
        );
        if spec.reuse {
            c.insert("reuse".into(), Value::Boolean(true));
        }
        if *name == "order" {
            let mut links = Table::new();
            links.insert("stock".into(), Value::String("cafe".into()));
            c.insert("links".into(), Value::Table(links));
        }
        components.insert((*name).into(), Value::Table(c));
    }
    m.insert("components".into(), Value::Table(components));
    toml::to_string(&m).context("failed to write the manifest as TOML")
}

/// Read `child`'s stdout until every prefix in `wanted` was seen (values
/// keyed by prefix), or it exits, or `timeout`.
fn read_lines(
    child: &mut Child,
    wanted: &[&'static str],
    timeout: Duration,
    log: &Path,
) -> Result<BTreeMap<&'static str, String>> {
    let stdout = child.stdout.take().context("stdout was not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted_owned: Vec<&'static str> = wanted.to_vec();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            for w in &wanted_owned {
                if let Some(rest) = line.strip_prefix(w) {
                    let _ = tx.send((*w, rest.to_owned()));
                }
            }
        }
    });
    let started = Instant::now();
    let mut found = BTreeMap::new();
    while found.len() < wanted.len() {
        if let Ok((k, v)) = rx.recv_timeout(Duration::from_millis(50)) {
            found.insert(k, v);
            continue;
        }
        if let Some(status) = child.try_wait().context("waiting for a child failed")? {
            bail!(
                "{} exited with {status} before it listened; log:\n{}",
                log.display(),
                tail(log)
            );
        }
        if started.elapsed() > timeout {
            bail!("no listening line after {timeout:?}; log:\n{}", tail(log));
        }
    }
    Ok(found)
}

/// The last lines of a log file, for error messages.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Host {
    /// Write the manifest and start `sktarbucks serve` with an admin
    /// listener; returns once it prints its addresses. Its log (the binary's
    /// default level unless RUST_LOG is set) goes to `dir/host-<n>.log`.
    pub fn start(spec: &HostSpec<'_>) -> Result<Self> {
        std::fs::create_dir_all(spec.dir)
            .with_context(|| format!("failed to create {}", spec.dir.display()))?;
        let manifest_path = spec.dir.join("sktarbucks.toml");
        std::fs::write(&manifest_path, manifest(spec)?)
            .with_context(|| format!("failed to write {}", manifest_path.display()))?;
        let n = std::fs::read_dir(spec.dir).map(|d| d.count()).unwrap_or(0);
        let log = spec.dir.join(format!("host-{n}.log"));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("failed to create {}", log.display()))?;
        let spawned = Instant::now();
        let mut child = Command::new(spec.bin)
            .arg("--config")
            .arg(&manifest_path)
            .args(["serve", "--admin", "127.0.0.1:0"])
            .env("SKTARBUCKS_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("SKTARBUCKS_LISTEN")
            .env_remove("SKTARBUCKS_DATA")
            .env_remove("SKTARBUCKS_REDIS")
            .env_remove("SKTARBUCKS_ADMIN")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| {
                format!(
                    "failed to start {} (run `cargo xtask build`)",
                    spec.bin.display()
                )
            })?;
        let found = match read_lines(
            &mut child,
            &["sktarbucks listening on ", "sktarbucks admin on "],
            Duration::from_secs(180),
            &log,
        ) {
            Ok(found) => found,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Self {
            url: found["sktarbucks listening on "].clone(),
            admin: found["sktarbucks admin on "].clone(),
            child,
            data: spec.dir.join("data"),
            log,
            spawned,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (a clean stop: in-flight work drains) and wait for the exit.
    pub fn terminate(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("failed to run kill")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if self
                .child
                .try_wait()
                .context("waiting for the host failed")?
                .is_some()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the host did not stop within 60 s of SIGTERM; its log: {}",
            self.log.display()
        )
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bare reference server (`examples/bare.rs`) as its own process.
pub struct Bare {
    child: Child,
    pub url: String,
}

impl Bare {
    pub fn start(
        bin: &Path,
        read_db: Option<&Path>,
        write_db: Option<&Path>,
        synchronous: &str,
        log: &Path,
    ) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(["--synchronous", synchronous]);
        if let Some(db) = read_db {
            cmd.arg("--read-db").arg(db);
        }
        if let Some(db) = write_db {
            cmd.arg("--write-db").arg(db);
        }
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("failed to create {}", log.display()))?;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| {
                format!(
                    "failed to start {} (build it: cargo xtask build-dist)",
                    bin.display()
                )
            })?;
        let found = match read_lines(
            &mut child,
            &["bare listening on "],
            Duration::from_secs(30),
            log,
        ) {
            Ok(found) => found,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Self {
            url: found["bare listening on "].clone(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench's own `redis-server` on a TCP port of 127.0.0.1. Persistence
/// like a production setup: AOF on, `appendfsync everysec` (Redis's
/// default fsync policy for AOF), no RDB snapshots. Small hashes and sorted
/// sets kept compact only up to 16 entries (the README's recommended
/// setting): by default Redis keeps up to 128 entries in one listpack,
/// which every write scans and reallocates, and a cafe's stock counters,
/// held counters and per-cafe order indexes are such hashes.
pub struct Redis {
    child: Child,
    pub url: String,
    pub port: u16,
}

impl Redis {
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        // Port picked at random and retried: redis-server exits when the
        // port is taken, so a race costs one more attempt, never a wrong server.
        for attempt in 0..20u32 {
            let port: u16 = 20_000 + (rand::random::<u16>() % 40_000);
            let log = dir.join(format!("redis-{attempt}.log"));
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--hash-max-listpack-entries",
                    "16",
                    "--zset-max-listpack-entries",
                    "16",
                ])
                .arg("--dir")
                .arg(dir)
                .arg("--logfile")
                .arg(&log)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("failed to start redis-server (install it, or pass --no-redis)")?;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if ping(port) {
                    return Ok(Self {
                        child,
                        url: format!("redis://127.0.0.1:{port}/0"),
                        port,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!("redis-server did not start on any of 20 ports")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Rewrite the AOF now (`BGREWRITEAOF`) and wait for it to finish.
    /// Redis rewrites its AOF by itself each time the file doubled; run
    /// after run of orders, that came every 15–20 s and landed inside
    /// measured runs (a fork, then a core and the disk busy for a second):
    /// done between runs, the next automatic one is far off.
    pub async fn rewrite_aof(&self) -> Result<()> {
        let client = redis::Client::open(self.url.as_str()).context("bad redis url")?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .context("failed to connect to the bench's redis-server")?;
        let asked: redis::RedisResult<String> =
            redis::cmd("BGREWRITEAOF").query_async(&mut conn).await;
        if let Err(e) = asked {
            // One already running (or scheduled) is waited for below.
            eprintln!("   note: BGREWRITEAOF: {e}");
        }
        let started = Instant::now();
        loop {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query_async(&mut conn)
                .await
                .context("redis INFO persistence failed")?;
            let busy = info.lines().any(|l| {
                l.trim() == "aof_rewrite_in_progress:1" || l.trim() == "aof_rewrite_scheduled:1"
            });
            if !busy {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the bench's redis-server did not finish rewriting its AOF in 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of `pid` in KiB (None once the process is gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system, all threads) `pid` has used so far, in seconds;
/// None once the process is gone. `/proc` counts it in USER_HZ ticks, which
/// the kernel fixes at 100 per second for user space.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // its last ')'; utime and stime are the 12th and 13th from there.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Samples VmRSS of one process on a thread until stopped.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (Arc::clone(&stop), Arc::clone(&samples));
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    out.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((started.elapsed().as_secs_f64(), kib));
                }
                std::thread::sleep(every);
            }
        });
        Self {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// (seconds since start, KiB) samples.
    pub fn stop(mut self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
