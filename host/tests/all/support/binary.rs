//! The real `sktarbucks` binary as a child process on an ephemeral port.
//! The port is read from the line the binary prints once it is listening
//! (no pick-a-free-port race). Killed on drop; its log is kept for failures.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Client;

pub struct Host {
    child: Child,
    pub client: Client,
    /// `http://addr` of the admin listener, when the host opened one.
    pub admin: Option<String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The admin token every test host that opens an admin listener uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

impl Host {
    /// Start `sktarbucks serve` with `manifest` (written into `dir`) and extra args.
    pub fn start(dir: &Path, manifest: &str, args: &[&str]) -> Self {
        let manifest_path: PathBuf = dir.join("sktarbucks.toml");
        Self::launch(dir, &manifest_path, manifest, args)
    }

    /// Like a user in `dir`: `sktarbucks --config sktarbucks.toml serve ...`
    /// with relative paths, working directory `dir`.
    pub fn start_in(dir: &Path, manifest: &str, args: &[&str]) -> Self {
        Self::launch(dir, Path::new("sktarbucks.toml"), manifest, args)
    }

    fn launch(dir: &Path, manifest_path: &Path, manifest: &str, args: &[&str]) -> Self {
        Self::launch_env(dir, manifest_path, manifest, args, &[])
    }

    /// Start with extra environment variables (e.g. an armed crash point).
    pub fn start_env(dir: &Path, manifest: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let manifest_path: PathBuf = dir.join("sktarbucks.toml");
        Self::launch_env(dir, &manifest_path, manifest, args, envs)
    }

    /// Wait until the process exits by itself (a crash point fired).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Start with an admin listener on an ephemeral port and the test token.
    pub fn start_admin(dir: &Path, manifest: &str, args: &[&str]) -> Self {
        let manifest_path: PathBuf = dir.join("sktarbucks.toml");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--admin", "127.0.0.1:0"]);
        let host = Self::launch_env(
            dir,
            &manifest_path,
            manifest,
            &all,
            &[("SKTARBUCKS_ADMIN_TOKEN", ADMIN_TOKEN)],
        );
        assert!(host.admin.is_some(), "the admin listener started");
        host
    }

    fn launch_env(
        dir: &Path,
        manifest_path: &Path,
        manifest: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        std::fs::write(dir.join("sktarbucks.toml"), manifest).expect("manifest written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sktarbucks"))
            .current_dir(dir)
            .arg("--config")
            .arg(manifest_path)
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "info,wasmtime=warn")
            .env_remove("SKTARBUCKS_ADMIN_TOKEN")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sktarbucks starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let admin_url = Arc::new(Mutex::new(None::<String>));
        let admin_sink = Arc::clone(&admin_url);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("sktarbucks admin on ") {
                    *admin_sink.lock().expect("admin lock") = Some(url.to_owned());
                }
                if let Some(url) = line.strip_prefix("sktarbucks listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let started = Instant::now();
        let url = loop {
            if let Ok(url) = rx.recv_timeout(Duration::from_millis(100)) {
                break url;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "sktarbucks exited with {status} before listening:\n{}",
                    log.lock().expect("log lock").join("\n")
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "sktarbucks did not start listening:\n{}",
                log.lock().expect("log lock").join("\n")
            );
        };
        // The admin line is printed before the public one.
        let admin = admin_url.lock().expect("admin lock").clone();
        Self {
            child,
            client: Client::checked(url),
            admin,
            log,
        }
    }

    /// The process id (for `/proc` readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no drain, no cleanup, exactly like a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("wait for exit")
    }

    /// The log so far, for assertion messages.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sktarbucks log ---\n{}", self.log_text());
        }
        self.kill();
    }
}
