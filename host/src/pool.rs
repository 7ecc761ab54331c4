//! Instance reuse (opt-in per component, `reuse` in the manifest): idle
//! instances of one component version, each in its own `Store`, handed to
//! one invocation at a time.
//!
//! Rules, enforced here and in `invoke`:
//! - serial: an instance is out of the pool while it runs, so no two
//!   invocations ever share it;
//! - the per-invocation host state (unit of work, budget, deadline, span,
//!   trace, stderr) is reset before each call and wiped after it
//!   (`HostState::begin` / `end`);
//! - an instance goes back only after a call that succeeded: any trap,
//!   timeout, host error, error response (status >= 400, a stock refusal)
//!   or event-handler error retires it, and so does a cancelled call (its
//!   store is simply dropped);
//! - each instance serves at most a random `max_uses/2 ..= max_uses` calls,
//!   and one idle longer than `idle_ms` is dropped;
//! - a pool belongs to one `Loaded` (one component version under one
//!   manifest entry): never shared across components or versions, and
//!   closed when that version stops being live (swap, rollback, reload).
//!
//! What survives from one call to the next is the guest's own memory: its
//! globals and heap. That is why components opted in must keep no state in
//! globals; everything they keep goes through the `store` import.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use wasmtime::Store;
use wasmtime::component::Instance;

use crate::config::ReuseConfig;
use crate::metrics::{ComponentLabels, Metrics, RetireLabels};
use crate::state::HostState;

/// Why an instance was dropped instead of going back to its pool (the
/// `reason` label of `sktarbucks_instances_retired_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// The guest trapped: it may never be entered again.
    Trap,
    /// It ran past its deadline (interrupted mid-call).
    Timeout,
    /// The host failed under it (backend, missing export, no slot).
    HostError,
    /// It answered an error (status >= 400, or a refused stock call).
    ErrorResponse,
    /// Its event handler returned an error.
    HandlerError,
    /// It served its drawn number of calls.
    MaxUses,
    /// It sat unused longer than `idle_ms`.
    Idle,
    /// The pool already held `max_idle` instances.
    PoolFull,
    /// Its version is no longer live (hot swap, rollback, reload).
    Swap,
}

impl Retire {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Retire::Trap => "trap",
            Retire::Timeout => "timeout",
            Retire::HostError => "host_error",
            Retire::ErrorResponse => "error_response",
            Retire::HandlerError => "handler_error",
            Retire::MaxUses => "max_uses",
            Retire::Idle => "idle",
            Retire::PoolFull => "pool_full",
            Retire::Swap => "swap",
        }
    }
}

/// An instance with its store, out of the pool or on its way back.
pub struct Pooled {
    pub store: Store<HostState>,
    pub instance: Instance,
    /// Calls it has served.
    pub uses: u32,
    /// Calls it may serve (drawn when it was created).
    pub max_uses: u32,
    /// The exports its calls have looked up so far.
    pub exports: crate::exports::LoadedExports,
}

struct Idle {
    pooled: Pooled,
    since: Instant,
}

/// The idle instances of one component version.
pub struct Pool {
    component: String,
    settings: ReuseConfig,
    /// Most recently used last: `take` pops the warmest, expiry starts at
    /// the front.
    idle: Mutex<Vec<Idle>>,
    /// Set when the version stops being live; nothing goes back after.
    closed: AtomicBool,
    metrics: std::sync::Arc<Metrics>,
    created: Counter,
    reused: Counter,
    /// Idle instances of the component (shared by its versions' pools).
    idle_gauge: Gauge,
}

impl Pool {
    /// An empty pool for `component` (one version of it).
    pub fn new(component: &str, settings: ReuseConfig, metrics: std::sync::Arc<Metrics>) -> Self {
        let labels = ComponentLabels {
            component: component.to_owned(),
        };
        let created = metrics.instances_created.get_or_create(&labels).clone();
        let reused = metrics.instances_reused.get_or_create(&labels).clone();
        let idle_gauge = metrics.instances_idle.get_or_create(&labels).clone();
        Self {
            component: component.to_owned(),
            settings,
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            metrics,
            created,
            reused,
            idle_gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &ReuseConfig {
        &self.settings
    }

    /// Idle instances now.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    /// The warmest idle instance, if one is left that has not expired.
    pub fn take(&self) -> Option<Pooled> {
        let now = Instant::now();
        let idle_for = self.settings.idle();
        let mut expired = Vec::new();
        let taken = {
            let mut idle = self.lock();
            let taken = loop {
                match idle.pop() {
                    None => break None,
                    // The newest has expired, so have all the others.
                    Some(entry) if now.duration_since(entry.since) >= idle_for => {
                        expired.push(entry);
                        expired.append(&mut idle);
                    }
                    Some(entry) => break Some(entry.pooled),
                }
            };
            self.idle_gauge
                .dec_by(len_i64(expired.len() + usize::from(taken.is_some())));
            taken
        };
        self.retired(Retire::Idle, expired.len());
        drop(expired);
        if taken.is_some() {
            self.reused.inc();
        }
        taken
    }

    /// How many calls a new instance may serve: drawn from
    /// `max_uses/2 ..= max_uses`, so instances of one burst do not all
    /// retire (and re-instantiate) together.
    pub fn draw_max_uses(&self) -> u32 {
        let max = self.settings.max_uses.max(1);
        rand::random_range((max / 2).max(1)..=max)
    }

    /// Count an instance this pool's version created.
    pub fn created(&self) {
        self.created.inc();
    }

    /// Give back an instance whose call succeeded (its host state already
    /// wiped); it is dropped instead when it has served its uses, when the
    /// version is no longer live, or (the oldest one) when the pool is full.
    pub fn put(&self, pooled: Pooled) {
        if pooled.uses >= pooled.max_uses {
            return self.retire(Retire::MaxUses);
        }
        if self.closed.load(Ordering::Acquire) {
            return self.retire(Retire::Swap);
        }
        let max_idle = usize::try_from(self.settings.max_idle).unwrap_or(usize::MAX);
        let overflow = {
            let mut idle = self.lock();
            // Checked again under the lock: `close` drains under it too.
            if self.closed.load(Ordering::Acquire) {
                drop(idle);
                return self.retire(Retire::Swap);
            }
            idle.push(Idle {
                pooled,
                since: Instant::now(),
            });
            let excess = idle.len().saturating_sub(max_idle);
            let overflow: Vec<Idle> = idle.drain(..excess).collect();
            self.idle_gauge.inc_by(1 - len_i64(overflow.len()));
            overflow
        };
        self.retired(Retire::PoolFull, overflow.len());
    }

    /// Count one instance dropped for `why` (the caller drops it).
    pub fn retire(&self, why: Retire) {
        self.retired(why, 1);
    }

    fn retired(&self, why: Retire, n: usize) {
        if n == 0 {
            return;
        }
        self.metrics
            .instances_retired
            .get_or_create(&RetireLabels {
                component: self.component.clone(),
                reason: why.label().to_owned(),
            })
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Drop the instances idle longer than `idle_ms` (called periodically,
    /// so an idle pool gives its memory back without traffic).
    pub fn sweep(&self) {
        let idle_for = self.settings.idle();
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut idle = self.lock();
            let fresh = idle
                .iter()
                .position(|e| now.duration_since(e.since) < idle_for)
                .unwrap_or(idle.len());
            let expired: Vec<Idle> = idle.drain(..fresh).collect();
            self.idle_gauge.dec_by(len_i64(expired.len()));
            expired
        };
        self.retired(Retire::Idle, expired.len());
    }

    /// The version stopped being live: drop every idle instance, and every
    /// busy one when its call ends.
    pub fn close(&self) {
        let drained: Vec<Idle> = {
            let mut idle = self.lock();
            self.closed.store(true, Ordering::Release);
            let drained = std::mem::take(&mut *idle);
            self.idle_gauge.dec_by(len_i64(drained.len()));
            drained
        };
        self.retired(Retire::Swap, drained.len());
    }
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
