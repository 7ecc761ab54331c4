//! Hot swap: a new component version is compiled and checked against its
//! role before it goes live, activated atomically (in-flight invocations
//! finish on the old version), recorded durably by the backend so restarts
//! and other hosts follow, and can be rolled back. Manifest reloads go
//! through the same checks and apply whole or not at all. Each host also
//! remembers its last [`SWAP_LOG`] version changes in memory (since it
//! started) for the admin console.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::backend::Deployment;
use crate::config::{ComponentConfig, Config};
use crate::registry::{LiveSet, Loaded, digest_of, read_wasm};
use crate::runtime::Runtime;

/// Versions kept for rollback per component.
const HISTORY: usize = 10;
/// How often a host checks whether another host deployed something.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);
/// Version changes [`Deployer::swaps`] remembers (in memory, since this
/// host started; the backend keeps only the rollback digests).
pub const SWAP_LOG: usize = 50;

/// Why a deploy, rollback or reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No such component in the manifest.
    #[error("{0}")]
    NotFound(String),
    /// The version (or manifest) failed validation; nothing changed.
    #[error("{0}")]
    Refused(String),
    /// The backend could not record or read deployments.
    #[error("{0:#}")]
    Backend(anyhow::Error),
}

/// Where a component's live version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The file the manifest names.
    Manifest,
    /// A deployment (admin API, CLI, watch mode, or another host).
    Deployed,
}

/// What this host knows about one component's deployment.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub source: Source,
    pub activated_ms: i64,
    /// Digests a rollback can return to, most recent first.
    pub rollback: Vec<String>,
    /// Set when a version deployed elsewhere could not be activated here:
    /// this host keeps its old version and says why.
    pub diverged: Option<String>,
}

/// The outcome of a deploy or rollback.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Swap {
    pub component: String,
    pub digest: String,
    pub previous: String,
    /// False when the version was already live (a no-op).
    pub changed: bool,
    pub compile_ms: u64,
}

/// What made a version go live on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SwapSource {
    /// A deploy on this host (admin API, CLI or watch mode).
    Deploy,
    /// A rollback on this host.
    Rollback,
    /// A deploy or rollback recorded by another host, followed here.
    Sync,
    /// A manifest reload that named a new file.
    Reload,
}

/// One version change on this host, as the admin console lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SwapEvent {
    pub component: String,
    pub digest: String,
    pub previous: String,
    /// When it went live on this host (ms since the epoch).
    pub at_ms: i64,
    pub source: SwapSource,
}

/// Reads the manifest again for a reload (path and CLI overrides applied).
pub type ConfigLoader = Box<dyn Fn() -> Result<Config> + Send + Sync>;

/// Swaps versions on one host and keeps it in step with the backend.
pub struct Deployer {
    rt: Arc<Runtime>,
    status: Mutex<BTreeMap<String, Status>>,
    /// One change at a time on this host.
    changing: tokio::sync::Mutex<()>,
    /// Deployment generation last reconciled with.
    seen_generation: Mutex<Option<u64>>,
    load_config: Option<ConfigLoader>,
    /// The last [`SWAP_LOG`] version changes here, oldest first.
    swaps: Mutex<VecDeque<SwapEvent>>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Deployer {
    /// A deployer over `rt`, whose live versions all came from the manifest.
    pub fn new(rt: Arc<Runtime>, load_config: Option<ConfigLoader>) -> Self {
        let now = now_ms();
        let status = rt
            .registry
            .all()
            .into_iter()
            .map(|l| {
                let status = Status {
                    source: Source::Manifest,
                    activated_ms: now,
                    rollback: Vec::new(),
                    diverged: None,
                };
                (l.name.clone(), status)
            })
            .collect();
        Self {
            rt,
            status: Mutex::new(status),
            changing: tokio::sync::Mutex::default(),
            seen_generation: Mutex::new(None),
            load_config,
            swaps: Mutex::new(VecDeque::with_capacity(SWAP_LOG)),
        }
    }

    /// Component name → the file the manifest names for it.
    pub fn manifest_files(&self) -> Vec<(String, std::path::PathBuf)> {
        self.rt
            .config()
            .components
            .iter()
            .map(|(name, c)| (name.clone(), c.path.clone()))
            .collect()
    }

    /// This host's view of every component's deployment.
    pub fn status(&self) -> BTreeMap<String, Status> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last [`SWAP_LOG`] version changes on this host, newest first.
    /// In memory only: the list starts empty whenever the host starts.
    pub fn swaps(&self) -> Vec<SwapEvent> {
        self.swaps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    fn remember(&self, component: &str, digest: &str, previous: &str, source: SwapSource) {
        let mut log = self.swaps.lock().unwrap_or_else(|p| p.into_inner());
        while log.len() >= SWAP_LOG {
            log.pop_front();
        }
        log.push_back(SwapEvent {
            component: component.to_owned(),
            digest: digest.to_owned(),
            previous: previous.to_owned(),
            at_ms: now_ms(),
            source,
        });
    }

    fn set_status(&self, name: &str, status: Status) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), status);
    }

    fn mark_diverged(&self, name: &str, reason: Option<String>) {
        self.rt.set_diverged(name, reason.clone());
        let mut all = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.get_mut(name) {
            s.diverged = reason;
        }
    }

    /// Validate `bytes` as the next version of `name` and make it live here
    /// and, through the backend, on every host.
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>) -> Result<Swap, DeployError> {
        let _one = self.changing.lock().await;
        let current = self.current(name)?;
        let digest = digest_of(&bytes);
        if digest == current.digest {
            return Ok(Swap {
                component: name.to_owned(),
                previous: digest.clone(),
                digest,
                changed: false,
                compile_ms: 0,
            });
        }
        let started = Instant::now();
        let loaded = self.validate(name, &bytes).await?;
        let compile_ms = started.elapsed().as_millis() as u64;
        let backend = &self.rt.backend;
        backend
            .store_wasm(&digest, &bytes)
            .await
            .map_err(DeployError::Backend)?;
        let mut history = self.recorded_history(name).await?;
        history.retain(|d| d != &digest && d != &current.digest);
        history.push(current.digest.clone());
        if history.len() > HISTORY {
            history.drain(..history.len() - HISTORY);
        }
        let swap = self.go_live(loaded, &current, history, compile_ms).await?;
        self.remember(
            &swap.component,
            &swap.digest,
            &swap.previous,
            SwapSource::Deploy,
        );
        Ok(swap)
    }

    /// Return `name` to the version before the current one (validated again).
    pub async fn rollback(&self, name: &str) -> Result<Swap, DeployError> {
        let _one = self.changing.lock().await;
        let current = self.current(name)?;
        let mut history = self.recorded_history(name).await?;
        let Some(previous) = history.pop() else {
            return Err(DeployError::Refused(format!(
                "component {name:?} has no previous version to roll back to"
            )));
        };
        let bytes = self
            .rt
            .backend
            .load_wasm(&previous)
            .await
            .map_err(DeployError::Backend)?
            .ok_or_else(|| {
                DeployError::Refused(format!(
                    "the bytes of version {previous} are not stored; deploy it again instead"
                ))
            })?;
        let started = Instant::now();
        let loaded = self.validate(name, &bytes).await?;
        let compile_ms = started.elapsed().as_millis() as u64;
        let swap = self.go_live(loaded, &current, history, compile_ms).await?;
        self.remember(
            &swap.component,
            &swap.digest,
            &swap.previous,
            SwapSource::Rollback,
        );
        Ok(swap)
    }

    /// Record a validated version as the component's deployment (every host
    /// follows it) and make it live here.
    async fn go_live(
        &self,
        loaded: Arc<Loaded>,
        current: &Loaded,
        history: Vec<String>,
        compile_ms: u64,
    ) -> Result<Swap, DeployError> {
        let record = Deployment {
            component: loaded.name.clone(),
            digest: loaded.digest.clone(),
            activated_ms: now_ms(),
            history,
        };
        self.rt
            .backend
            .set_deployment(&record)
            .await
            .map_err(DeployError::Backend)?;
        self.activate(loaded, &record, compile_ms);
        Ok(Swap {
            component: record.component,
            digest: record.digest,
            previous: current.digest.clone(),
            changed: true,
            compile_ms,
        })
    }

    fn current(&self, name: &str) -> Result<Arc<Loaded>, DeployError> {
        self.rt.registry.get(name).ok_or_else(|| {
            DeployError::NotFound(format!(
                "no component {name:?} in the manifest (components: {})",
                self.rt
                    .registry
                    .all()
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    async fn recorded_history(&self, name: &str) -> Result<Vec<String>, DeployError> {
        let all = self
            .rt
            .backend
            .deployments()
            .await
            .map_err(DeployError::Backend)?;
        Ok(all
            .into_iter()
            .find(|d| d.component == name)
            .map(|d| d.history)
            .unwrap_or_default())
    }

    fn activate(&self, loaded: Arc<Loaded>, record: &Deployment, compile_ms: u64) {
        let new = loaded.digest.clone();
        let old = self.rt.registry.install(loaded);
        // A new version starts with a closed breaker.
        self.rt.env.guards.reset(&record.component);
        tracing::info!(
            component = %record.component,
            old = %old.as_ref().map_or("-", |o| o.short_digest()),
            new = %new.get(..12).unwrap_or(&new),
            compile_ms,
            "component swapped"
        );
        self.refresh_status(record);
    }

    /// Compile `bytes` as component `name` and check it can take its role
    /// in the live set; the reason when it cannot.
    pub async fn validate(&self, name: &str, bytes: &[u8]) -> Result<Arc<Loaded>, DeployError> {
        let config = self.rt.config();
        let Some(component) = config.components.get(name).cloned() else {
            return Err(DeployError::NotFound(format!(
                "no component {name:?} in the manifest"
            )));
        };
        let loaded = self.compile(name, component, bytes.to_vec()).await?;
        let live = self.rt.registry.snapshot();
        check_role(&config, &live, &loaded)?;
        self.smoke(&loaded).await?;
        Ok(loaded)
    }

    /// Compile off the async workers (through the compile cache).
    async fn compile(
        &self,
        name: &str,
        config: ComponentConfig,
        bytes: Vec<u8>,
    ) -> Result<Arc<Loaded>, DeployError> {
        let rt = Arc::clone(&self.rt);
        let owned = name.to_owned();
        tokio::task::spawn_blocking(move || {
            Loaded::build(
                &rt.engine,
                &rt.linker,
                &rt.env.metrics,
                &owned,
                config,
                &bytes,
            )
        })
        .await
        .map_err(|e| DeployError::Refused(format!("compilation crashed: {e}")))?
        .map(Arc::new)
        .map_err(|e| DeployError::Refused(format!("{e:#}")))
    }

    /// Instantiate it once and ask for its subscriptions, within its deadline.
    async fn smoke(&self, loaded: &Arc<Loaded>) -> Result<(), DeployError> {
        self.rt
            .smoke(loaded)
            .await
            .map(|_| ())
            .map_err(|e| DeployError::Refused(format!("smoke test failed: {e:#}")))
    }

    /// Bring this host in line with the deployments the backend records
    /// (made here earlier, or on another host). Cheap when nothing changed.
    pub async fn sync(&self) -> Result<()> {
        let generation = self.rt.backend.deployment_generation().await?;
        {
            let seen = self
                .seen_generation
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if *seen == Some(generation) {
                return Ok(());
            }
        }
        let _one = self.changing.lock().await;
        let records = self.rt.backend.deployments().await?;
        let mut all_applied = true;
        for record in records {
            let Some(current) = self.rt.registry.get(&record.component) else {
                continue;
            };
            if current.digest == record.digest {
                self.refresh_status(&record);
                continue;
            }
            match self.follow(&record).await {
                Ok(()) => {}
                Err(reason) => {
                    all_applied = false;
                    tracing::error!(component = %record.component, digest = %record.digest, %reason,
                        "cannot activate the deployed version; keeping the old one");
                    self.mark_diverged(
                        &record.component,
                        Some(format!(
                            "deployed version {} could not be activated here: {reason}",
                            record.digest
                        )),
                    );
                }
            }
        }
        if all_applied {
            *self
                .seen_generation
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(generation);
        }
        Ok(())
    }

    /// This host now runs `record`'s version: status from the record, no
    /// divergence.
    fn refresh_status(&self, record: &Deployment) {
        self.rt.set_diverged(&record.component, None);
        let mut rollback = record.history.clone();
        rollback.reverse();
        self.set_status(
            &record.component,
            Status {
                source: Source::Deployed,
                activated_ms: record.activated_ms,
                rollback,
                diverged: None,
            },
        );
    }

    async fn follow(&self, record: &Deployment) -> Result<(), String> {
        let bytes = self
            .rt
            .backend
            .load_wasm(&record.digest)
            .await
            .map_err(|e| format!("{e:#}"))?
            .ok_or_else(|| "its bytes are not stored".to_owned())?;
        let started = Instant::now();
        let loaded = self
            .validate(&record.component, &bytes)
            .await
            .map_err(|e| e.to_string())?;
        let previous = self
            .rt
            .registry
            .get(&record.component)
            .map(|l| l.digest.clone())
            .unwrap_or_default();
        self.activate(loaded, record, started.elapsed().as_millis() as u64);
        self.remember(
            &record.component,
            &record.digest,
            &previous,
            SwapSource::Sync,
        );
        Ok(())
    }

    /// Re-read the manifest and apply it whole: changed routes, limits,
    /// links and subscriptions, added and removed components. Nothing
    /// changes if any part is invalid. Returns what changed.
    pub async fn reload(&self) -> Result<Vec<String>, DeployError> {
        let _one = self.changing.lock().await;
        let Some(load) = &self.load_config else {
            return Err(DeployError::Refused(
                "this host was not started from a manifest file".into(),
            ));
        };
        let new = load().map_err(|e| DeployError::Refused(format!("{e:#}")))?;
        let old = self.rt.config();
        for (what, changed) in [
            ("listen", old.listen != new.listen),
            ("data", old.data != new.data),
            ("redis", old.redis != new.redis),
            ("redis_prefix", old.redis_prefix != new.redis_prefix),
            ("admin", old.admin != new.admin),
            ("tracing", old.tracing != new.tracing),
        ] {
            if changed {
                return Err(DeployError::Refused(format!(
                    "{what} changed in the manifest; that needs a restart (nothing was applied)"
                )));
            }
        }
        let live = self.rt.registry.snapshot();
        let status = self.status();
        let mut components = BTreeMap::new();
        let mut changes = Vec::new();
        for (name, cfg) in &new.components {
            let current = live.components.get(name);
            let deployed = status
                .get(name)
                .is_some_and(|s| s.source == Source::Deployed);
            let loaded = match current {
                Some(cur) if deployed => Arc::new(cur.with_config(cfg.clone())),
                _ => {
                    let bytes = read_wasm(&cfg.path)
                        .map_err(|e| DeployError::Refused(format!("component {name:?}: {e:#}")))?;
                    match current {
                        Some(cur) if cur.digest == digest_of(&bytes) => {
                            Arc::new(cur.with_config(cfg.clone()))
                        }
                        _ => {
                            changes
                                .push(format!("{name}: new version from {}", cfg.path.display()));
                            self.compile(name, cfg.clone(), bytes).await.map_err(|e| {
                                DeployError::Refused(format!("component {name:?}: {e}"))
                            })?
                        }
                    }
                }
            };
            if current.is_none() {
                changes.push(format!("{name}: added"));
            } else if current.is_some_and(|c| !same_settings(&c.config, cfg)) {
                changes.push(format!("{name}: settings changed"));
            }
            components.insert(name.clone(), loaded);
        }
        for name in live.components.keys() {
            if !new.components.contains_key(name) {
                changes.push(format!("{name}: removed"));
            }
        }
        let set = LiveSet::new(Arc::new(new), components);
        for loaded in set.components.values() {
            check_role(&set.config, &set, loaded)?;
            self.rt.smoke(loaded).await.map_err(|e| {
                DeployError::Refused(format!(
                    "component {:?}: smoke test failed: {e:#}",
                    loaded.name
                ))
            })?;
        }
        let now = now_ms();
        {
            let mut all = self.status.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|name, _| set.components.contains_key(name));
            for name in set.components.keys() {
                all.entry(name.clone()).or_insert(Status {
                    source: Source::Manifest,
                    activated_ms: now,
                    rollback: Vec::new(),
                    diverged: None,
                });
            }
        }
        let swapped: Vec<(String, String, String)> = set
            .components
            .iter()
            .filter_map(|(name, new)| {
                let old = live.components.get(name)?;
                (old.digest != new.digest)
                    .then(|| (name.clone(), new.digest.clone(), old.digest.clone()))
            })
            .collect();
        self.rt.registry.replace(set);
        for (name, digest, previous) in swapped {
            self.remember(&name, &digest, &previous, SwapSource::Reload);
        }
        tracing::info!(changes = ?changes, "manifest reloaded");
        Ok(changes)
    }
}

fn same_settings(a: &ComponentConfig, b: &ComponentConfig) -> bool {
    a.routes == b.routes
        && a.subscribe == b.subscribe
        && a.links == b.links
        && a.deadline_ms == b.deadline_ms
        && a.memory_mib == b.memory_mib
        && a.publishes == b.publishes
        && a.limits == b.limits
        && a.reuse == b.reuse
}

/// Does `loaded` export what its role in `config` needs, given the other
/// components of `live`?
fn check_role(config: &Config, live: &LiveSet, loaded: &Loaded) -> Result<(), DeployError> {
    let name = &loaded.name;
    let refuse = |why: String| Err(DeployError::Refused(why));
    if !loaded.config.routes.is_empty() && loaded.exports.http.is_none() {
        return refuse(format!(
            "component {name:?} serves {:?} but this version does not export http-handler",
            loaded.config.routes
        ));
    }
    if loaded
        .config
        .subscribe
        .as_ref()
        .is_some_and(|t| !t.is_empty())
        && loaded.exports.events.is_none()
    {
        return refuse(format!(
            "component {name:?} is subscribed to topics in the manifest but this version does not export event-handler"
        ));
    }
    if let Some(current) = live.components.get(name)
        && current.exports.events.is_some()
        && loaded.exports.events.is_none()
    {
        return refuse(format!(
            "component {name:?} consumes events but this version does not export event-handler"
        ));
    }
    for (other, cfg) in &config.components {
        for (iface, provider) in &cfg.links {
            if provider == name && loaded.exports.stock.is_none() {
                return refuse(format!(
                    "component {other:?} links `{iface}` to {name:?}, but this version does not export `{iface}`"
                ));
            }
        }
    }
    for (iface, provider) in &loaded.config.links {
        let ok = if provider == name {
            loaded.exports.stock.is_some()
        } else {
            live.components
                .get(provider)
                .is_some_and(|p| p.exports.stock.is_some())
        };
        if !ok {
            return refuse(format!(
                "component {name:?} links `{iface}` to {provider:?}, which does not provide it"
            ));
        }
    }
    Ok(())
}

/// Make sure every version running from the manifest is stored by the
/// backend, so a later rollback to it finds its bytes.
pub async fn store_manifest_versions(rt: &Runtime) -> Result<()> {
    for loaded in rt.registry.all() {
        let bytes = read_wasm(&loaded.config.path)?;
        if digest_of(&bytes) == loaded.digest {
            rt.backend
                .store_wasm(&loaded.digest, &bytes)
                .await
                .with_context(|| format!("storing the bytes of {}", loaded.name))?;
        }
    }
    Ok(())
}
