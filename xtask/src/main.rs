//! `cargo xtask <command>`: one-command build, serve, test and bench.
//!
//! Guests are built here (not in a `build.rs`) so nested cargo invocations do
//! not contend for locks or rebuild the host.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result, bail};

mod browser;

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  build              wasm32-wasip2 target + components + host (release, for tests)
  build-dist         components + the host and its examples in the `dist` profile
                     (thin LTO, one codegen unit): what serve, dev and bench run
  build-components   only the components
  serve [args]       build, then `sktarbucks serve --admin 127.0.0.1:9090 [args]`
  dev [args]         like serve, with --watch: rebuilt components are redeployed
  test [args]        build, make sure redis-server exists, run every test
  bench [args]       build, install wrk (and redis-server) when missing, then
                     benchmark the binary against a bare hyper server:
                     [--seconds 5] [--clients 32] [--rounds 2] [--no-redis]
                     [--only get,orders,hot,pipeline,backlog,soak] [--soak-rss]
  soak [minutes]     build, then kill and restart hosts and Redis under mixed
                     load; prints orders acknowledged, lost, duplicated, 5xx
";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "build" => build(),
        "build-dist" => build_dist(),
        "build-components" => build_components(),
        "serve" | "dev" => {
            build_dist()?;
            let bin = root().join("target/dist/sktarbucks");
            let mut all = vec!["serve".to_owned()];
            if command == "dev" {
                all.push("--watch".to_owned());
            }
            let mut cmd = Command::new(bin);
            // The admin listener is on by default here; it needs a token.
            if !rest.iter().any(|a| a == "--admin")
                && std::env::var_os("SKTARBUCKS_ADMIN").is_none()
            {
                all.extend(["--admin".to_owned(), "127.0.0.1:9090".to_owned()]);
            }
            if std::env::var_os("SKTARBUCKS_ADMIN_TOKEN").is_none() {
                let token = random_token()?;
                eprintln!("xtask: admin API token for this run: {token}");
                eprintln!(
                    "xtask: export SKTARBUCKS_ADMIN_TOKEN={token}  # for `sktarbucks components|deploy|rollback|reload`"
                );
                cmd.env("SKTARBUCKS_ADMIN_TOKEN", token);
            }
            all.extend(rest);
            run(cmd.args(all).current_dir(root()))
        }
        "test" => test(&rest),
        "bench" => {
            build_dist()?;
            ensure_wrk()?;
            if !rest.iter().any(|a| a == "--no-redis") {
                ensure_redis_for_bench()?;
            }
            // Run as built, like soak (a `cargo run` could rebuild with
            // other features); it starts the binary and `bare` itself, both
            // from its own profile's directory (target/dist).
            let bench = root().join("target/dist/examples/bench");
            run(Command::new(bench).args(&rest).current_dir(root()))
        }
        "soak" => {
            build()?;
            ensure_redis()?;
            // `build` made every target, examples included: run it as built
            // (a `cargo run` would rebuild the library with other features).
            let soak = root().join("target/release/examples/soak");
            run(Command::new(soak).args(&rest).current_dir(root()))
        }
        _ => {
            eprint!("{USAGE}");
            if command.is_empty() || command == "help" || command == "--help" {
                Ok(())
            } else {
                bail!("unknown command {command:?}")
            }
        }
    }
}

/// 128 random bits as hex, from the OS.
fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for an admin token; set SKTARBUCKS_ADMIN_TOKEN")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let status: ExitStatus = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn ensure_wasm_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match out {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("wasm32-wasip2") => Ok(()),
        Ok(_) => {
            eprintln!("xtask: installing the wasm32-wasip2 target");
            run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))
        }
        Err(e) => {
            eprintln!("xtask: rustup not found ({e}); assuming wasm32-wasip2 is available");
            Ok(())
        }
    }
}

fn build_components() -> Result<()> {
    ensure_wasm_target()?;
    run(cargo().current_dir(root().join("components")).args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
    ]))?;
    // Test guests the host must refuse to deploy: subscriptions() traps
    // (faulty) or never returns (hostile).
    for (package, feature) in [
        ("faulty", "trap-subscriptions"),
        ("hostile", "loop-subscriptions"),
    ] {
        run(cargo().current_dir(root().join("components")).args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--package",
            package,
            "--features",
            feature,
            "--target-dir",
            "target/variants",
        ]))?;
    }
    Ok(())
}

fn build() -> Result<()> {
    build_components()?;
    // Every target at once: tests enable dev-dependency features (rustix,
    // via tempfile) that wasmtime shares, so building the binary alone
    // would make `cargo test` rebuild wasmtime with different features.
    run(cargo().args(["build", "--release", "--workspace", "--all-targets"]))
}

/// The binary users run and the bench measures: the `dist` profile (thin
/// LTO, one codegen unit, not incremental; ~10 % less host CPU per request
/// than `release`, whose incremental build keeps the test loop quick). The
/// examples are built with it so that bench, bare and the host share one
/// feature set and one build of wasmtime.
fn build_dist() -> Result<()> {
    build_components()?;
    run(cargo().args([
        "build",
        "--profile",
        "dist",
        "--package",
        "sktarbucks",
        "--bins",
        "--examples",
    ]))
}

/// Tests need a real `redis-server`; install it when missing (Debian/Ubuntu
/// as root), otherwise explain. Under `CI=true` a missing Redis is fatal.
fn ensure_redis() -> Result<()> {
    if std::env::var_os("REDIS_URL").is_some() || which("redis-server") {
        return Ok(());
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !ci && std::env::var("SKTARBUCKS_SKIP_REDIS").is_ok_and(|v| v == "1") {
        eprintln!("xtask: redis-server not found; SKTARBUCKS_SKIP_REDIS=1 skips the Redis tests");
        return Ok(());
    }
    if apt_install("redis-server", "redis-server") {
        return Ok(());
    }
    let msg = "redis-server is not installed and could not be installed; \
               install it (e.g. `apt-get install redis-server`) or set REDIS_URL";
    if ci {
        bail!("{msg}");
    }
    eprintln!("xtask: WARNING: {msg}; Redis tests will fail (SKTARBUCKS_SKIP_REDIS=1 skips them)");
    Ok(())
}

/// The bench's load generator is `wrk` (a separate process, Debian's
/// package). Install it with apt-get when missing (as root); otherwise fail
/// with what to do: there is no in-process fallback, by design.
fn ensure_wrk() -> Result<()> {
    if which("wrk") {
        return Ok(());
    }
    if apt_install("wrk", "wrk") {
        return Ok(());
    }
    bail!(
        "wrk is not installed and could not be installed; install it \
         (`apt-get install wrk` as root, or your distribution's package) and run again"
    )
}

/// The bench starts its own `redis-server` for the Redis figures: install
/// it when missing, or fail saying how to skip them (`--no-redis`).
fn ensure_redis_for_bench() -> Result<()> {
    if which("redis-server") || apt_install("redis-server", "redis-server") {
        return Ok(());
    }
    bail!(
        "redis-server is not installed and could not be installed; install it \
         (`apt-get install redis-server`) or pass --no-redis to skip the Redis figures"
    )
}

/// Install Debian `package` with apt-get (as root) when `bin` is missing;
/// true when `bin` is on the PATH afterwards.
fn apt_install(package: &str, bin: &str) -> bool {
    if !which("apt-get") {
        return false;
    }
    eprintln!("xtask: {bin} not found; installing {package} with apt-get");
    let _ = run(Command::new("apt-get").arg("update"));
    run(Command::new("apt-get").args(["install", "-y", package])).is_ok() && which(bin)
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
}

fn test(rest: &[String]) -> Result<()> {
    build()?;
    ensure_redis()?;
    browser::ensure_browser()?;
    browser::ensure_schemathesis()?;
    let mut totals = Totals::default();
    let components = run_tests(
        cargo().current_dir(root().join("components")).arg("test"),
        &mut totals,
    );
    let host = run_tests(
        cargo()
            .args(["test", "--release", "--workspace"])
            .args(rest),
        &mut totals,
    );
    // The last line is the plain total over every test binary (CI reads it).
    println!("{} passed, {} failed", totals.passed, totals.failed);
    components?;
    host
}

/// Passed and failed tests summed over every `test result:` line.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    /// Add the counts of a libtest summary line
    /// (`test result: ok. 12 passed; 0 failed; 1 ignored; ...`).
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            if let [.., n, what] = words.as_slice() {
                let n: u64 = n.parse().unwrap_or(0);
                match *what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

/// Run a `cargo test`, echoing its output, and add its summary lines to
/// `totals`. A run that fails without a summary line (it did not build)
/// still fails the whole command.
fn run_tests(cmd: &mut Command, totals: &mut Totals) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("failed to read test output")?;
            println!("{line}");
            totals.add_line(&line);
        }
    }
    let status = child.wait().context("failed to wait for cargo test")?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
