//! Running one invocation: a fresh `Store` and instance per call, a wall-clock
//! deadline enforced through epochs, and a classification of what went wrong.
//! `new_store` is the only place a `Store` is created.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::Instance;
use wasmtime::{Store, UpdateDeadline};

use crate::registry::Loaded;
use crate::runtime::Runtime;
use crate::state::HostState;
use crate::uow::UnitOfWork;

/// Raised from the epoch callback when an invocation runs past its deadline.
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
        let text = format!("{err:#}");
        if text.contains("state backend failed") {
            return Failure::Backend(root_line(&text));
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

/// First line of an error chain's text (wasm backtraces follow it).
fn root_line(text: &str) -> String {
    text.lines().next().unwrap_or(text).to_owned()
}

/// A store ready to instantiate `loaded`, with limits and deadline applied.
pub fn new_store(
    rt: &Arc<Runtime>,
    loaded: &Arc<Loaded>,
    uow: UnitOfWork,
    deadline: Instant,
    depth: u8,
) -> Store<HostState> {
    let state = HostState::new(Arc::clone(loaded), Arc::clone(rt), uow, deadline, depth);
    let mut store = Store::new(&rt.engine, state);
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
    store
}

/// Instantiate a fresh instance of `loaded` into `store`.
pub async fn instantiate(
    store: &mut Store<HostState>,
    loaded: &Loaded,
    budget: Duration,
) -> Result<Instance, Failure> {
    match loaded.pre.instantiate_async(&mut *store).await {
        Ok(instance) => Ok(instance),
        Err(err) => Err(Failure::from_call(err, store.data(), budget)),
    }
}

/// Await a guest call, bounding host-side waits too: the epoch deadline only
/// fires while wasm runs, this also covers a hung import.
pub async fn bounded<T>(
    deadline: Instant,
    budget: Duration,
    call: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let grace = Duration::from_millis(500);
    match tokio::time::timeout_at((deadline + grace).into(), call).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Deadline(budget)),
    }
}
