//! The runtime: engine, linker, live components and backend, plus the two
//! entry points that turn a request or an event into a committed unit of work.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use tracing::Instrument;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use crate::backend::{Commit, Delivery, SharedBackend};
use crate::bindings::{DomainError, Event, Request, Response, SktarbucksHost as HostWorld};
use crate::config::Config;
use crate::engine::{self, EpochTicker};
use crate::invoke::{self, Env, Failure, Invocation, Origin, within};
use crate::pool::Retire;
use crate::registry::{LiveSet, Loaded, Registry};
use crate::state::HostState;
use crate::trace::{TraceContext, info_or_debug, micros};
use crate::uow::{Changes, UnitOfWork};

/// How often idle reusable instances are looked at for expiry.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Drop expired idle instances every [`SWEEP_EVERY`], so an idle pool gives
/// its memory back without traffic; ends with the registry. Needs a tokio
/// runtime (without one, expiry still happens when a pool is next used).
fn sweep_idle_instances(registry: &Arc<Registry>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let registry = Arc::downgrade(registry);
    handle.spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(registry) = registry.upgrade() else {
                return;
            };
            registry.sweep_idle();
        }
    });
}

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
    /// Still conflicting: after the configured attempts, or (`queued`
    /// set) after waiting that long for the component's retry lane.
    Contended {
        attempts: u32,
        queued: Option<std::time::Duration>,
    },
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
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let mut components = BTreeMap::new();
        let total = config.components.len();
        for (i, (name, component)) in config.components.iter().enumerate() {
            // Progress: a first start compiles every component (seconds
            // each); later starts load them from the compile cache.
            let step = format!("{}/{total}", i + 1);
            tracing::info!(component = %name, step = %step, path = %component.path.display(), "compiling component");
            let started = Instant::now();
            let loaded = Loaded::from_file(&engine, &linker, &metrics, name, component.clone())?;
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
            metrics,
        });
        sweep_idle_instances(&registry);
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

    /// Read one value of the manifest in force (see `Registry::read_config`).
    pub fn read_config<R>(&self, f: impl FnOnce(&Config) -> R) -> R {
        self.registry.read_config(f)
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
    /// `trace` (the request's id) goes onto every event the unit publishes;
    /// each run gets an `invocation` span under the current one.
    pub async fn serve_http(
        self: &Arc<Self>,
        loaded: &Arc<Loaded>,
        req: Request,
        trace: TraceContext,
    ) -> Result<Response, HttpFailure> {
        let guard = self
            .env
            .guards
            .component(&loaded.name, &loaded.config.limits);
        let admitted = guard.admit().await.map_err(HttpFailure::Refused)?;
        let outcome = self.serve_http_admitted(loaded, req, trace).await;
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
        trace: TraceContext,
    ) -> Result<Response, HttpFailure> {
        let attempts = self.read_config(|c| c.unit_of_work.max_attempts);
        let parent = tracing::Span::current();
        let mut _serialized = None;
        for attempt in 1..=attempts {
            if attempt > 1 && _serialized.is_none() {
                // Inside the lane only first attempts compete with us, so
                // retry at once: a sleep here would throttle the whole lane.
                // Waiting for it is bounded by the component's deadline.
                // (Looked up only now: first attempts never take it.)
                let lane = self.registry.lane(&loaded.name);
                match tokio::time::timeout(loaded.config.deadline(), lane.lock_owned()).await {
                    Ok(guard) => _serialized = Some(guard),
                    Err(_) => {
                        return Err(HttpFailure::Contended {
                            attempts: attempt - 1,
                            queued: Some(loaded.config.deadline()),
                        });
                    }
                }
            }
            let origin = Origin {
                span: invoke::span(&parent, loaded, attempt, None),
                trace: trace.clone(),
                attempt,
                depth: 0,
            };
            let span = origin.span.clone();
            let started = Instant::now();
            let (outcome, done) = self
                .run_and_commit(loaded, &req, origin)
                .instrument(span.clone())
                .await;
            let status = done
                .as_ref()
                .ok()
                .and_then(|r| r.as_ref())
                .map(|r| r.status);
            // The request line already says how it ended: the run that
            // answered, and re-runs after a conflict, are detail (`debug`);
            // a run that failed is worth a line of its own.
            let routine = matches!(
                outcome,
                "committed" | "read_only" | "discarded" | "conflict"
            );
            info_or_debug!(!routine, parent: &span, outcome = %outcome, status, us = micros(started), ran = invoke::unspanned(&loaded.name, &loaded.digest), request_id = trace.request_id_field(&span), "invocation finished");
            match done {
                Ok(Some(response)) => return Ok(response),
                Ok(None) => continue,
                Err(failure) => return Err(failure),
            }
        }
        Err(HttpFailure::Contended {
            attempts,
            queued: None,
        })
    }

    /// One run of a request's unit of work: the invocation, then the commit
    /// when it answered below 400. `None`: it conflicted, run it again. The
    /// label says what became of it (for its log line).
    async fn run_and_commit(
        self: &Arc<Self>,
        loaded: &Arc<Loaded>,
        req: &Request,
        origin: Origin,
    ) -> (&'static str, Result<Option<Response>, HttpFailure>) {
        // Boxed (here and around `serve_http`): awaiting the guest call's
        // large future inline copied it whole at each level (~10k of the
        // ~138k instructions of a GET went to `memcpy`).
        // One reading of the limit for both of its uses: the instance's
        // retirement and the refusal below.
        let limit = self.read_config(|c| c.max_response_bytes);
        let (response, uow) = match Box::pin(self.run_http_once(loaded, req, origin, limit)).await {
            Ok(ran) => ran,
            Err(failure) => return ("failed", Err(HttpFailure::Invoke(failure))),
        };
        if response.body.len() > limit {
            // Checked before committing: an answer the client cannot get
            // must not leave its writes behind.
            return (
                "response_too_large",
                Err(HttpFailure::ResponseTooLarge {
                    bytes: response.body.len(),
                    limit,
                }),
            );
        }
        if response.status >= 400 {
            return ("discarded", Ok(Some(response)));
        }
        let changes = uow.into_changes();
        if changes.is_write_free() {
            // Nothing to persist: a read-only request answers from
            // committed data (read committed) without taking the writer.
            return ("read_only", Ok(Some(response)));
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
                ("committed", Ok(Some(response)))
            }
            Ok(Commit::Conflict) => {
                self.env
                    .metrics
                    .conflicts
                    .get_or_create(&crate::metrics::ComponentLabels {
                        component: loaded.name.clone(),
                    })
                    .inc();
                ("conflict", Ok(None))
            }
            Err(e) => {
                self.env
                    .metrics
                    .commit_failures
                    .get_or_create(&crate::metrics::KindLabels {
                        kind: "commit_unknown".into(),
                    })
                    .inc();
                ("commit_failed", Err(HttpFailure::Commit(format!("{e:#}"))))
            }
        }
    }

    /// `max_response` is the manifest's `max_response_bytes`, read once by
    /// the caller.
    async fn run_http_once(
        self: &Arc<Self>,
        loaded: &Arc<Loaded>,
        req: &Request,
        origin: Origin,
        max_response: usize,
    ) -> Result<(Response, UnitOfWork), Failure> {
        let Some(indices) = &loaded.exports.http else {
            return Err(Failure::Missing("http-handler".into()));
        };
        let _running = loaded.enter();
        let mut inv = Invocation::start(&self.env, loaded, UnitOfWork::default(), None, origin);
        let guest = match inv
            .open(loaded, "http-handler", |s, i| indices.load(s, i))
            .await
        {
            Ok(guest) => guest,
            Err(failure) => return Err(inv.retire(failure)),
        };
        let deadline = inv.deadline();
        let response = match within(deadline, guest.call_handle(&mut inv.store, req)).await {
            Ok(response) => response,
            Err(e) => return Err(inv.fail(e)),
        };
        // An error answer retires a reused instance, and so does one the
        // client will not get (too large).
        let verdict = if response.status >= 400 || response.body.len() > max_response {
            Err(Retire::ErrorResponse)
        } else {
            Ok(())
        };
        let (uow, _) = inv.end(verdict);
        Ok((response, uow))
    }

    /// Run `loaded`'s event handler on one delivery (no commit here: the
    /// dispatcher commits the changes together with the acknowledgement),
    /// in an `invocation` span under the current (the delivery's) one. The
    /// events it publishes inherit the delivery's trace context.
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
        let origin = Origin {
            span: invoke::span(&tracing::Span::current(), loaded, delivery.attempt, None),
            trace: delivery.trace.clone(),
            attempt: delivery.attempt,
            depth: 0,
        };
        let span = origin.span.clone();
        let started = Instant::now();
        let ran = self
            .run_event_once(loaded, &event, origin)
            .instrument(span.clone())
            .await;
        let (label, outcome) = match ran {
            Ok((Ok(()), uow)) => {
                admitted.finish(true);
                ("handled", EventOutcome::Handled(uow.into_changes()))
            }
            Ok((Err(domain), _)) => {
                admitted.finish(true);
                (
                    "refused",
                    EventOutcome::Failed(format!("handler returned {domain:?}")),
                )
            }
            Err(Failure::Backend(reason)) => ("unavailable", EventOutcome::Unavailable(reason)),
            Err(Failure::Overloaded(reason)) => ("unavailable", EventOutcome::Unavailable(reason)),
            Err(failure) => {
                admitted.finish(false);
                ("failed", EventOutcome::Faulted(failure.to_string()))
            }
        };
        // Without a delivery span (see `invoke::own_spans`) the line names
        // the delivery itself.
        let bare = span.is_none();
        tracing::info!(
            parent: &span,
            outcome = %label,
            us = micros(started),
            ran = invoke::unspanned(&loaded.name, &loaded.digest),
            event_id = bare.then(|| tracing::field::display(&delivery.id)),
            topic = bare.then(|| tracing::field::display(&delivery.topic)),
            attempt = bare.then_some(delivery.attempt),
            request_id = delivery.trace.request_id_field(&span),
            "invocation finished"
        );
        outcome
    }

    async fn run_event_once(
        self: &Arc<Self>,
        loaded: &Arc<Loaded>,
        event: &Event,
        origin: Origin,
    ) -> Result<(Result<(), DomainError>, UnitOfWork), Failure> {
        let Some(indices) = &loaded.exports.events else {
            return Err(Failure::Missing("event-handler".into()));
        };
        let _running = loaded.enter();
        let mut inv = Invocation::start(&self.env, loaded, UnitOfWork::default(), None, origin);
        let guest = match inv
            .open(loaded, "event-handler", |s, i| indices.load(s, i))
            .await
        {
            Ok(guest) => guest,
            Err(failure) => return Err(inv.retire(failure)),
        };
        let deadline = inv.deadline();
        let result = match within(deadline, guest.call_handle(&mut inv.store, event)).await {
            Ok(result) => result,
            Err(e) => return Err(inv.fail(e)),
        };
        let verdict = match &result {
            Ok(()) => Ok(()),
            Err(_) => Err(Retire::HandlerError),
        };
        let (uow, _) = inv.end(verdict);
        Ok((result, uow))
    }

    /// Instantiate `loaded` once (and, if it consumes events, ask for its
    /// subscriptions), within its deadline: the last check before a new
    /// version goes live. Returns the topics it would consume.
    pub async fn smoke(self: &Arc<Self>, loaded: &Arc<Loaded>) -> Result<Vec<String>> {
        if loaded.exports.events.is_some() {
            return self.subscriptions(loaded).await;
        }
        let mut inv = Invocation::single(&self.env, loaded, Origin::internal());
        inv.instance(loaded)
            .await
            .map_err(|f| anyhow::anyhow!("component {:?}: instantiation {f}", loaded.name))?;
        Ok(Vec::new())
    }

    /// `loaded`'s OpenAPI fragment as it declares it (`None` when it
    /// exports no `api-description`).
    pub async fn api_fragment(self: &Arc<Self>, loaded: &Arc<Loaded>) -> Result<Option<String>> {
        let Some(indices) = &loaded.exports.api else {
            return Ok(None);
        };
        let text = self
            .call_internal(
                loaded,
                "api-description",
                |s, i| indices.load(s, i),
                |guest, store| Box::pin(async move { guest.call_openapi(store).await }),
            )
            .await
            .map_err(|f| anyhow::anyhow!("component {:?}: openapi() {f}", loaded.name))?;
        Ok(Some(text))
    }

    /// One call of an export outside any request or event (subscriptions,
    /// the OpenAPI fragment): a fresh instance under the component's
    /// deadline, nothing committed.
    async fn call_internal<G: Clone + Send + Sync + 'static, R>(
        &self,
        loaded: &Arc<Loaded>,
        export: &str,
        load: impl FnOnce(
            &mut wasmtime::Store<HostState>,
            &wasmtime::component::Instance,
        ) -> wasmtime::Result<G>,
        call: impl for<'s> FnOnce(
            G,
            &'s mut wasmtime::Store<HostState>,
        ) -> futures::future::BoxFuture<'s, wasmtime::Result<R>>,
    ) -> Result<R, Failure> {
        let mut inv = Invocation::single(&self.env, loaded, Origin::internal());
        let guest = inv.open(loaded, export, load).await?;
        let deadline = inv.deadline();
        within(deadline, call(guest, &mut inv.store))
            .await
            .map_err(|e| inv.failure(e))
    }

    /// Topics `loaded` consumes: the manifest's list, or all it declares.
    pub async fn subscriptions(self: &Arc<Self>, loaded: &Arc<Loaded>) -> Result<Vec<String>> {
        let Some(indices) = &loaded.exports.events else {
            return Ok(loaded.config.subscribe.clone().unwrap_or_default());
        };
        let declared = self
            .call_internal(
                loaded,
                "event-handler",
                |s, i| indices.load(s, i),
                |guest, store| Box::pin(async move { guest.call_subscriptions(store).await }),
            )
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
