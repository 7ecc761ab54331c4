//! What a bench run prints (markdown tables) and writes
//! (`target/bench/<timestamp>-<scenario>.json`), with the machine it ran on.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub git_rev: String,
    /// UTC, ISO 8601.
    pub date: String,
}

impl Machine {
    pub fn probe(root: &Path) -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .current_dir(root)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        let mut git_rev =
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
        if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) {
            git_rev.push_str("-dirty");
        }
        Self {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel,
            git_rev,
            date: utc_now().0,
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "{} cores, {}, Linux {}, git {}, {}",
            self.nproc, self.cpu_model, self.kernel, self.git_rev, self.date
        )
    }
}

/// (ISO 8601 `2025-01-31T12:34:56Z`, compact `20250131T123456Z` for file names).
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z"),
        format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z"),
    )
}

/// One line of the results table: the median over rounds of one system.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub what: String,
    pub system: String,
    pub ok_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub rss_max_mib: f64,
    /// CPU time of the server per answered request, in µs (hosts: until
    /// the run's event backlog drained, so an order's events count too).
    /// Steadier than ok/s on a shared machine. NaN where not measured.
    pub cpu_us_per_ok: f64,
    pub rounds: usize,
}

/// A measured figure against its target; `pass` is None for figures
/// reported without a target.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub measured: String,
    pub target: String,
    pub pass: Option<bool>,
}

impl Check {
    pub fn new(check: impl Into<String>, measured: String, target: &str, pass: bool) -> Self {
        Self {
            check: check.into(),
            measured,
            target: target.into(),
            pass: Some(pass),
        }
    }

    pub fn info(check: impl Into<String>, measured: String) -> Self {
        Self {
            check: check.into(),
            measured,
            target: "—".into(),
            pass: None,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Scenario {
    pub name: String,
    pub rows: Vec<Row>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    /// Every run, raw (wrk summaries, RSS samples, paced results, …).
    pub runs: Vec<serde_json::Value>,
}

/// Write `scenario` as `dir/<stamp>-<name>.json`.
pub fn write_json(
    dir: &Path,
    stamp: &str,
    machine: &Machine,
    settings: &serde_json::Value,
    scenario: &Scenario,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let path = dir.join(format!("{stamp}-{}.json", scenario.name));
    let doc = serde_json::json!({
        "machine": machine, "settings": settings, "scenario": scenario,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(path)
}

fn num(x: f64, digits: usize) -> String {
    if x.is_nan() {
        "—".into()
    } else {
        format!("{x:.digits$}")
    }
}

/// The results table (markdown) of every scenario.
pub fn rows_table(scenarios: &[Scenario]) -> String {
    let mut out = String::from(
        "| scenario | system | ok/s | p50 ms | p99 ms | non-2xx | sock err | max RSS MiB | CPU µs/ok |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in scenarios {
        for r in &s.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.what,
                r.system,
                num(r.ok_per_s, 0),
                num(r.p50_ms, 2),
                num(r.p99_ms, 2),
                r.non_2xx,
                r.socket_errors,
                num(r.rss_max_mib, 0),
                num(r.cpu_us_per_ok, 0)
            ));
        }
    }
    out
}

/// The targets table (markdown) of every scenario.
pub fn checks_table(scenarios: &[Scenario]) -> String {
    let mut out = String::from("| check | measured | target | result |\n|---|---|---|---|\n");
    for s in scenarios {
        for c in &s.checks {
            let result = match c.pass {
                Some(true) => "pass",
                Some(false) => "**FAIL**",
                None => "info",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                c.check, c.measured, c.target, result
            ));
        }
    }
    out
}
