//! What the console's browser test (`host/tests/all/console.rs`) needs:
//! headless Chromium and its driver (Debian's `chromium` and
//! `chromium-driver`, at `/usr/bin/chromium` and `/usr/bin/chromedriver`)
//! and the `selenium` Python package.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Install what is missing: Chromium and its driver with `apt-get` (Debian
/// or Ubuntu as root), selenium with `python3 -m pip` (or Debian's
/// `python3-selenium` when pip refuses a system Python). What cannot be
/// installed fails the run under `CI=true`; otherwise it is a warning, and
/// the console test fails saying what is missing.
pub fn ensure_browser() -> Result<()> {
    let mut missing = Vec::new();
    if !browser_present() {
        if on_path("apt-get") {
            eprintln!("xtask: chromium/chromedriver not found; installing them with apt-get");
            let _ = succeeds(Command::new("apt-get").arg("update"));
            let _ = succeeds(
                Command::new("apt-get")
                    .args(["install", "-y", "chromium", "chromium-driver"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            );
        }
        if !browser_present() {
            missing
                .push("chromium and chromium-driver (`apt-get install chromium chromium-driver`)");
        }
    }
    if !selenium_present() {
        if on_path("python3") {
            eprintln!("xtask: the selenium Python package is missing; installing it with pip");
            let installed =
                succeeds(Command::new("python3").args(["-m", "pip", "install", "selenium"]));
            if !installed && on_path("apt-get") {
                eprintln!("xtask: pip could not install selenium; trying apt-get python3-selenium");
                let _ = succeeds(
                    Command::new("apt-get")
                        .args(["install", "-y", "python3-selenium"])
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                );
            }
        }
        if !selenium_present() {
            missing.push("the selenium Python package (`python3 -m pip install selenium`)");
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let msg = format!(
        "the console browser test needs {}, which could not be installed",
        missing.join(" and ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!("{msg}");
    }
    eprintln!("xtask: WARNING: {msg}; the console test will fail");
    Ok(())
}

fn browser_present() -> bool {
    Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file()
}

fn selenium_present() -> bool {
    Command::new("python3")
        .args(["-c", "import selenium"])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
}

/// Run `cmd` (its output shown); whether it exited successfully.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.status().is_ok_and(|status| status.success())
}

/// Schemathesis (PyPI) for the OpenAPI fuzz test (`host/tests/all/openapi.rs`):
/// installed with `python3 -m pip` when the `schemathesis` command is missing.
/// Under `CI=true` a failed install fails the run.
pub fn ensure_schemathesis() -> Result<()> {
    let present = || {
        Command::new("schemathesis")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if present() {
        return Ok(());
    }
    if on_path("python3") {
        eprintln!("xtask: schemathesis not found; installing it with pip");
        let _ = succeeds(Command::new("python3").args(["-m", "pip", "install", "schemathesis"]));
    }
    if present() {
        return Ok(());
    }
    let msg = "the OpenAPI test needs schemathesis (`python3 -m pip install schemathesis`), which could not be installed";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!("{msg}");
    }
    eprintln!("xtask: WARNING: {msg}; the OpenAPI test will fail");
    Ok(())
}
