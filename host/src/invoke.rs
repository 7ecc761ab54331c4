//! Running one invocation: a fresh `Store` and instance per call, a wall-clock
//! deadline enforced through epochs (and a timer for host-side waits), and a
//! classification of what went wrong. `Invocation::start` is the only place a
//! `Store` is created; [`Env`] is all it needs from the host.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Instance;
use wasmtime::{Store, UpdateDeadline};

use wasmtime::Engine;

use crate::backend::{BackendUnavailable, SharedBackend};
use crate::guard::Guards;
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

/// The span of one invocation of `loaded` under `parent`, carrying what
/// tells runs apart: the component, its version (short digest) and the
/// attempt; `link` names the interface of a linked call (`stock`).
pub fn span(
    parent: &tracing::Span,
    loaded: &Loaded,
    attempt: u32,
    link: Option<&str>,
) -> tracing::Span {
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

/// One invocation in progress: its own store and its wall-clock budget.
pub struct Invocation {
    pub store: Store<HostState>,
    metrics: Arc<crate::metrics::Metrics>,
    deadline: Instant,
    budget: Duration,
}

impl Invocation {
    /// A fresh store for `loaded`, with limits and deadline applied. `cap`
    /// (the caller's deadline) bounds a nested call: it gets no more time.
    pub fn start(
        env: &Arc<Env>,
        loaded: &Arc<Loaded>,
        uow: UnitOfWork,
        cap: Option<Instant>,
        origin: Origin,
    ) -> Self {
        loaded
            .invocations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let budget = loaded.config.deadline();
        let own = Instant::now() + budget;
        let deadline = cap.map_or(own, |cap| cap.min(own));
        let links: Arc<dyn Links> = Arc::clone(env) as Arc<dyn Links>;
        let state = HostState::new(
            Arc::clone(&loaded.identity),
            Arc::clone(&env.backend),
            links,
            Arc::clone(&env.metrics),
            uow,
            deadline,
            origin,
        );
        let mut store = Store::new(&env.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                // Yield every tick so a busy guest shares its worker thread.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Self {
            store,
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

    /// Instantiate `loaded` and resolve one export with `load` (a generated
    /// `GuestIndices::load`); `export` names it in the error.
    pub async fn open<G>(
        &mut self,
        loaded: &Loaded,
        export: &str,
        load: impl FnOnce(&mut Store<HostState>, &Instance) -> wasmtime::Result<G>,
    ) -> Result<G, Failure> {
        let started = Instant::now();
        let instantiated =
            within(self.deadline, loaded.pre.instantiate_async(&mut self.store)).await;
        self.metrics
            .instantiate_seconds
            .get_or_create(&crate::metrics::ComponentLabels {
                component: loaded.name.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        let instance = instantiated.map_err(|e| self.failure(e))?;
        load(&mut self.store, &instance).map_err(|e| Failure::Missing(format!("{export} ({e})")))
    }

    /// Classify an error of a guest call made on this invocation's store.
    pub fn failure(&self, err: wasmtime::Error) -> Failure {
        Failure::from_call(err, self.store.data(), self.budget)
    }

    /// The buffered effects, once the invocation is over.
    pub fn into_state(self) -> HostState {
        self.store.into_data()
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
