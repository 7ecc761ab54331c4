//! Running one invocation: a fresh `Store` and instance per call (or, for a
//! component that opted in, an instance from its reuse pool), a wall-clock
//! deadline enforced through epochs (and a timer for host-side waits), and a
//! classification of what went wrong. `Invocation` is the only place a
//! `Store` is created; [`Env`] is all it needs from the host.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use wasmtime::component::Instance;
use wasmtime::{Store, UpdateDeadline};

use wasmtime::Engine;

use crate::backend::{BackendUnavailable, SharedBackend};
use crate::exports::LoadedExports;
use crate::guard::Guards;
use crate::pool::{Pool, Pooled, Retire};
use crate::registry::{Loaded, Registry};
use crate::state::{HostState, Links};
use crate::trace::TraceContext;
use crate::uow::UnitOfWork;

/// Where an invocation sits: the span it logs under, the trace context
/// the work it serves carries (request id; the parent of its events), which
/// run of its unit of work it is and how deep in a synchronous call chain.
#[derive(Debug, Clone)]
pub struct Origin {
    /// From [`span`]; a child of the request's, delivery's or caller's span.
    pub span: tracing::Span,
    /// Inherited from the request, the delivery or the caller.
    pub trace: TraceContext,
    /// Unit-of-work run for a request (1 = first), delivery attempt for an
    /// event; a linked call shares its caller's.
    pub attempt: u32,
    /// Nesting depth of synchronous component→component calls.
    pub depth: u8,
}

impl Origin {
    /// The host's own calls (smoke instantiation, `subscriptions()`): no
    /// request behind them, nothing to log or trace.
    pub fn internal() -> Self {
        Self {
            span: tracing::Span::none(),
            trace: TraceContext::default(),
            attempt: 1,
            depth: 0,
        }
    }
}

/// Whether an invocation gets a span of its own: only when something
/// shows it, i.e. spans are exported or `sktarbucks` lines at `debug` (the
/// routine per-invocation ones) are on. Otherwise it runs in its parent's
/// span (the request's, the delivery's or its caller's), and its few lines
/// of its own (a failure, one per delivery) name what ran themselves
/// ([`unspanned`]). A span per invocation (created, its fields formatted,
/// entered at every poll, closed) was ~5 % of the instructions of a
/// `GET /cafes/{id}` at the default log level (callgrind).
pub fn own_spans() -> bool {
    crate::trace::exporting() || tracing::enabled!(target: "sktarbucks", tracing::Level::DEBUG)
}

/// What ran, shown as `component@digest` (the digest's first 12 hex
/// digits), formatted only if the line is written.
pub struct Ran<'a> {
    name: &'a str,
    digest: &'a str,
}

impl fmt::Display for Ran<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.digest.get(..12).unwrap_or(self.digest);
        write!(f, "{}@{short}", self.name)
    }
}

/// The `ran` field of a line of an invocation of component `name` at
/// version `digest` that has no span of its own (its parent's span may
/// name another component: the caller of a linked call); nothing when it
/// has a span that says so.
pub fn unspanned<'a>(
    name: &'a str,
    digest: &'a str,
) -> Option<tracing::field::DisplayValue<Ran<'a>>> {
    (!own_spans()).then(|| tracing::field::display(Ran { name, digest }))
}

/// The span of one invocation of `loaded` under `parent`, carrying what
/// tells runs apart: the component, its version (short digest) and the
/// attempt; `link` names the interface of a linked call (`stock`). Just
/// `parent` again when invocations get no spans of their own ([`own_spans`]).
pub fn span(
    parent: &tracing::Span,
    loaded: &Loaded,
    attempt: u32,
    link: Option<&str>,
) -> tracing::Span {
    if !own_spans() {
        return parent.clone();
    }
    let span = tracing::info_span!(
        parent: parent,
        "invocation",
        component = %loaded.name,
        digest = %loaded.short_digest(),
        attempt,
        link = tracing::field::Empty,
    );
    if let Some(link) = link {
        span.record("link", tracing::field::display(link));
    }
    span
}

/// What every invocation shares: the engine, the backend and the live
/// component set (to reach linked providers). Nothing else of the runtime.
pub struct Env {
    pub engine: Engine,
    pub backend: SharedBackend,
    pub registry: Arc<Registry>,
    /// Concurrency limits and breakers, per component and per link.
    pub guards: Guards,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Raised when an invocation runs past its deadline (from the epoch callback
/// while wasm runs, from the timer while the host waits).
#[derive(Debug)]
pub struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Why an invocation produced no usable result. Nothing it wrote is kept.
#[derive(Debug)]
pub enum Failure {
    /// The guest trapped (panic, out-of-bounds, memory exhausted, ...).
    Trap { reason: String, stderr: String },
    /// It ran past its deadline and was interrupted.
    Deadline(Duration),
    /// The state backend failed underneath it.
    Backend(String),
    /// The component lacks the export this call needs.
    Missing(String),
    /// No instance slot was free (too many concurrent invocations).
    Overloaded(String),
}

impl Failure {
    /// Classify an error returned by a guest call.
    pub fn from_call(err: wasmtime::Error, state: &HostState, budget: Duration) -> Self {
        if err.is::<DeadlineExceeded>() {
            return Failure::Deadline(budget);
        }
        if let Some(limit) = err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
            return Failure::Overloaded(limit.to_string());
        }
        if let Some(backend) = err.downcast_ref::<BackendUnavailable>() {
            return Failure::Backend(backend.0.clone());
        }
        // A trap names itself; an import that refused (a host limit) is the
        // root cause under wasmtime's "error while executing" context.
        let reason = match err.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => err.root_cause().to_string(),
        };
        Failure::Trap {
            reason,
            stderr: state.stderr_text(),
        }
    }
}

impl Failure {
    /// Why a reusable instance that failed this way is dropped.
    pub fn retire_reason(&self) -> Retire {
        match self {
            Failure::Trap { .. } => Retire::Trap,
            Failure::Deadline(_) => Retire::Timeout,
            Failure::Backend(_) | Failure::Missing(_) | Failure::Overloaded(_) => Retire::HostError,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Trap { reason, stderr } if stderr.is_empty() => write!(f, "trapped: {reason}"),
            Failure::Trap { reason, stderr } => write!(f, "trapped: {reason} ({stderr})"),
            Failure::Deadline(budget) => {
                write!(f, "ran past its {} ms deadline", budget.as_millis())
            }
            Failure::Backend(reason) => write!(f, "state backend failed: {reason}"),
            Failure::Missing(what) => write!(f, "does not export {what}"),
            Failure::Overloaded(why) => write!(f, "is overloaded ({why})"),
        }
    }
}

/// One invocation in progress: its store (fresh, or a reused instance's)
/// and its wall-clock budget.
pub struct Invocation {
    pub store: Store<HostState>,
    /// Set once instantiated (at once for an instance from a pool).
    instance: Option<Instance>,
    /// The exports looked up on `instance` (kept from its earlier calls
    /// when it came from a pool).
    exports: LoadedExports,
    /// The pool the instance returns to after a successful call.
    reuse: Option<Reuse>,
    /// The host's own call (not counted as a created instance).
    internal: bool,
    metrics: Arc<crate::metrics::Metrics>,
    deadline: Instant,
    budget: Duration,
}

/// Where a reusable instance goes back to, and how worn it is.
struct Reuse {
    pool: Arc<Pool>,
    uses: u32,
    max_uses: u32,
}

/// A store for one instance of `loaded`: limits, and a deadline callback
/// that reads each invocation's deadline from the host state.
fn new_store(env: &Arc<Env>, loaded: &Loaded) -> Store<HostState> {
    let links: Weak<dyn Links> = Arc::downgrade(env) as Weak<dyn Links>;
    let state = HostState::new(
        Arc::clone(&loaded.identity),
        Arc::clone(&env.backend),
        links,
        Arc::clone(&env.metrics),
    );
    let mut store = Store::new(&env.engine, state);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|store| {
        if Instant::now() >= store.data().deadline {
            Err(wasmtime::Error::new(DeadlineExceeded))
        } else {
            // Yield every tick so a busy guest shares its worker thread.
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

impl Invocation {
    /// An invocation of `loaded`: on an instance from its reuse pool when it
    /// opted in and one is idle, else on a fresh store; limits and deadline
    /// applied, per-invocation state reset. `cap` (the caller's deadline)
    /// bounds a nested call: it gets no more time.
    pub fn start(
        env: &Arc<Env>,
        loaded: &Arc<Loaded>,
        uow: UnitOfWork,
        cap: Option<Instant>,
        origin: Origin,
    ) -> Self {
        Self::begin(env, loaded, uow, cap, origin, true)
    }

    /// Like [`start`](Self::start) but always on a fresh instance that is
    /// dropped afterwards: the host's own calls (smoke test, subscriptions,
    /// OpenAPI) never touch a pool.
    pub fn single(env: &Arc<Env>, loaded: &Arc<Loaded>, origin: Origin) -> Self {
        Self::begin(env, loaded, UnitOfWork::default(), None, origin, false)
    }

    fn begin(
        env: &Arc<Env>,
        loaded: &Arc<Loaded>,
        uow: UnitOfWork,
        cap: Option<Instant>,
        origin: Origin,
        reusable: bool,
    ) -> Self {
        loaded
            .invocations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let budget = loaded.config.deadline();
        let own = Instant::now() + budget;
        let deadline = cap.map_or(own, |cap| cap.min(own));
        let pool = loaded.pool.as_ref().filter(|_| reusable);
        let (mut store, instance, exports, reuse) = match pool.map(|p| (p, p.take())) {
            Some((pool, Some(pooled))) => (
                pooled.store,
                Some(pooled.instance),
                pooled.exports,
                Some(Reuse {
                    pool: Arc::clone(pool),
                    uses: pooled.uses,
                    max_uses: pooled.max_uses,
                }),
            ),
            Some((pool, None)) => (
                new_store(env, loaded),
                None,
                LoadedExports::default(),
                Some(Reuse {
                    pool: Arc::clone(pool),
                    uses: 0,
                    max_uses: pool.draw_max_uses(),
                }),
            ),
            None => (new_store(env, loaded), None, LoadedExports::default(), None),
        };
        store.data_mut().begin(uow, deadline, origin);
        store.set_epoch_deadline(1);
        Self {
            store,
            instance,
            exports,
            reuse,
            internal: !reusable,
            metrics: Arc::clone(&env.metrics),
            deadline,
            budget,
        }
    }

    /// When this invocation must be done.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The span it runs under (instrument its guest calls with it).
    pub fn span(&self) -> tracing::Span {
        self.store.data().span.clone()
    }

    /// Whether it runs on an instance that served an earlier invocation.
    pub fn is_reused(&self) -> bool {
        self.reuse.as_ref().is_some_and(|r| r.uses > 0)
    }

    /// The instance, instantiating `loaded` first unless it came from a pool.
    pub async fn instance(&mut self, loaded: &Loaded) -> Result<Instance, Failure> {
        if let Some(instance) = self.instance {
            return Ok(instance);
        }
        let started = Instant::now();
        let instantiated =
            within(self.deadline, loaded.pre.instantiate_async(&mut self.store)).await;
        let labels = crate::metrics::ComponentLabels {
            component: loaded.name.clone(),
        };
        self.metrics
            .instantiate_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let instance = instantiated.map_err(|e| self.failure(e))?;
        match &self.reuse {
            Some(reuse) => reuse.pool.created(),
            None if !self.internal => {
                self.metrics.instances_created.get_or_create(&labels).inc();
            }
            None => {}
        }
        self.instance = Some(instance);
        Ok(instance)
    }

    /// Get the instance (see [`instance`](Self::instance)) and resolve one
    /// export with `load` (a generated `GuestIndices::load`), unless this
    /// instance resolved it on an earlier call; `export` names it in the
    /// error.
    pub async fn open<G: Clone + Send + Sync + 'static>(
        &mut self,
        loaded: &Loaded,
        export: &str,
        load: impl FnOnce(&mut Store<HostState>, &Instance) -> wasmtime::Result<G>,
    ) -> Result<G, Failure> {
        let instance = self.instance(loaded).await?;
        if let Some(guest) = self.exports.get::<G>() {
            return Ok(guest);
        }
        let guest = load(&mut self.store, &instance)
            .map_err(|e| Failure::Missing(format!("{export} ({e})")))?;
        // Only an instance that may serve again keeps it.
        if self.reuse.is_some() {
            self.exports.insert(guest.clone());
        }
        Ok(guest)
    }

    /// Classify an error of a guest call made on this invocation's store.
    pub fn failure(&self, err: wasmtime::Error) -> Failure {
        Failure::from_call(err, self.store.data(), self.budget)
    }

    /// The call failed with `err`: classify it and drop the instance.
    pub fn fail(self, err: wasmtime::Error) -> Failure {
        let failure = self.failure(err);
        self.retire(failure)
    }

    /// The invocation ended in `failure`: drop the instance (counted as a
    /// retirement when it was reusable) and pass the failure on.
    pub fn retire(self, failure: Failure) -> Failure {
        if let Some(reuse) = &self.reuse
            && self.instance.is_some()
        {
            reuse.pool.retire(failure.retire_reason());
        }
        failure
    }

    /// The call returned: take its unit of work and budget. `verdict` says
    /// whether the instance may serve again (`Ok`) or must be retired (an
    /// error answer); a reusable instance goes back to its pool with its
    /// host state wiped.
    pub fn end(mut self, verdict: Result<(), Retire>) -> (UnitOfWork, crate::state::Budget) {
        let effects = self.store.data_mut().end();
        if let (Some(reuse), Some(instance)) = (self.reuse, self.instance) {
            match verdict {
                Ok(()) => reuse.pool.put(Pooled {
                    store: self.store,
                    instance,
                    exports: self.exports,
                    uses: reuse.uses.saturating_add(1),
                    max_uses: reuse.max_uses,
                }),
                Err(why) => reuse.pool.retire(why),
            }
        }
        effects
    }
}

/// Await a guest call, bounding host-side waits too: the epoch deadline only
/// fires while wasm runs, this also covers a hung import.
pub async fn within<T>(
    deadline: Instant,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let grace = Duration::from_millis(500);
    match tokio::time::timeout_at((deadline + grace).into(), call).await {
        Ok(result) => result,
        Err(_) => Err(wasmtime::Error::new(DeadlineExceeded)),
    }
}
