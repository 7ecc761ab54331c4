//! Test support: paths to the real components, an in-process host with a
//! real backend, an HTTP client, and a spawned `sktarbucks` binary.

#![allow(dead_code)]

pub mod binary;
pub mod contract;
pub mod harness;
pub mod redis;

use std::path::PathBuf;

use sktarbucks::config::{ComponentConfig, Config, Synchronous};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Run each listed `async fn(Kind)` once per backend: `name::sqlite` and
/// `name::redis` (without redis-server the Redis one fails, unless
/// `SKTARBUCKS_SKIP_REDIS=1` skips it loudly; see `support::redis`).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::support::harness::Kind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn redis() {
                if $crate::support::redis::available() {
                    super::$name($crate::support::harness::Kind::Redis).await
                }
            }
        }
    )* };
}

/// A test variant built by `cargo xtask build` into `target/variants`.
pub fn variant_wasm(name: &str) -> PathBuf {
    built("components/target/variants", name)
}

/// A component built by `cargo xtask build`.
pub fn wasm(name: &str) -> PathBuf {
    built("components/target", name)
}

/// `<target>/wasm32-wasip2/release/<name>.wasm` under the root, which must exist.
fn built(target: &str, name: &str) -> PathBuf {
    let path = root().join(format!("{target}/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask build` first",
        path.display()
    );
    path
}

/// Compile cache shared by all tests of this run (components compile once).
pub fn compile_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile-cache")
}

/// The configuration used by tests, built as a typed `Config`: the four
/// cafe components plus the hostile `faulty` guest, with short deadlines
/// and quick retries; state under `data`.
pub fn test_config(data: &std::path::Path) -> Config {
    let mut config = Config::parse("", data).expect("an empty manifest parses");
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.data = data.to_path_buf();
    config.compile_cache = Some(compile_cache());
    config.sqlite.synchronous = Synchronous::Normal;
    config.events.max_attempts = 3;
    config.events.backoff_ms = 20;
    config.events.backoff_max_ms = 100;
    config.events.claim_idle_ms = 7_000;
    let mut add = |name: &str, route: &str| {
        let mut c = ComponentConfig::new(wasm(name));
        c.routes = vec![route.to_owned()];
        config.components.insert(name.to_owned(), c);
    };
    add("cafe", "/cafes");
    add("order", "/orders");
    add("production", "/productions");
    add("mypage", "/myPages");
    add("faulty", "/faulty");
    add("hostile", "/hostile");
    if let Some(order) = config.components.get_mut("order") {
        order.links.insert("stock".into(), "cafe".into());
    }
    if let Some(hostile) = config.components.get_mut("hostile") {
        // Linked to itself: its `stock.reserve` recurses through the host.
        hostile.links.insert("stock".into(), "hostile".into());
        hostile.deadline_ms = 1_000;
    }
    if let Some(faulty) = config.components.get_mut("faulty") {
        faulty.deadline_ms = 500;
        faulty.memory_mib = 32;
    }
    // `SKTARBUCKS_TEST_REUSE=1`: run the suite with the four domain
    // components reusing instances, as `sktarbucks.toml` ships them.
    if std::env::var("SKTARBUCKS_TEST_REUSE").is_ok_and(|v| v == "1") {
        for name in ["cafe", "order", "production", "mypage"] {
            if let Some(c) = config.components.get_mut(name) {
                c.reuse = Some(sktarbucks::config::ReuseConfig::default());
            }
        }
    }
    config.check().expect("the test configuration is valid");
    config
}

/// `config` as manifest text, for the spawned binary.
pub fn manifest_text(config: &Config) -> String {
    config.to_toml().expect("the test configuration serializes")
}

/// The test manifest as text (see [`test_config`]).
pub fn manifest(data: &std::path::Path) -> String {
    manifest_text(&test_config(data))
}

/// Poll `check` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What paging through a list route returned.
#[derive(Debug, Default)]
pub struct Paged {
    pub items: Vec<serde_json::Value>,
    pub pages: usize,
    pub largest_page_items: usize,
    pub largest_page_bytes: usize,
}

/// The target of `<target>; rel="next"` in a `Link` header value.
pub fn next_link(header: &str) -> Option<String> {
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

/// Resident set size of process `pid` in KiB (Linux `/proc`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// A small JSON-over-HTTP client. Built with [`Client::checked`], it also
/// checks every response against the server's own `/openapi.json`.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
    contract: Option<std::sync::Arc<tokio::sync::OnceCell<contract::Contract>>>,
}

impl Client {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .expect("client builds"),
            contract: None,
        }
    }

    /// A client that checks every response on a documented operation
    /// against the server's `/openapi.json` (fetched at the first request).
    pub fn checked(base: impl Into<String>) -> Self {
        Self {
            contract: Some(std::sync::Arc::default()),
            ..Self::new(base)
        }
    }

    /// The contract this client checks against, once fetched.
    pub fn contract(&self) -> Option<&contract::Contract> {
        self.contract.as_ref().and_then(|c| c.get())
    }

    /// Check one answer against the contract, if this client has one.
    async fn conform(&self, method: &str, path: &str, status: u16, body: &serde_json::Value) {
        if let Some(contract) = self.contract.as_ref().and_then(|c| c.get()) {
            contract.check(method, path, status, body);
        }
    }

    /// Fetch the contract before the first request (a server about to stop
    /// or crash may not answer a later fetch).
    async fn ready_contract(&self) {
        let Some(cell) = &self.contract else {
            return;
        };
        cell.get_or_init(|| async {
            let doc: serde_json::Value = self
                .http
                .get(format!("{}/openapi.json", self.base))
                .send()
                .await
                .expect("/openapi.json is served")
                .json()
                .await
                .expect("/openapi.json is JSON");
            contract::Contract::new(doc)
        })
        .await;
    }

    /// Send `body` (raw text) and return status + parsed JSON (Null if empty/not JSON).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        self.ready_contract().await;
        let method_name = method;
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid method");
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let resp = req.send().await.expect("request is sent");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body is read");
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        self.conform(method_name, path, status, &json).await;
        (status, json)
    }

    /// GET one page of a list route: status, body, and the path of the next
    /// page from the `Link: <...>; rel="next"` header, if any.
    pub async fn get_page(&self, path: &str) -> (u16, serde_json::Value, Option<String>) {
        self.ready_contract().await;
        let resp = self
            .http
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .expect("request is sent");
        let status = resp.status().as_u16();
        let next = resp
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let bytes = resp.bytes().await.expect("body is read");
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        self.conform("GET", path, status, &json).await;
        (status, json, next)
    }

    /// Every item of a paged list route, following `rel="next"` links, with
    /// the number of pages and the largest page body (bytes) seen.
    pub async fn get_all(&self, path: &str) -> Paged {
        self.ready_contract().await;
        let mut out = Paged::default();
        let mut next = Some(path.to_owned());
        while let Some(path) = next.take() {
            let resp = self
                .http
                .get(format!("{}{}", self.base, path))
                .send()
                .await
                .expect("request is sent");
            let status = resp.status().as_u16();
            next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let bytes = resp.bytes().await.expect("body is read");
            assert_eq!(
                status,
                200,
                "GET {path}: {}",
                String::from_utf8_lossy(&bytes)
            );
            out.largest_page_bytes = out.largest_page_bytes.max(bytes.len());
            let page: serde_json::Value = serde_json::from_slice(&bytes).expect("a page is JSON");
            self.conform("GET", &path, status, &page).await;
            let items: Vec<serde_json::Value> =
                serde_json::from_value(page).expect("a page is a JSON array");
            out.largest_page_items = out.largest_page_items.max(items.len());
            out.items.extend(items);
            out.pages += 1;
        }
        out
    }

    /// Like [`send`](Self::send), but a transport error (the server died)
    /// is returned instead of failing the test.
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), reqwest::Error> {
        self.ready_contract().await;
        let req_method = method;
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid method");
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let method_name = req_method;
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        self.conform(method_name, path, status, &json).await;
        Ok((status, json))
    }

    /// Events published but not yet handled, summed over every subscriber
    /// (`/health/ready`'s `lag`); `None` when the host reports no lag.
    pub async fn pending_events(&self) -> Option<u64> {
        let (_, ready) = self.get("/health/ready").await;
        ready["lag"]
            .as_object()
            .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.raw("GET", path, None).await
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.raw(method, path, Some(&body.to_string())).await
    }

    /// Register menu item `id` ("Coldbrew") with `pcnt` units; a test's
    /// premise, so anything but 201 fails it at once.
    pub async fn seed_item(&self, id: u64, pcnt: u64) {
        let (status, body) = self
            .send(
                "POST",
                "/cafes",
                serde_json::json!({"cafeId": id, "cafeNm": "Coldbrew", "chkDate": "1", "pcnt": pcnt}),
            )
            .await;
        assert_eq!(status, 201, "seeding menu item {id}: {body}");
    }
}

/// Component `name` with a custom section appended: another digest, the
/// same behaviour (a second version to deploy, roll back and tell apart).
pub fn tagged(name: &str, tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(wasm(name)).expect("component bytes");
    let section_name = format!("sktarbucks-test-variant-{tag}");
    let mut payload = Vec::new();
    leb128(&mut payload, section_name.len());
    payload.extend_from_slice(section_name.as_bytes());
    payload.extend_from_slice(b"variant");
    bytes.push(0); // custom section id
    leb128(&mut bytes, payload.len());
    bytes.extend_from_slice(&payload);
    bytes
}

fn leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
