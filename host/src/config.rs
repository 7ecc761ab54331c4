//! The manifest (`sktarbucks.toml`) plus environment and CLI overrides: the
//! ConfigMap analogue. Resolved once at start; paths become absolute.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The whole resolved configuration of one host process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Public HTTP listener (the old gateway's port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory for the embedded backend's database and the compile cache.
    #[serde(default = "default_data")]
    pub data: PathBuf,
    /// `redis://...`: use Redis for state and events instead of SQLite.
    #[serde(default)]
    pub redis: Option<String>,
    /// Prefix of every Redis key, so deployments (or test runs) can share a Redis.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// Requests with a larger body are refused with 413 before reaching a guest.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Open connections one client address may hold on the public port;
    /// more are answered 503 and closed (one client cannot starve the rest).
    #[serde(default = "default_per_client")]
    pub max_connections_per_client: usize,
    /// Bytes of request bodies buffered at once across all connections; a
    /// body that does not fit waits briefly, then gets 503 (never an OOM).
    #[serde(default = "default_body_budget")]
    pub body_budget_bytes: usize,
    /// How long a connection may go without sending a complete request
    /// head: the first request's header deadline (slow-header clients) and
    /// the idle timeout of a keep-alive connection between requests.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// A component answering a larger body gets a 502 instead (and nothing
    /// it wrote is kept).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// Compiled-component cache; defaults to `<data>/compile-cache`.
    #[serde(default)]
    pub compile_cache: Option<PathBuf>,
    /// Admin listener (deploy, rollback, reload); off unless set. Needs a
    /// token: `SKTARBUCKS_ADMIN_TOKEN` or `admin_token_file`.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// File holding the admin bearer token (first line).
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Largest component a `PUT /admin/components/{name}` may upload.
    #[serde(default = "default_max_wasm")]
    pub admin_max_wasm_bytes: usize,
    #[serde(default)]
    pub sqlite: SqliteConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub unit_of_work: UowConfig,
    #[serde(default)]
    pub tracing: TracingConfig,
    /// Components by name (the name is also the state namespace).
    #[serde(default)]
    pub components: BTreeMap<String, ComponentConfig>,
}

/// Embedded backend settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// `full` survives power loss; `normal` survives a process crash and is
    /// several times faster on commit-heavy load (WAL either way).
    #[serde(default = "default_synchronous")]
    pub synchronous: Synchronous,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            synchronous: default_synchronous(),
        }
    }
}

/// SQLite's `PRAGMA synchronous` level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

/// Event delivery settings shared by every subscriber.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Deliveries of one event before it is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to `backoff_max_ms`.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Redis: an event pending this long in a consumer's list is taken over by
    /// another host (its consumer is presumed dead). Must exceed every deadline.
    #[serde(default = "default_claim_idle_ms")]
    pub claim_idle_ms: u64,
    /// Acknowledged events older than this are removed from the log (SQLite
    /// table, Redis streams). Events some subscriber still needs never are.
    #[serde(default = "default_retain_ms")]
    pub retain_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff_ms: default_backoff_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            claim_idle_ms: default_claim_idle_ms(),
            retain_ms: default_retain_ms(),
        }
    }
}

impl EventsConfig {
    /// Delay before delivery attempt `next_attempt` (2, 3, ...).
    pub fn backoff(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(20);
        let ms = self.backoff_ms.saturating_mul(1u64 << exp);
        Duration::from_millis(ms.min(self.backoff_max_ms))
    }
}

/// How hard the host tries to commit a conflicting unit of work.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UowConfig {
    /// Runs of one invocation (first + retries) before giving up with 503.
    #[serde(default = "default_uow_attempts")]
    pub max_attempts: u32,
}

impl Default for UowConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_uow_attempts(),
        }
    }
}

/// Span export (`[tracing]`). Logs always carry request ids; this only
/// decides whether spans also leave the process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Base URL of an OTLP/HTTP collector, plain `http://` (`http://localhost:4318`; spans
    /// go to `<base>/v1/traces`). The standard `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) overrides it; neither set:
    /// no export.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans; `OTEL_SERVICE_NAME` overrides it.
    #[serde(default)]
    pub service_name: Option<String>,
}

/// One component of the manifest.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The `.wasm` file, relative to the manifest.
    pub path: PathBuf,
    /// Path prefixes routed to this component (`/orders` serves `/orders/...`).
    #[serde(default)]
    pub routes: Vec<String>,
    /// Topics to consume; defaults to everything the component declares.
    #[serde(default)]
    pub subscribe: Option<Vec<String>>,
    /// Imported interface → component that provides it (`stock = "cafe"`).
    #[serde(default)]
    pub links: BTreeMap<String, String>,
    /// Wall-clock deadline of one invocation.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Linear-memory ceiling of one instance.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Topics it may publish: exact names or `prefix.*`. Default: its own
    /// namespace, `<name>.*`. Publishing anything else fails the invocation.
    #[serde(default)]
    pub publishes: Option<Vec<String>>,
    /// Concurrency limit and circuit breaker.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Serial instance reuse (`reuse = true` or a `[components.<name>.reuse]`
    /// table); off by default: every invocation gets a fresh instance. Only
    /// for components that keep no state in guest globals (see README).
    #[serde(
        default,
        deserialize_with = "reuse_setting",
        skip_serializing_if = "Option::is_none"
    )]
    pub reuse: Option<ReuseConfig>,
}

/// Instance reuse of one component: one instance per `Store`, called
/// serially, its host state reset before every call, retired on any failure
/// or error answer. The bounds exist because a long-lived instance is where
/// leaks (guest heap growth, forgotten handles) accumulate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReuseConfig {
    /// Most invocations one instance serves. Each instance draws its own cap
    /// at random from `max_uses/2 ..= max_uses`, so a pool never retires
    /// (and re-instantiates) all its instances in the same instant.
    #[serde(default = "default_reuse_max_uses")]
    pub max_uses: u32,
    /// An instance unused this long is dropped (its memory is returned).
    #[serde(default = "default_reuse_idle_ms")]
    pub idle_ms: u64,
    /// Most idle instances kept for this component; each holds a slot of the
    /// engine's instance pool, so the sum over components is bounded.
    #[serde(default = "default_reuse_max_idle")]
    pub max_idle: u32,
}

impl Default for ReuseConfig {
    fn default() -> Self {
        Self {
            max_uses: default_reuse_max_uses(),
            idle_ms: default_reuse_idle_ms(),
            max_idle: default_reuse_max_idle(),
        }
    }
}

impl ReuseConfig {
    /// How long an instance may stay idle.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
}

/// Largest `max_uses` accepted: beyond it an instance effectively lives forever.
pub const MAX_REUSE_USES: u32 = 100_000;
/// Largest sum of `max_idle` over all components: idle instances must leave
/// most of the engine's instance slots to running invocations.
pub const MAX_IDLE_TOTAL: u32 = crate::engine::POOL_SLOTS / 2;

/// `reuse = true | false | { max_uses = .., idle_ms = .., max_idle = .. }`.
fn reuse_setting<'de, D>(deserializer: D) -> Result<Option<ReuseConfig>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let value = toml::Value::deserialize(deserializer)?;
    match value {
        toml::Value::Boolean(true) => Ok(Some(ReuseConfig::default())),
        toml::Value::Boolean(false) => Ok(None),
        toml::Value::Table(table) => toml::Value::Table(table)
            .try_into::<ReuseConfig>()
            .map(Some)
            .map_err(|e| D::Error::custom(format!("reuse: {}", e.message()))),
        other => Err(D::Error::custom(format!(
            "reuse must be true, false or a table {{ max_uses, idle_ms, max_idle }}, got a {}",
            other.type_str()
        ))),
    }
}

/// Admission settings of one component (`[components.<name>.limits]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Invocations running at once (requests, events and linked calls into it).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// How long an invocation may wait for a free slot before a 503.
    #[serde(default = "default_queue_ms")]
    pub queue_ms: u64,
    /// Failures in a row that open the breaker (0: never by streak).
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Outcomes remembered for the failure rate; half of them failing opens
    /// the breaker (0: no rate rule).
    #[serde(default = "default_window")]
    pub window: u32,
    /// How long an open breaker refuses before it lets one probe through.
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_in_flight: default_max_in_flight(),
            queue_ms: default_queue_ms(),
            consecutive_failures: default_consecutive_failures(),
            window: default_window(),
            open_ms: default_open_ms(),
        }
    }
}

impl ComponentConfig {
    /// A component loaded from `path` with every other setting at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            routes: Vec::new(),
            subscribe: None,
            links: BTreeMap::new(),
            deadline_ms: default_deadline_ms(),
            memory_mib: default_memory_mib(),
            publishes: None,
            limits: LimitsConfig::default(),
            reuse: None,
        }
    }

    /// The topic patterns `name` may publish (its own namespace by default).
    pub fn publish_patterns(&self, name: &str) -> Vec<String> {
        self.publishes
            .clone()
            .unwrap_or_else(|| vec![format!("{name}.*")])
    }

    /// The deadline as a `Duration`.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_data() -> PathBuf {
    PathBuf::from("./data")
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_per_client() -> usize {
    2048
}
fn default_body_budget() -> usize {
    256 * 1024 * 1024
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_max_response() -> usize {
    8 * 1024 * 1024
}
fn default_max_in_flight() -> u32 {
    256
}
fn default_queue_ms() -> u64 {
    100
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_window() -> u32 {
    20
}
fn default_open_ms() -> u64 {
    10_000
}
fn default_max_wasm() -> usize {
    64 * 1024 * 1024
}
fn default_synchronous() -> Synchronous {
    Synchronous::Full
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_ms() -> u64 {
    100
}
fn default_backoff_max_ms() -> u64 {
    10_000
}
fn default_redis_prefix() -> String {
    "sk".into()
}
fn default_claim_idle_ms() -> u64 {
    30_000
}
fn default_retain_ms() -> u64 {
    24 * 3600 * 1000
}
fn default_uow_attempts() -> u32 {
    16
}
fn default_deadline_ms() -> u64 {
    5_000
}
fn default_memory_mib() -> u64 {
    64
}
fn default_reuse_max_uses() -> u32 {
    128
}
fn default_reuse_idle_ms() -> u64 {
    30_000
}
fn default_reuse_max_idle() -> u32 {
    32
}

impl Config {
    /// Read a manifest; relative component paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read config {}", path.display()))?;
        // Absolute, so nothing depends on the working directory later
        // (wasmtime's compile cache insists on an absolute path).
        let path = std::path::absolute(path)
            .with_context(|| format!("invalid config path {}", path.display()))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        Self::parse(&text, &base).with_context(|| format!("invalid config {}", path.display()))
    }

    /// The manifest as TOML text (what `parse` reads back).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("the configuration cannot be written as TOML")
    }

    /// Check a configuration built in code, as `parse` checks a file.
    pub fn check(&self) -> Result<()> {
        self.validate()
    }

    /// Parse manifest text; `base` anchors relative component paths.
    pub fn parse(text: &str, base: &Path) -> Result<Self> {
        let mut config: Config = toml::from_str(text)?;
        if config.data.is_relative() {
            config.data = base.join(&config.data);
        }
        if let Some(cache) = &mut config.compile_cache
            && cache.is_relative()
        {
            *cache = base.join(&*cache);
        }
        if let Some(file) = &mut config.admin_token_file
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        for (name, component) in &mut config.components {
            if component.path.is_relative() {
                component.path = base.join(&component.path);
            }
            for route in &component.routes {
                if !route.starts_with('/') || (route.len() > 1 && route.ends_with('/')) {
                    bail!(
                        "component {name:?}: route {route:?} must start with '/' and not end with '/'"
                    );
                }
            }
            if component.deadline_ms == 0 {
                bail!("component {name:?}: deadline_ms must be positive");
            }
            if component.limits.max_in_flight == 0 {
                bail!("component {name:?}: limits.max_in_flight must be at least 1");
            }
            for topic in component.publishes.iter().flatten() {
                let name_part = topic.strip_suffix(".*").unwrap_or(topic);
                if name_part.is_empty() || name_part.contains('*') || topic.len() > 256 {
                    bail!(
                        "component {name:?}: publishes entry {topic:?} must be a topic name or `prefix.*`"
                    );
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.body_budget_bytes < self.max_body_bytes {
            bail!(
                "body_budget_bytes ({}) must be at least max_body_bytes ({}), or no body of the largest allowed size could ever be received",
                self.body_budget_bytes,
                self.max_body_bytes
            );
        }
        let mut seen = BTreeMap::new();
        let mut idle_total = 0u32;
        for (name, component) in &self.components {
            if let Some(reuse) = &component.reuse {
                if reuse.max_uses == 0 || reuse.max_uses > MAX_REUSE_USES {
                    bail!(
                        "component {name:?}: reuse.max_uses must be 1..={MAX_REUSE_USES}, got {} \
                         (to turn reuse off, set reuse = false)",
                        reuse.max_uses
                    );
                }
                if reuse.idle_ms == 0 {
                    bail!("component {name:?}: reuse.idle_ms must be positive");
                }
                if reuse.max_idle == 0 {
                    bail!(
                        "component {name:?}: reuse.max_idle must be at least 1 \
                         (to turn reuse off, set reuse = false)"
                    );
                }
                idle_total = idle_total.saturating_add(reuse.max_idle);
            }
            for route in &component.routes {
                if let Some(other) = seen.insert(route.clone(), name.clone()) {
                    bail!("route {route:?} is claimed by both {other:?} and {name:?}");
                }
            }
            for (iface, provider) in &component.links {
                if iface != "stock" {
                    bail!(
                        "component {name:?}: unknown link {iface:?} (only \"stock\" can be linked)"
                    );
                }
                if !self.components.contains_key(provider) {
                    bail!("component {name:?}: link {iface} = {provider:?} names no component");
                }
            }
        }
        if idle_total > MAX_IDLE_TOTAL {
            bail!(
                "reuse.max_idle adds up to {idle_total} over all components; at most \
                 {MAX_IDLE_TOTAL} idle instances fit beside the running ones"
            );
        }
        let longest = self
            .components
            .values()
            .map(|c| c.deadline_ms)
            .max()
            .unwrap_or(0);
        let needed = longest + self.events.backoff_max_ms + 1_000;
        if self.events.claim_idle_ms <= needed {
            bail!(
                "events.claim_idle_ms ({}) must exceed the longest deadline_ms ({longest}) plus \
                 events.backoff_max_ms ({}) plus 1000, or events still being handled or retried \
                 would be taken over",
                self.events.claim_idle_ms,
                self.events.backoff_max_ms
            );
        }
        if self.events.max_attempts == 0 {
            bail!("events.max_attempts must be at least 1");
        }
        if self.unit_of_work.max_attempts == 0 {
            bail!("unit_of_work.max_attempts must be at least 1");
        }
        if let Some(endpoint) = &self.tracing.otlp_endpoint
            && !endpoint.starts_with("http://")
        {
            bail!(
                "tracing.otlp_endpoint {endpoint:?} must be an http:// URL (the exporter has no TLS: \
                 point it at a local collector or agent)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_component_paths_resolve_against_the_manifest() -> Result<()> {
        let config = Config::parse(
            "[components.cafe]\npath = \"c.wasm\"\nroutes = [\"/cafes\"]\n",
            Path::new("/etc/sk"),
        )?;
        assert_eq!(
            config.components["cafe"].path,
            PathBuf::from("/etc/sk/c.wasm")
        );
        assert_eq!(config.listen.port(), 8080);
        Ok(())
    }

    #[test]
    fn a_route_claimed_twice_is_refused() {
        let err = Config::parse(
            "[components.a]\npath=\"a\"\nroutes=[\"/x\"]\n[components.b]\npath=\"b\"\nroutes=[\"/x\"]\n",
            Path::new("."),
        )
        .expect_err("duplicate route must fail");
        assert!(format!("{err:#}").contains("claimed by both"));
    }

    #[test]
    fn reuse_is_a_switch_or_a_table() -> Result<()> {
        let config = Config::parse(
            "[components.a]\npath=\"a\"\nreuse=true\n\
             [components.b]\npath=\"b\"\nreuse={max_uses=10}\n\
             [components.c]\npath=\"c\"\nreuse=false\n[components.d]\npath=\"d\"\n",
            Path::new("."),
        )?;
        assert_eq!(config.components["a"].reuse, Some(ReuseConfig::default()));
        let b = config.components["b"].reuse.clone();
        assert_eq!(b.map(|r| (r.max_uses, r.max_idle)), Some((10, 32)));
        assert_eq!(config.components["c"].reuse, None);
        assert_eq!(config.components["d"].reuse, None);
        // It survives the round trip the tests use for spawned hosts.
        let again = Config::parse(&config.to_toml()?, Path::new("."))?;
        assert_eq!(again.components["b"].reuse, config.components["b"].reuse);
        Ok(())
    }

    #[test]
    fn bad_reuse_settings_say_what_is_wrong() {
        for (text, wanted) in [
            ("reuse=1", "reuse must be true, false or a table"),
            ("reuse={max_uses=0}", "reuse.max_uses must be 1..="),
            ("reuse={idle_ms=0}", "reuse.idle_ms must be positive"),
            ("reuse={max_idle=0}", "reuse.max_idle must be at least 1"),
            ("reuse={max_idle=600}", "reuse.max_idle adds up to 600"),
            ("reuse={uses=3}", "unknown field `uses`"),
        ] {
            let err = Config::parse(
                &format!("[components.a]\npath=\"a\"\n{text}\n"),
                Path::new("."),
            )
            .expect_err(text);
            let err = format!("{err:#}");
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let events = EventsConfig::default();
        assert_eq!(events.backoff(2), Duration::from_millis(100));
        assert_eq!(events.backoff(3), Duration::from_millis(200));
        assert_eq!(events.backoff(40), Duration::from_millis(10_000));
    }
}
