//! One serving host per SQLite data directory: a second `serve` on the same
//! directory is refused with a clear message and changes nothing, and a host
//! killed with SIGKILL leaves no stale lock behind.

use std::time::Duration;

use crate::support::binary::Host;
use crate::support::manifest;

#[tokio::test(flavor = "multi_thread")]
async fn a_second_host_on_one_sqlite_directory_is_refused_until_the_first_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = manifest(dir.path());
    let mut first = Host::start(dir.path(), &text, &["--listen", "127.0.0.1:0"]);
    first.client.seed_item(1, 10).await;

    // The second host: same manifest and data, its own ephemeral port.
    let second = tokio::task::spawn_blocking({
        let config = dir.path().join("sktarbucks.toml");
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_sktarbucks"))
                .arg("--config")
                .arg(&config)
                .args(["serve", "--listen", "127.0.0.1:0"])
                .env("RUST_LOG", "info,wasmtime=warn")
                .env_remove("SKTARBUCKS_ADMIN_TOKEN")
                .output()
                .expect("the second host runs")
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(60), second)
        .await
        .expect("the second host exits by itself instead of serving")
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second host must not start: {stderr}"
    );
    let expected = format!("in use by another sktarbucks host (pid {})", first.pid());
    assert!(
        stderr.contains(&expected),
        "the refusal names the directory's holder ({expected}):\n{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "the refused host never listened"
    );

    // The first host kept serving, and its data is untouched.
    let (s, item) = first.client.get("/cafes/1").await;
    assert_eq!(s, 200, "{item}");
    assert_eq!(item["pcnt"], 10);

    // SIGKILL: the kernel drops the lock with the process; a new host starts
    // on the same directory and finds the data.
    first.kill();
    let third = Host::start(dir.path(), &text, &["--listen", "127.0.0.1:0"]);
    let (s, item) = third.client.get("/cafes/1").await;
    assert_eq!(s, 200, "{item}");
    assert_eq!(item["pcnt"], 10);
}
