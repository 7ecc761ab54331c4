//! A real `redis-server` per test: child process, temp dir, unix socket (no
//! port race), append-only file with fsync always (so a restart keeps every
//! acknowledged write), readiness loop, log shown on failure, killed on drop.
//! `REDIS_URL` points tests at an existing server instead (each test then
//! uses its own key prefix). Missing binary: the Redis tests fail, unless
//! `SKTARBUCKS_SKIP_REDIS=1` opts out of them explicitly (a loud skip);
//! under `CI=true` they fail even then.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The environment variable that explicitly skips the Redis tests.
pub const SKIP_VAR: &str = "SKTARBUCKS_SKIP_REDIS";

/// Whether Redis tests can run here. Without a server they fail, unless
/// skipped with `SKTARBUCKS_SKIP_REDIS=1` (outside CI): then false.
pub fn available() -> bool {
    if std::env::var_os("REDIS_URL").is_some() || which("redis-server") {
        return true;
    }
    skip_or_fail("redis-server is not installed and REDIS_URL is not set")
}

/// Whether we can spawn our own server (needed to restart it). Without
/// the binary the test fails, unless skipped like [`available`].
pub fn can_spawn() -> bool {
    which("redis-server")
        || skip_or_fail("this test restarts Redis and needs redis-server (REDIS_URL is not enough)")
}

/// Fail with `why`, unless the Redis tests are explicitly skipped.
fn skip_or_fail(why: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let skip = std::env::var(SKIP_VAR).is_ok_and(|v| v == "1");
    assert!(
        skip && !ci,
        "{why}: install redis-server, or set {SKIP_VAR}=1 to skip the Redis tests{}",
        if ci {
            " (CI=true: Redis tests must not be skipped)"
        } else {
            ""
        }
    );
    eprintln!("SKIPPING a Redis test ({SKIP_VAR}=1): {why}");
    false
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
}

pub struct RedisServer {
    pub url: String,
    child: Option<Child>,
    dir: Option<TempDir>,
    /// fsync every write (`appendfsync always`); off for bulk-data tests,
    /// where durability across a Redis restart is not what is tested.
    fsync_always: bool,
}

impl RedisServer {
    /// A connection of the test's own, for looking at or changing what
    /// the hosts keep.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("conn")
    }

    /// `REDIS_URL` if set, else a fresh server of our own.
    pub fn start() -> Self {
        match std::env::var("REDIS_URL") {
            Ok(url) => Self {
                url,
                child: None,
                dir: None,
                fsync_always: true,
            },
            Err(_) => Self::spawn(),
        }
    }

    /// Like [`start`](Self::start), but a server of our own fsyncs once a
    /// second instead of on every write (tests that load tens of thousands
    /// of documents and never restart Redis).
    pub fn start_bulk() -> Self {
        if std::env::var_os("REDIS_URL").is_some() {
            return Self::start();
        }
        let dir = tempfile::tempdir().expect("redis tempdir");
        let socket = dir.path().join("redis.sock");
        let mut server = Self {
            url: format!("redis+unix://{}", socket.display()),
            child: None,
            dir: Some(dir),
            fsync_always: false,
        };
        server.launch();
        server
    }

    /// Always a server of our own (restartable).
    pub fn spawn() -> Self {
        let dir = tempfile::tempdir().expect("redis tempdir");
        let socket = dir.path().join("redis.sock");
        let mut server = Self {
            url: format!("redis+unix://{}", socket.display()),
            child: None,
            dir: Some(dir),
            fsync_always: true,
        };
        server.launch();
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir
            .as_ref()
            .expect("own server")
            .path()
            .join("redis.sock")
    }

    fn log(&self) -> String {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.path().join("redis.log")).ok())
            .unwrap_or_default()
    }

    fn launch(&mut self) {
        let dir = self.dir.as_ref().expect("own server").path().to_path_buf();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                if self.fsync_always {
                    "always"
                } else {
                    "everysec"
                },
            ])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let ready = redis::Client::open(self.url.as_str())
                .and_then(|client| client.get_connection())
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
                .is_ok();
            if ready {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not become ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the server (SIGKILL) and leave it down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same socket and data (after `kill`).
    pub fn relaunch(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("--- redis-server log ---\n{}", self.log());
        }
        self.kill();
    }
}

/// One section of `INFO`.
pub async fn info(conn: &mut redis::aio::MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("info")
}

/// Calls of `command` since the server started or the last `CONFIG
/// RESETSTAT` (commands a script ran included).
pub async fn calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    info(conn, "commandstats")
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("calls"))
}
