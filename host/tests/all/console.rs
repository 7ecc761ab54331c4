//! The operator console (`GET /admin/ui`) in a real headless browser: the
//! spawned binary gets one dead letter and one component with a version to
//! roll back to, then `host/tests/console/console_test.py` (selenium,
//! Chromium) signs in, replays the dead letter, rolls the component back and
//! deploys it again through the page's form, checking each step against the
//! admin API too, and saves a screenshot to `<target>/console.png`.
//!
//! Needs `/usr/bin/chromium`, `/usr/bin/chromedriver` and the selenium
//! Python package; `cargo xtask test` installs them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::binary::{ADMIN_TOKEN, Host};
use crate::support::{eventually, manifest_text, root, test_config};

const PATIENCE: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// What the browser test needs and this machine lacks.
fn missing_tooling() -> Vec<String> {
    let mut missing = Vec::new();
    for tool in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(tool).is_file() {
            missing.push(tool.to_owned());
        }
    }
    match Command::new("python3")
        .args(["-c", "import selenium"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(_) => missing.push("the selenium Python package".to_owned()),
        Err(_) => missing.push("python3".to_owned()),
    }
    missing
}

/// Fail at once, saying what to install, when the tooling is missing.
fn require_browser() {
    let missing = missing_tooling();
    if missing.is_empty() {
        return;
    }
    let missing = missing.join(", ");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true: the console browser test cannot run, missing: {missing}");
    }
    panic!(
        "the console browser test needs headless Chromium and selenium, missing: {missing}. \
         Run `cargo xtask test` (it installs them), or install them yourself: \
         `apt-get install -y chromium chromium-driver && python3 -m pip install selenium`"
    );
}

/// One admin call: status and JSON body (Null when not JSON).
async fn admin(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        req = req.header("content-type", "application/wasm").body(body);
    }
    let resp = req.send().await.expect("admin request");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("admin body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn dead_letters(base: &str) -> Vec<Value> {
    let (s, body) = admin(base, reqwest::Method::GET, "/admin/dead-letters", None).await;
    assert_eq!(s, 200, "GET /admin/dead-letters: {body}");
    body.as_array().expect("dead letters are an array").clone()
}

async fn digest_of(base: &str, name: &str) -> String {
    let (s, body) = admin(base, reqwest::Method::GET, "/admin/components", None).await;
    assert_eq!(s, 200, "GET /admin/components: {body}");
    body["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["digest"].as_str())
        .expect("the component is listed with a digest")
        .to_owned()
}

/// Where the screenshot goes: `<target>/console.png`.
fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("console.png")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_the_host_and_its_buttons_act() {
    require_browser();
    let dir = tempfile::tempdir().expect("tempdir");
    let host = Host::start_admin(
        dir.path(),
        &manifest_text(&test_config(dir.path())),
        &["--listen", "127.0.0.1:0"],
    );
    let base = host.admin.clone().expect("admin listener");

    // The page is static and needs no token; the data behind it does.
    let page = reqwest::get(format!("{base}/admin/ui"))
        .await
        .expect("console page");
    assert_eq!(page.status().as_u16(), 200);
    let content_type = page
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = page.text().await.expect("console html");
    assert!(html.contains("/admin/ui/console.js"), "{html}");
    for path in [
        "/admin/dead-letters",
        "/admin/swaps",
        "/admin/dead-letters/1/replay",
    ] {
        let status = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .send()
            .await
            .expect("admin request")
            .status()
            .as_u16();
        assert_eq!(status, 401, "{path} without the token");
    }
    let (s, body) = admin(
        &base,
        reqwest::Method::POST,
        "/admin/dead-letters/424242/replay",
        None,
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (404, Some("dead_letter_not_found")),
        "{body}"
    );

    // One dead letter: faulty refuses a poison event until its attempts are spent.
    let (s, body) = host
        .client
        .raw(
            "POST",
            "/faulty/forge?topic=faulty.poison&key=p",
            Some("poison"),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let letter = eventually("the poison event is dead-lettered", PATIENCE, || async {
        dead_letters(&base)
            .await
            .into_iter()
            .find(|d| d["topic"] == "faulty.poison")
    })
    .await;
    for field in [
        "id",
        "subscriber",
        "eventId",
        "topic",
        "key",
        "payload",
        "source",
        "attempts",
        "error",
        "deadAtMs",
        // The forging request's id, carried by its event into the letter.
        "requestId",
    ] {
        assert!(!letter[field].is_null(), "{field} missing: {letter}");
    }
    assert_eq!(letter["subscriber"], "faulty");
    assert!(
        letter["error"]
            .as_str()
            .unwrap_or_default()
            .contains("poison pill"),
        "{letter}"
    );
    let letter_id = letter["id"].as_str().expect("dead letter id").to_owned();

    // A version to roll back from: cafe, tagged; its file for the deploy form.
    let tagged_cafe = crate::support::tagged("cafe", "console");
    let tagged_file = dir.path().join("cafe-console.wasm");
    std::fs::write(&tagged_file, &tagged_cafe).expect("tagged cafe written");
    let (s, body) = admin(
        &base,
        reqwest::Method::PUT,
        "/admin/components/cafe",
        Some(tagged_cafe),
    )
    .await;
    assert_eq!((s, body["changed"].as_bool()), (200, Some(true)), "{body}");
    let original = body["previous"].as_str().expect("previous").to_owned();
    let deployed = body["digest"].as_str().expect("digest").to_owned();

    let screenshot = screenshot_path();
    let script = root().join("host/tests/console/console_test.py");
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(&script)
        .args(["--url", base.as_str()])
        .arg("--screenshot")
        .arg(&screenshot)
        .args(["--dead-letter", letter_id.as_str(), "--rollback", "cafe"])
        .arg("--deploy")
        .arg(format!("cafe={}", tagged_file.display()))
        .env("SKTARBUCKS_ADMIN_TOKEN", ADMIN_TOKEN)
        .kill_on_drop(true);
    eprintln!("running {command:?}");
    let out = command.output().await.expect("python3 runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("--- console_test.py stdout ---\n{stdout}--- console_test.py stderr ---\n{stderr}");
    assert!(
        out.status.success(),
        "console_test.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(screenshot.is_file(), "{} was saved", screenshot.display());

    // What the clicks did, seen from the API: the dead letter was really
    // redelivered (faulty refused it again, so it is back under a new id),
    // cafe was rolled back and then deployed again from the form.
    eventually(
        "the replayed event is dead-lettered again",
        PATIENCE,
        || async {
            let letters = dead_letters(&base).await;
            assert!(
                letters.iter().all(|d| d["id"] != letter_id.as_str()),
                "the replayed dead letter is gone: {letters:?}"
            );
            letters
                .iter()
                .any(|d| d["topic"] == "faulty.poison")
                .then_some(())
        },
    )
    .await;
    assert_eq!(digest_of(&base, "cafe").await, deployed);
    let (s, swaps) = admin(&base, reqwest::Method::GET, "/admin/swaps", None).await;
    assert_eq!(s, 200, "{swaps}");
    let history: Vec<(&str, &str, &str, &str)> = swaps
        .as_array()
        .expect("swaps are an array")
        .iter()
        .map(|s| {
            (
                s["component"].as_str().unwrap_or_default(),
                s["source"].as_str().unwrap_or_default(),
                s["previous"].as_str().unwrap_or_default(),
                s["digest"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let (original, deployed) = (original.as_str(), deployed.as_str());
    assert_eq!(
        history,
        vec![
            ("cafe", "deploy", original, deployed),
            ("cafe", "rollback", deployed, original),
            ("cafe", "deploy", original, deployed),
        ],
        "newest first: the form's deploy, the page's rollback, the setup's deploy"
    );
}
