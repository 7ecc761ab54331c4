//! The runtime: engine, linker, live components and backend, plus the two
//! entry points that turn a request or an event into a committed unit of work.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use crate::backend::{Commit, Delivery, SharedBackend};
use crate::bindings::{DomainError, Event, Request, Response, SktarbucksHost as HostWorld};
use crate::config::Config;
use crate::engine::{self, EpochTicker};
use crate::invoke::{Env, Failure, Invocation, within};
use crate::registry::{LiveSet, Loaded, Registry};
use crate::state::HostState;
use crate::uow::{Changes, UnitOfWork};

/// Everything shared by all invocations of one host process.
pub struct Runtime {
    pub engine: Engine,
    /// The host's imports, to link new versions against.
    pub linker: Linker<HostState>,
    pub registry: Arc<Registry>,
    pub backend: SharedBackend,
    /// What invocations see of this runtime.
    pub env: Arc<Env>,
    /// Active subscriptions, registered by the dispatchers (for lag reports).
    pub subscriptions: Mutex<Vec<crate::backend::Subscription>>,
    /// Components that have a dispatcher running.
    dispatching: Mutex<std::collections::BTreeSet<String>>,
    /// Components whose deployed version this host could not activate
    /// (it keeps the old one), with the reason: shown by readiness.
    diverged: Mutex<BTreeMap<String, String>>,
    _ticker: EpochTicker,
}

/// Result of an HTTP invocation that did not produce a component response.
#[derive(Debug)]
pub enum HttpFailure {
    /// Not admitted: the breaker is open or every slot stayed busy.
    Refused(crate::guard::Refusal),
    Invoke(Failure),
    /// Still conflicting after the configured attempts.
    Contended(u32),
    /// The component answered a body larger than `max_response_bytes`.
    ResponseTooLarge {
        bytes: usize,
        limit: usize,
    },
    /// The commit itself failed.
    Commit(String),
}

/// Result of delivering one event to a handler, before acknowledgement.
#[derive(Debug)]
pub enum EventOutcome {
    /// Handler succeeded; these changes must commit with the ack.
    Handled(Changes),
    /// Handler returned an error (a domain refusal); retry later or dead-letter.
    Failed(String),
    /// The guest trapped or ran out of time; retry later or dead-letter
    /// (and it counts against the component's breaker).
    Faulted(String),
    /// Not admitted (breaker open or no free slot): redeliver later, no
    /// attempt counted.
    Refused(crate::guard::Refusal),
    /// The state backend failed underneath; retry without counting an attempt.
    Unavailable(String),
}

impl Runtime {
    /// Build the engine and linker, then load every component of the manifest.
    pub fn start(config: Config, backend: SharedBackend) -> Result<Arc<Self>> {
        let max_memory = config
            .components
            .values()
            .map(|c| c.memory_mib)
            .max()
            .unwrap_or(64)
            * 1024
            * 1024;
        let cache_dir = config
            .compile_cache
            .clone()
            .unwrap_or_else(|| config.data.join("compile-cache"));
        let cache_dir = std::path::absolute(&cache_dir)
            .with_context(|| format!("invalid compile cache path {}", cache_dir.display()))?;
        let engine = engine::build(max_memory, Some(&cache_dir))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("failed to link WASI")?;
        HostWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)
            .context("failed to link the sktarbucks imports")?;
        let ticker = EpochTicker::start(&engine)?;
        let mut components = BTreeMap::new();
        let total = config.components.len();
        for (i, (name, component)) in config.components.iter().enumerate() {
            // Progress: a first start compiles every component (seconds
            // each); later starts load them from the compile cache.
            let step = format!("{}/{total}", i + 1);
            tracing::info!(component = %name, step = %step, path = %component.path.display(), "compiling component");
            let started = Instant::now();
            let loaded = Loaded::from_file(&engine, &linker, name, component.clone())?;
            tracing::info!(
                component = %name,
                step = %step,
                digest = %loaded.short_digest(),
                ms = started.elapsed().as_millis() as u64,
                "component loaded"
            );
            components.insert(name.clone(), Arc::new(loaded));
        }
        let registry = Arc::new(Registry::new(LiveSet::new(Arc::new(config), components)));
        let env = Arc::new(Env {
            engine: engine.clone(),
            backend: Arc::clone(&backend),
            registry: Arc::clone(&registry),
            guards: crate::guard::Guards::default(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        });
        Ok(Arc::new(Self {
            engine,
            linker,
            registry,
            backend,
            env,
            subscriptions: Mutex::default(),
            dispatching: Mutex::default(),
            diverged: Mutex::default(),
            _ticker: ticker,
        }))
    }

    /// Why this host runs another version of `name` than the one deployed.
    pub fn diverged(&self, name: &str) -> Option<String> {
        self.diverged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Record (or clear, with `None`) that `name` diverges from its deployment.
    pub fn set_diverged(&self, name: &str, reason: Option<String>) {
        let mut all = self.diverged.lock().unwrap_or_else(|p| p.into_inner());
        match reason {
            Some(r) => all.insert(name.to_owned(), r),
            None => all.remove(name),
        };
    }

    /// Whether a dispatcher runs for component `name`.
    pub fn is_dispatching(&self, name: &str) -> bool {
        self.dispatching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    /// Record that a dispatcher now runs for component `name`.
    pub fn set_dispatching(&self, name: &str) {
        self.dispatching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
    }

    /// The manifest in force (it changes on a reload).
    pub fn config(&self) -> Arc<Config> {
        self.registry.config()
    }

    /// Events each subscriber has not yet acknowledged.
    pub async fn lag(&self) -> Result<Vec<(String, u64)>> {
        let subs = self
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = Vec::new();
        for sub in subs {
            out.push((sub.component.clone(), self.backend.lag(&sub).await?));
        }
        Ok(out)
    }

    /// Serve one request with `loaded`; commit its unit of work when the
    /// response is below 400, retrying the whole invocation on conflict.
    pub async fn serve_http(
        self: &Arc<Self>,
        loaded: &Arc<Loaded>,
        req: Request,
    ) -> Result<Response, HttpFailure> {
        let guard = self
            .env
            .guards
            .component(&loaded.name, &loaded.config.limits);
        let admitted = guard.admit().await.map_err(HttpFailure::Refused)?;
        let outcome = self.serve_http_admitted(loaded, req).await;
        match &outcome {
            Ok(r) => admitted.finish(r.status < 500),
            Err(HttpFailure::ResponseTooLarge { .. }) => admitted.finish(false),
            Err(HttpFailure::Invoke(
                Failure::Trap { .. } | Failure::Deadline(_) | Failure::Missing(_),
            )) => admitted.finish(false),
            // Backend trouble, contention, no pool slot: not the guest's fault.
            Err(_) => drop(admitted),
        }
        outcome
    }

    async fn serve_http_admitted(
        self: &Arc<Self>,
        loaded: &Arc<Loaded>,
        req: Request,
    ) -> Result<Response, HttpFailure> {
        let attempts = self.config().unit_of_work.max_attempts;
        let lane = self.registry.lane(&loaded.name);
        let mut _serialized = None;
        for attempt in 1..=attempts {
            if attempt > 1 && _serialized.is_none() {
                // Inside the lane only first attempts compete with us, so
                // retry at once: a sleep here would throttle the whole lane.
                // Waiting for it is bounded by the component's deadline.
                match tokio::time::timeout(loaded.config.deadline(), lane.lock()).await {
                    Ok(guard) => _serialized = Some(guard),
                    Err(_) => return Err(HttpFailure::Contended(attempt - 1)),
                }
            }
            let (response, uow) = self
                .run_http_once(loaded, &req)
                .await
                .map_err(HttpFailure::Invoke)?;
            let limit = self.config().max_response_bytes;
            if response.body.len() > limit {
                // Checked before committing: an answer the client cannot get
                // must not leave its writes behind.
                return Err(HttpFailure::ResponseTooLarge {
                    bytes: response.body.len(),
                    limit,
                });
            }
            if response.status >= 400 {
                return Ok(response);
            }
            let changes = uow.into_changes();
            if changes.is_write_free() {
                // Nothing to persist: a read-only request answers from
                // committed data (read committed) without taking the writer.
                return Ok(response);
            }
            let started = Instant::now();
            let committed = self.backend.commit(changes).await;
            self.env
                .metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            match committed {
                Ok(Commit::Applied) => {
                    crate::crash::point(crate::crash::AFTER_COMMIT);
                    return Ok(response);
                }
                Ok(Commit::Conflict) => {
                    self.env
                        .metrics
                        .conflicts
                        .get_or_create(&crate::metrics::ComponentLabels {
                            component: loaded.name.clone(),
                        })
                        .inc();
                    tracing::debug!(component = %loaded.name, attempt, "unit of work conflicted, retrying");
                }
                Err(e) => {
                    self.env
                        .metrics
                        .commit_failures
                        .get_or_create(&crate::metrics::KindLabels {
                            kind: "commit_unknown".into(),
                        })
                        .inc();
                    return Err(HttpFailure::Commit(format!("{e:#}")));
                }
            }
        }
        Err(HttpFailure::Contended(attempts))
    }

    async fn run_http_once(
        self: &Arc<Self>,
        loaded: &Arc<Loaded>,
        req: &Request,
    ) -> Result<(Response, UnitOfWork), Failure> {
        let Some(indices) = &loaded.exports.http else {
            return Err(Failure::Missing("http-handler".into()));
        };
        let _running = loaded.enter();
        let mut inv = Invocation::start(&self.env, loaded, UnitOfWork::default(), None, 0);
        let guest = inv
            .open(loaded, "http-handler", |s, i| indices.load(s, i))
            .await?;
        let deadline = inv.deadline();
        let response = within(deadline, guest.call_handle(&mut inv.store, req))
            .await
            .map_err(|e| inv.failure(e))?;
        Ok((response, inv.into_state().uow))
    }

    /// Run `loaded`'s event handler on one delivery (no commit here: the
    /// dispatcher commits the changes together with the acknowledgement).
    pub async fn handle_event(
        self: &Arc<Self>,
        loaded: &Arc<Loaded>,
        delivery: &Delivery,
    ) -> EventOutcome {
        let event = Event {
            id: delivery.id.clone(),
            topic: delivery.topic.clone(),
            key: delivery.key.clone(),
            payload: delivery.payload.clone(),
            source: delivery.source.clone(),
            attempt: delivery.attempt,
        };
        let guard = self
            .env
            .guards
            .component(&loaded.name, &loaded.config.limits);
        let admitted = match guard.admit().await {
            Ok(a) => a,
            Err(refusal) => return EventOutcome::Refused(refusal),
        };
        match self.run_event_once(loaded, &event).await {
            Ok((Ok(()), uow)) => {
                admitted.finish(true);
                EventOutcome::Handled(uow.into_changes())
            }
            Ok((Err(domain), _)) => {
                admitted.finish(true);
                EventOutcome::Failed(format!("handler returned {domain:?}"))
            }
            Err(Failure::Backend(reason)) => EventOutcome::Unavailable(reason),
            Err(Failure::Overloaded(reason)) => EventOutcome::Unavailable(reason),
            Err(failure) => {
                admitted.finish(false);
                EventOutcome::Faulted(failure.to_string())
            }
        }
    }

    async fn run_event_once(
        self: &Arc<Self>,
        loaded: &Arc<Loaded>,
        event: &Event,
    ) -> Result<(Result<(), DomainError>, UnitOfWork), Failure> {
        let Some(indices) = &loaded.exports.events else {
            return Err(Failure::Missing("event-handler".into()));
        };
        let _running = loaded.enter();
        let mut inv = Invocation::start(&self.env, loaded, UnitOfWork::default(), None, 0);
        let guest = inv
            .open(loaded, "event-handler", |s, i| indices.load(s, i))
            .await?;
        let deadline = inv.deadline();
        let result = within(deadline, guest.call_handle(&mut inv.store, event))
            .await
            .map_err(|e| inv.failure(e))?;
        Ok((result, inv.into_state().uow))
    }

    /// Instantiate `loaded` once (and, if it consumes events, ask for its
    /// subscriptions), within its deadline: the last check before a new
    /// version goes live. Returns the topics it would consume.
    pub async fn smoke(self: &Arc<Self>, loaded: &Arc<Loaded>) -> Result<Vec<String>> {
        if loaded.exports.events.is_some() {
            return self.subscriptions(loaded).await;
        }
        let mut inv = Invocation::start(&self.env, loaded, UnitOfWork::default(), None, 0);
        let deadline = inv.deadline();
        within(deadline, loaded.pre.instantiate_async(&mut inv.store))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "component {:?}: instantiation {}",
                    loaded.name,
                    inv.failure(e)
                )
            })?;
        Ok(Vec::new())
    }

    /// `loaded`'s OpenAPI fragment as it declares it (`None` when it
    /// exports no `api-description`).
    pub async fn api_fragment(self: &Arc<Self>, loaded: &Arc<Loaded>) -> Result<Option<String>> {
        let Some(indices) = &loaded.exports.api else {
            return Ok(None);
        };
        let mut inv = Invocation::start(&self.env, loaded, UnitOfWork::default(), None, 0);
        let text = async {
            let guest = inv
                .open(loaded, "api-description", |s, i| indices.load(s, i))
                .await?;
            let deadline = inv.deadline();
            within(deadline, guest.call_openapi(&mut inv.store))
                .await
                .map_err(|e| inv.failure(e))
        }
        .await
        .map_err(|f| anyhow::anyhow!("component {:?}: openapi() {f}", loaded.name))?;
        Ok(Some(text))
    }

    /// Topics `loaded` consumes: the manifest's list, or all it declares.
    pub async fn subscriptions(self: &Arc<Self>, loaded: &Arc<Loaded>) -> Result<Vec<String>> {
        let Some(indices) = &loaded.exports.events else {
            return Ok(loaded.config.subscribe.clone().unwrap_or_default());
        };
        let mut inv = Invocation::start(&self.env, loaded, UnitOfWork::default(), None, 0);
        let declared = async {
            let guest = inv
                .open(loaded, "event-handler", |s, i| indices.load(s, i))
                .await?;
            let deadline = inv.deadline();
            within(deadline, guest.call_subscriptions(&mut inv.store))
                .await
                .map_err(|e| inv.failure(e))
        }
        .await
        .map_err(|f| anyhow::anyhow!("component {:?}: subscriptions() {f}", loaded.name))?;
        match &loaded.config.subscribe {
            None => Ok(declared),
            Some(wanted) => {
                for topic in wanted {
                    if !declared.contains(topic) {
                        anyhow::bail!(
                            "component {:?} is subscribed to {topic:?} in the manifest but only handles {declared:?}",
                            loaded.name
                        );
                    }
                }
                Ok(wanted.clone())
            }
        }
    }
}
