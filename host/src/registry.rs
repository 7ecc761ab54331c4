//! The live component set: one immutable snapshot (manifest, every
//! component's current version, routes) swapped atomically with
//! `arc-swap`, so a request never waits for a swap and always sees one
//! consistent set. Callers clone the `Arc` of a version and keep using it
//! until they finish: an in-flight invocation ends on the version it
//! started with, and the old version is freed after its last user.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, InstancePre, Linker};

use crate::bindings::{api_description, event_handler, http_handler, stock_export};
use crate::config::{ComponentConfig, Config};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::routes::Router;
use crate::state::{HostState, Identity};

/// The exports a component turned out to have, resolved once at load.
/// Indices belong to this version's `InstancePre` only.
pub struct Exports {
    pub http: Option<http_handler::GuestIndices>,
    pub events: Option<event_handler::GuestIndices>,
    pub stock: Option<stock_export::GuestIndices>,
    /// Its own OpenAPI fragment (optional: test guests have none).
    pub api: Option<api_description::GuestIndices>,
}

/// One compiled, linked component version.
pub struct Loaded {
    /// Manifest name; also the namespace of its state.
    pub name: String,
    /// sha256 of the `.wasm` bytes: the version's identity.
    pub digest: String,
    pub config: ComponentConfig,
    pub pre: InstancePre<HostState>,
    pub exports: Exports,
    /// What its invocations' host state needs to know about it.
    pub identity: Arc<Identity>,
    /// Invocations of this version running now (requests, events, linked calls).
    pub in_flight: AtomicUsize,
    /// Instances of this version ever started (every invocation, linked
    /// calls and smoke tests included).
    pub invocations: AtomicU64,
    /// Its OpenAPI fragment, asked for once per version (so the document
    /// follows swaps) the first time `/openapi.json` is served.
    pub api: tokio::sync::OnceCell<Option<serde_json::Value>>,
    /// Idle instances for reuse, when the manifest opts it in: one pool per
    /// version and manifest entry, closed when it stops being live.
    pub pool: Option<Arc<Pool>>,
    /// Where its pool counts instances.
    metrics: Arc<Metrics>,
}

/// Counts one invocation of a version while alive.
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// sha256 hex of component bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Loaded {
    /// Compile and link `bytes` for `name`; fails with the reason when the
    /// bytes are not a component or do not fit the host's world. Blocking
    /// (compilation): call it off the async workers.
    pub fn build(
        engine: &Engine,
        linker: &Linker<HostState>,
        metrics: &Arc<Metrics>,
        name: &str,
        config: ComponentConfig,
        bytes: &[u8],
    ) -> Result<Self> {
        let digest = digest_of(bytes);
        if wasmparser_kind(bytes) == Some(WasmKind::Module) {
            bail!(
                "this is a core WebAssembly module, not a component (build it for wasm32-wasip2)"
            );
        }
        let component = Component::new(engine, bytes)
            .map_err(anyhow::Error::from)
            .context("not a valid WebAssembly component")?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("it imports something the host does not provide")?;
        let exports = Exports {
            http: http_handler::GuestIndices::new(&pre).ok(),
            events: event_handler::GuestIndices::new(&pre).ok(),
            stock: stock_export::GuestIndices::new(&pre).ok(),
            api: api_description::GuestIndices::new(&pre).ok(),
        };
        if exports.http.is_none() && exports.events.is_none() && exports.stock.is_none() {
            bail!("it exports none of http-handler, event-handler, stock");
        }
        if !config.routes.is_empty() && exports.http.is_none() {
            bail!("it has routes in the manifest but does not export http-handler");
        }
        Ok(Self::assemble(name, digest, config, pre, exports, metrics))
    }

    fn assemble(
        name: &str,
        digest: String,
        config: ComponentConfig,
        pre: InstancePre<HostState>,
        exports: Exports,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let pool = config
            .reuse
            .clone()
            .map(|reuse| Arc::new(Pool::new(name, reuse, Arc::clone(metrics))));
        let identity = Arc::new(Identity {
            name: name.to_owned(),
            digest: digest.clone(),
            memory_bytes: usize::try_from(config.memory_mib.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
            links: config.links.clone(),
            publishes: config.publish_patterns(name),
        });
        Self {
            name: name.to_owned(),
            digest,
            config,
            pre,
            exports,
            identity,
            in_flight: AtomicUsize::new(0),
            invocations: AtomicU64::new(0),
            api: tokio::sync::OnceCell::new(),
            pool,
            metrics: Arc::clone(metrics),
        }
    }

    /// This version stopped being live: its idle instances go now, busy ones
    /// when their call ends.
    pub fn retire_instances(&self) {
        if let Some(pool) = &self.pool {
            pool.close();
        }
    }

    /// Count an invocation of this version until the guard drops.
    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// The same compiled version under a changed manifest entry (a reload
    /// that only touched limits, routes or links): nothing is recompiled,
    /// but it gets a pool of its own (the old one closes with the old entry).
    pub fn with_config(&self, config: ComponentConfig) -> Self {
        let exports = Exports {
            http: self.exports.http.clone(),
            events: self.exports.events.clone(),
            stock: self.exports.stock.clone(),
            api: self.exports.api.clone(),
        };
        Self::assemble(
            &self.name,
            self.digest.clone(),
            config,
            self.pre.clone(),
            exports,
            &self.metrics,
        )
    }

    /// Read the file named by the manifest and build it.
    pub fn from_file(
        engine: &Engine,
        linker: &Linker<HostState>,
        metrics: &Arc<Metrics>,
        name: &str,
        config: ComponentConfig,
    ) -> Result<Self> {
        let bytes = read_wasm(&config.path)?;
        let path = config.path.clone();
        Self::build(engine, linker, metrics, name, config, &bytes)
            .with_context(|| format!("component {name:?} from {}", path.display()))
    }

    /// Short form of the digest for logs.
    pub fn short_digest(&self) -> &str {
        self.digest.get(..12).unwrap_or(&self.digest)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum WasmKind {
    Module,
    Component,
}

/// Core module or component, from the preamble (`\0asm`, version, layer).
fn wasmparser_kind(bytes: &[u8]) -> Option<WasmKind> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return None;
    }
    // Layer 0 (bytes 6..8 == 0) is a core module; 1 is a component.
    match (bytes[6], bytes[7]) {
        (0, 0) => Some(WasmKind::Module),
        (1, 0) => Some(WasmKind::Component),
        _ => None,
    }
}

/// Read a `.wasm` file named by the manifest.
pub fn read_wasm(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "failed to read {} (run `cargo xtask build` to build the components)",
            path.display()
        )
    })
}

/// One consistent view of everything live: the manifest it came from,
/// every component's current version, and the routes.
pub struct LiveSet {
    pub config: Arc<Config>,
    pub components: BTreeMap<String, Arc<Loaded>>,
    pub router: Router,
}

impl LiveSet {
    /// A set over `components`, routed as `config` says.
    pub fn new(config: Arc<Config>, components: BTreeMap<String, Arc<Loaded>>) -> Self {
        let router = Router::from_config(&config);
        Self {
            config,
            components,
            router,
        }
    }
}

/// Name → current version of every component, plus the manifest in force.
pub struct Registry {
    live: ArcSwap<LiveSet>,
    /// Per-component lanes: after a conflict, retries of one component run
    /// one at a time. Kept across versions (a hot key stays hot on a swap);
    /// touched only on retries.
    lanes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Registry {
    pub fn new(set: LiveSet) -> Self {
        Self {
            live: ArcSwap::from_pointee(set),
            lanes: Mutex::default(),
        }
    }

    /// The whole live set as of now.
    pub fn snapshot(&self) -> Arc<LiveSet> {
        self.live.load_full()
    }

    /// The manifest in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.live.load().config)
    }

    /// Read the manifest in force without taking a reference to it: what
    /// the request path does a few times per request, where the two
    /// workers' reference counting on one shared `Arc` costs more than the
    /// read.
    pub fn read_config<R>(&self, f: impl FnOnce(&Config) -> R) -> R {
        f(&self.live.load().config)
    }

    /// The current version of `name`, if loaded.
    pub fn get(&self, name: &str) -> Option<Arc<Loaded>> {
        self.live.load().components.get(name).cloned()
    }

    /// Make `loaded` the current version of its component; returns the one
    /// it replaced (whose reusable instances are retired).
    pub fn install(&self, loaded: Arc<Loaded>) -> Option<Arc<Loaded>> {
        let mut previous = None;
        self.live.rcu(|set| {
            let mut components = set.components.clone();
            previous = components.insert(loaded.name.clone(), Arc::clone(&loaded));
            LiveSet {
                config: Arc::clone(&set.config),
                components,
                router: set.router.clone(),
            }
        });
        if let Some(old) = &previous
            && !Arc::ptr_eq(old, &loaded)
        {
            old.retire_instances();
        }
        previous
    }

    /// Replace the whole live set (a manifest reload); versions that are not
    /// part of the new set have their reusable instances retired.
    pub fn replace(&self, set: LiveSet) {
        let old = self.live.swap(Arc::new(set));
        let new = self.live.load();
        for (name, loaded) in &old.components {
            if !new
                .components
                .get(name)
                .is_some_and(|n| Arc::ptr_eq(n, loaded))
            {
                loaded.retire_instances();
            }
        }
    }

    /// Drop the reusable instances of every live version that sat idle too
    /// long (run periodically).
    pub fn sweep_idle(&self) {
        for loaded in self.live.load().components.values() {
            if let Some(pool) = &loaded.pool {
                pool.sweep();
            }
        }
    }

    /// Every loaded component, sorted by name.
    pub fn all(&self) -> Vec<Arc<Loaded>> {
        self.live.load().components.values().cloned().collect()
    }

    /// The retry lane of component `name`.
    pub fn lane(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lane) = lanes.get(name) {
            return Arc::clone(lane);
        }
        Arc::clone(lanes.entry(name.to_owned()).or_default())
    }
}
