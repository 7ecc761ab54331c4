//! Hot swap against the real binary: versions replaced under load with no
//! failed request, refused versions that leave the old one serving,
//! rollback, the admin API's auth, deployments that survive a restart and
//! reach every host on one Redis, and manifest reloads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::binary::{ADMIN_TOKEN, Host};
use crate::support::redis::{RedisServer, available};
use crate::support::{Client, eventually, manifest_text, test_config, wasm};

const PATIENCE: Duration = Duration::from_secs(60);

fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A client of a host's admin API.
#[derive(Clone)]
struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    fn of(host: &Host) -> Self {
        Self {
            base: host.admin.clone().expect("admin listener"),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
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

    async fn deploy(&self, name: &str, bytes: Vec<u8>) -> (u16, Value) {
        self.call(
            "PUT",
            &format!("/admin/components/{name}"),
            Some(bytes),
            Some(ADMIN_TOKEN),
        )
        .await
    }

    async fn rollback(&self, name: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/admin/components/{name}/rollback"),
            None,
            Some(ADMIN_TOKEN),
        )
        .await
    }

    /// name → listing entry.
    async fn components(&self) -> HashMap<String, Value> {
        let (status, body) = self
            .call("GET", "/admin/components", None, Some(ADMIN_TOKEN))
            .await;
        assert_eq!(status, 200, "{body}");
        body["components"]
            .as_array()
            .expect("components")
            .iter()
            .map(|c| (c["name"].as_str().expect("name").to_owned(), c.clone()))
            .collect()
    }

    async fn digest_of(&self, name: &str) -> String {
        self.components().await[name]["digest"]
            .as_str()
            .expect("digest")
            .to_owned()
    }
}

/// The version header of a GET on `path`.
async fn served_by(c: &Client, path: &str) -> String {
    let resp = reqwest::get(format!("{}{path}", c.base))
        .await
        .expect("request");
    resp.headers()
        .get("x-sktarbucks-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn sqlite_host(dir: &std::path::Path) -> Host {
    Host::start_admin(
        dir,
        &manifest_text(&test_config(dir)),
        &["--listen", "127.0.0.1:0"],
    )
}

/// Requests, orders and cancels run while each of the four components is
/// swapped back and forth: no request fails, every effect happens once.
#[tokio::test(flavor = "multi_thread")]
async fn components_swap_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = sqlite_host(dir.path());
    let (c, admin) = (host.client.clone(), Admin::of(&host));
    c.seed_item(1, 100000).await;
    let names = ["cafe", "order", "production", "mypage"];
    let originals: HashMap<&str, String> = names
        .iter()
        .map(|n| (*n, digest(&std::fs::read(wasm(n)).expect("bytes"))))
        .collect();
    let variants: HashMap<&str, Vec<u8>> = names
        .iter()
        .map(|n| (*n, crate::support::tagged(n, "b")))
        .collect();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for worker in 0..8u64 {
        let (c, stop) = (c.clone(), std::sync::Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let (mut placed, mut canceled, mut failures) = (Vec::new(), 0u64, Vec::new());
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let (s, body) = match i % 3 {
                    0 => c.get("/cafes/1").await,
                    _ => {
                        c.send(
                            "POST",
                            "/orders",
                            json!({"custNm": format!("w{worker}"), "cafeId": 1}),
                        )
                        .await
                    }
                };
                if s >= 500 || s == 0 {
                    failures.push((s, body));
                    continue;
                }
                if let Some(id) = body["id"].as_u64() {
                    placed.push(id);
                    if id % 4 == 0 {
                        let (s, body) = c.raw("POST", &format!("/orders/{id}/cancel"), None).await;
                        if s == 200 {
                            canceled += 1;
                        } else {
                            failures.push((s, body));
                        }
                    }
                }
            }
            (placed, canceled, failures)
        }));
    }
    // Swap every component to the variant and back, three rounds, ending on
    // the variant.
    let mut swaps = 0;
    for round in 0..3 {
        for name in names {
            let (s, body) = admin.deploy(name, variants[name].clone()).await;
            assert_eq!(s, 200, "deploy {name}: {body}");
            assert_eq!(body["changed"], true);
            swaps += 1;
            if round < 2 {
                let original = std::fs::read(wasm(name)).expect("bytes");
                let (s, body) = admin.deploy(name, original).await;
                assert_eq!(s, 200, "redeploy {name}: {body}");
                swaps += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut placed, mut canceled, mut failures) = (Vec::new(), 0, Vec::new());
    for t in clients {
        let (p, k, f) = t.await.expect("client task");
        placed.extend(p);
        canceled += k;
        failures.extend(f);
    }
    eprintln!(
        "swap under load: {swaps} swaps, {} orders, {canceled} cancels, {} failures",
        placed.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(placed.len() > 50, "the load ran during the swaps");
    // Responses come from the new versions, and stay there.
    let listing = admin.components().await;
    for name in names {
        let d = digest(&variants[name]);
        assert_eq!(listing[name]["digest"], d.as_str());
        assert_ne!(d, originals[name]);
    }
    let variant_cafe = digest(&variants["cafe"]);
    for _ in 0..20 {
        assert_eq!(served_by(&c, "/cafes/1").await, variant_cafe[..12]);
    }
    // Every effect exactly once: stock, productions, pages.
    let kept = placed.len() as u64 - canceled;
    eventually("stock settled", PATIENCE, || async {
        let (_, cafe) = c.get("/cafes/1").await;
        (cafe["pcnt"] == json!(100000 - kept)).then_some(())
    })
    .await;
    eventually("productions and pages settled", PATIENCE, || async {
        let prods = c.get_all("/productions?limit=1000").await.items;
        let pages = c.get_all("/myPages?limit=1000").await.items;
        let prod_canceled = prods.iter().filter(|p| p["status"] == "CANCELED").count() as u64;
        let settled = pages.iter().all(|p| {
            p["status"]
                == p["productionStatus"]
                    .as_str()
                    .map(|s| if s == "REGISTERED" { "ORDERED" } else { s })
                    .unwrap_or("")
        });
        (prods.len() == placed.len()
            && pages.len() == placed.len()
            && prod_canceled == canceled
            && settled)
            .then_some(())
    })
    .await;
    let db = dir.path().join("sktarbucks.db");
    let conn = rusqlite::Connection::open(db).expect("db");
    let twice: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT json_extract(CAST(payload AS TEXT), '$.orderId') AS o
               FROM events WHERE topic = 'cafe.stock-released' GROUP BY o HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(twice, 0, "no order's stock was released twice");
    let released: i64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE topic = 'cafe.stock-released'",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(released as u64, canceled, "one release per cancel");
}

/// Refused versions get a 422 with the reason; the old version keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn bad_versions_are_refused_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = sqlite_host(dir.path());
    let (c, admin) = (host.client.clone(), Admin::of(&host));
    let before = admin.components().await;
    let trapping = crate::support::variant_wasm("faulty");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "cafe",
            b"definitely not wasm".to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "cafe",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module",
        ),
        (
            "cafe",
            std::fs::read(wasm("production")).expect("bytes"),
            "does not export `stock`",
        ),
        (
            "faulty",
            std::fs::read(&trapping)
                .expect("the trapping faulty variant is built by `cargo xtask build`"),
            "smoke test failed",
        ),
    ];
    for (name, bytes, reason) in cases {
        let (s, body) = admin.deploy(name, bytes).await;
        assert_eq!(s, 422, "{name}: {body}");
        assert_eq!(body["error"], "refused");
        let message = body["message"].as_str().unwrap_or("");
        assert!(
            message.contains(reason),
            "{name}: {message:?} should say {reason:?}"
        );
    }
    let (s, body) = admin
        .deploy("nothere", crate::support::tagged("cafe", "x"))
        .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (404, Some("component_not_found"))
    );
    let after = admin.components().await;
    for name in ["cafe", "faulty"] {
        assert_eq!(
            before[name]["digest"], after[name]["digest"],
            "{name} untouched"
        );
    }
    let (s, _) = c
        .send(
            "POST",
            "/cafes",
            json!({"cafeId": 1, "cafeNm": "x", "chkDate": "1", "pcnt": 1}),
        )
        .await;
    assert_eq!(s, 201, "cafe still serves");
    let (s, _) = c.get("/faulty/counts").await;
    assert_eq!(s, 200, "faulty still serves");
}

/// Rollback returns to the previous digest and its behaviour; with no
/// previous version left it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_the_previous_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = sqlite_host(dir.path());
    let (c, admin) = (host.client.clone(), Admin::of(&host));
    let original = admin.digest_of("cafe").await;
    let b = crate::support::tagged("cafe", "b");
    let (s, body) = admin.deploy("cafe", b.clone()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["previous"], original.as_str());
    let (s, body) = admin.deploy("cafe", b.clone()).await;
    assert_eq!(
        (s, body["changed"].as_bool()),
        (200, Some(false)),
        "same digest: no-op"
    );
    assert_eq!(served_by(&c, "/cafes").await, digest(&b)[..12]);
    let listing = admin.components().await;
    assert_eq!(listing["cafe"]["source"], "deployed");
    assert_eq!(listing["cafe"]["rollback"], json!([original]));
    let (s, body) = admin.rollback("cafe").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["digest"], original.as_str());
    assert_eq!(admin.digest_of("cafe").await, original);
    assert_eq!(served_by(&c, "/cafes").await, original[..12]);
    let (s, body) = admin.rollback("cafe").await;
    assert_eq!(s, 422, "nothing left to roll back to: {body}");
}

/// Every admin route needs the token; none answers on the public port.
#[tokio::test(flavor = "multi_thread")]
async fn admin_routes_need_the_token_and_stay_off_the_public_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = sqlite_host(dir.path());
    let admin = Admin::of(&host);
    let routes = [
        ("GET", "/admin/components"),
        ("PUT", "/admin/components/cafe"),
        ("POST", "/admin/components/cafe/rollback"),
        ("POST", "/admin/reload"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong"), Some("")] {
            let (s, body) = admin.call(method, path, Some(b"x".to_vec()), token).await;
            assert_eq!(
                (s, body["error"].as_str()),
                (401, Some("unauthorized")),
                "{method} {path} {token:?}"
            );
        }
        let (s, _) = host.client.raw(method, path, Some("x")).await;
        assert_eq!(s, 404, "{method} {path} is not on the public port");
    }
    // Without a token the admin listener refuses to start.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let manifest = dir2.path().join("m.toml");
    std::fs::write(&manifest, manifest_text(&test_config(dir2.path()))).expect("manifest");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sktarbucks"))
        .arg("--config")
        .arg(&manifest)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("SKTARBUCKS_ADMIN_TOKEN")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn restart_keeps_the_deployed_version(redis: Option<&RedisServer>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    if let Some(redis) = redis {
        config.redis_prefix = format!("restart{}", std::process::id());
        args.extend(["--redis".to_owned(), redis.url.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = manifest_text(&config);
    let mut host = Host::start_admin(dir.path(), &text, &args);
    let b = crate::support::tagged("cafe", "b");
    let (s, body) = Admin::of(&host).deploy("cafe", b.clone()).await;
    assert_eq!(s, 200, "{body}");
    assert!(host.terminate().success());
    let host = Host::start_admin(dir.path(), &text, &args);
    let admin = Admin::of(&host);
    assert_eq!(
        admin.digest_of("cafe").await,
        digest(&b),
        "the deployed version came back"
    );
    assert_eq!(admin.components().await["cafe"]["source"], "deployed");
    assert_eq!(served_by(&host.client, "/cafes").await, digest(&b)[..12]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_the_deployed_version_on_sqlite() {
    restart_keeps_the_deployed_version(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_the_deployed_version_on_redis() {
    if available() {
        let redis = RedisServer::start();
        restart_keeps_the_deployed_version(Some(&redis)).await;
    }
}

/// A deploy on one host reaches the others within 2 s; so does a rollback;
/// a host started later runs the active version.
#[tokio::test(flavor = "multi_thread")]
async fn deployments_reach_every_host_on_one_redis() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.redis_prefix = format!("swap{}", std::process::id());
    let text = manifest_text(&config);
    let args = ["--listen", "127.0.0.1:0", "--redis", redis.url.as_str()];
    let start = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        Host::start_admin(&d, &text, &args)
    };
    let (a, b) = (start("a"), start("b"));
    let (admin_a, admin_b) = (Admin::of(&a), Admin::of(&b));
    let original = admin_a.digest_of("order").await;
    let v = crate::support::tagged("order", "b");
    let (s, body) = admin_a.deploy("order", v.clone()).await;
    assert_eq!(s, 200, "{body}");
    let t0 = Instant::now();
    eventually(
        "host B runs the deployed version",
        Duration::from_secs(2),
        || async { (admin_b.digest_of("order").await == digest(&v)).then_some(()) },
    )
    .await;
    eprintln!("deploy on A reached B after {:?}", t0.elapsed());
    let (s, body) = admin_b.rollback("order").await;
    assert_eq!(s, 200, "{body}");
    let t0 = Instant::now();
    eventually(
        "host A follows the rollback",
        Duration::from_secs(2),
        || async { (admin_a.digest_of("order").await == original).then_some(()) },
    )
    .await;
    eprintln!("rollback on B reached A after {:?}", t0.elapsed());
    let (s, body) = admin_a.deploy("order", v.clone()).await;
    assert_eq!(s, 200, "{body}");
    let c = start("c");
    assert_eq!(
        Admin::of(&c).digest_of("order").await,
        digest(&v),
        "a later host runs the active version"
    );
    assert_eq!(served_by(&c.client, "/orders").await, digest(&v)[..12]);
}

/// A reload applies a new route and a changed deadline without a restart;
/// a broken manifest is refused whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_reload_applies_whole_or_not_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    let host = Host::start_admin(
        dir.path(),
        &manifest_text(&config),
        &["--listen", "127.0.0.1:0"],
    );
    let (c, admin) = (host.client.clone(), Admin::of(&host));
    let reload = || async {
        admin
            .call("POST", "/admin/reload", None, Some(ADMIN_TOKEN))
            .await
    };
    let (s, body) = c.get("/menu").await;
    assert_eq!(s, 404);
    assert!(
        body["message"].as_str().unwrap_or("").contains("routes:"),
        "the host answers: {body}"
    );
    let (s, _) = c.get("/faulty/sleep?ms=300").await;
    assert_eq!(s, 200, "300 ms fits the 500 ms deadline");

    // A broken manifest (a route claimed twice) changes nothing.
    let mut broken = config.clone();
    if let Some(f) = broken.components.get_mut("faulty") {
        f.deadline_ms = 100;
        f.routes.push("/cafes".into());
    }
    std::fs::write(
        dir.path().join("sktarbucks.toml"),
        manifest_text_unchecked(&broken),
    )
    .expect("write");
    let (s, body) = reload().await;
    assert_eq!(s, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("claimed by both"),
        "{body}"
    );
    let (s, _) = c.get("/faulty/sleep?ms=300").await;
    assert_eq!(s, 200, "the old deadline still applies");

    if let Some(cafe) = config.components.get_mut("cafe") {
        cafe.routes.push("/menu".into());
    }
    if let Some(f) = config.components.get_mut("faulty") {
        f.deadline_ms = 150;
    }
    std::fs::write(dir.path().join("sktarbucks.toml"), manifest_text(&config)).expect("write");
    let (s, body) = reload().await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = c.get("/menu").await;
    assert_eq!(s, 404);
    assert_eq!(body["error"], "not_found");
    assert!(
        !served_by(&c, "/menu").await.is_empty(),
        "cafe answers /menu now"
    );
    let (s, body) = c.get("/faulty/sleep?ms=300").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (504, Some("timeout")),
        "the new deadline applies"
    );
}

/// TOML of a configuration that `Config::check` would refuse.
fn manifest_text_unchecked(config: &sktarbucks::config::Config) -> String {
    config.to_toml().expect("serializes")
}

/// `sktarbucks status` prints one line per component from the admin API.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_command_summarises_a_running_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = sqlite_host(dir.path());
    let admin = host.admin.clone().expect("admin");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sktarbucks"))
        .args(["status", "--admin", &admin])
        .env("SKTARBUCKS_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = Admin::of(&host).digest_of("cafe").await;
    let cafe = text
        .lines()
        .find(|l| l.starts_with("cafe "))
        .unwrap_or_else(|| panic!("a line for cafe in\n{text}"));
    assert!(
        cafe.contains(&digest[..12]) && cafe.contains("closed") && cafe.contains("/cafes"),
        "{cafe}"
    );
    let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_sktarbucks"))
        .args(["status", "--admin", &admin])
        .env("SKTARBUCKS_ADMIN_TOKEN", "wrong")
        .output()
        .expect("runs");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
}
