//! Per-component admission: a concurrency limit with a bounded wait, and a
//! circuit breaker (the Istio DestinationRule analogue). A slow or failing
//! component is cut off quickly, with a clear 503, instead of dragging its
//! callers down: while a breaker is open no guest runs at all.
//!
//! Breaker: closed → open after `consecutive_failures` failures in a row, or
//! when at least half of the last `window` outcomes failed (once `window`
//! outcomes were seen); open → half-open after `open_ms`, when exactly one
//! probe is let through; its success closes the breaker, its failure opens
//! it again. Failures are traps, timeouts and 5xx answers, never a domain
//! refusal (404, 409, ...).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitsConfig;

/// Why an invocation was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The breaker is open; retry after this long.
    Open(Duration),
    /// Every slot stayed busy for the whole bounded wait.
    Busy(Duration),
}

impl Refusal {
    /// Seconds for a `Retry-After` header (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Refusal::Open(d) => d.as_secs().max(1),
            Refusal::Busy(_) => 1,
        }
    }
}

/// A breaker's state, as reported by readiness and the admin listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is out; everything else is refused until it reports.
    HalfOpen,
}

#[derive(Debug)]
struct Breaker {
    state: State,
    consecutive: u32,
    window: VecDeque<bool>,
}

/// Admission for one component (or one link).
#[derive(Debug)]
pub struct Guard {
    limits: LimitsConfig,
    permits: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
}

/// Held while an admitted invocation runs; report its outcome with
/// [`Admitted::finish`]. Dropped without a report (a cancelled request),
/// it counts as neither success nor failure, but a probe is released.
pub struct Admitted {
    guard: Arc<Guard>,
    _permit: Option<OwnedSemaphorePermit>,
    probe: bool,
    reported: bool,
}

impl Admitted {
    /// Record the outcome: `ok = false` for a trap, timeout or 5xx.
    pub fn finish(mut self, ok: bool) {
        self.reported = true;
        self.guard.record(ok, self.probe);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            // Nobody learned anything: let the next request probe.
            let mut b = self.guard.lock();
            if matches!(b.state, State::HalfOpen) {
                b.state = State::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

impl Guard {
    pub fn new(limits: LimitsConfig) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_in_flight as usize)),
            breaker: Mutex::new(Breaker {
                state: State::Closed,
                consecutive: 0,
                window: VecDeque::new(),
            }),
            limits,
        }
    }

    /// The settings this guard was built with (a reload that changes them
    /// builds a new guard).
    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The breaker's state now.
    pub fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Invocations admitted and still running.
    pub fn in_flight(&self) -> usize {
        (self.limits.max_in_flight as usize).saturating_sub(self.permits.available_permits())
    }

    /// Ask to run one invocation: refused at once while the breaker is open,
    /// after the bounded wait when every slot stays busy.
    pub async fn admit(self: &Arc<Self>) -> Result<Admitted, Refusal> {
        let probe = self.pass_breaker()?;
        let wait = Duration::from_millis(self.limits.queue_ms);
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                match tokio::time::timeout(wait, Arc::clone(&self.permits).acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        if probe {
                            let mut b = self.lock();
                            b.state = State::Open {
                                until: Instant::now(),
                            };
                        }
                        return Err(Refusal::Busy(wait));
                    }
                }
            }
        };
        Ok(Admitted {
            guard: Arc::clone(self),
            _permit: Some(permit),
            probe,
            reported: false,
        })
    }

    /// Breaker check only (a linked call's own breaker, whose concurrency is
    /// the provider's): `Ok(true)` when this call is the half-open probe.
    pub fn admit_breaker(self: &Arc<Self>) -> Result<Admitted, Refusal> {
        let probe = self.pass_breaker()?;
        Ok(Admitted {
            guard: Arc::clone(self),
            _permit: None,
            probe,
            reported: false,
        })
    }

    fn pass_breaker(&self) -> Result<bool, Refusal> {
        let mut b = self.lock();
        match b.state {
            State::Closed => Ok(false),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    b.state = State::HalfOpen;
                    Ok(true)
                } else {
                    Err(Refusal::Open(until - now))
                }
            }
            State::HalfOpen => Err(Refusal::Open(Duration::from_millis(
                self.limits.open_ms.min(1000),
            ))),
        }
    }

    fn record(&self, ok: bool, probe: bool) {
        let limits = &self.limits;
        let mut b = self.lock();
        let open = || State::Open {
            until: Instant::now() + Duration::from_millis(limits.open_ms),
        };
        if probe || matches!(b.state, State::HalfOpen) {
            b.window.clear();
            b.consecutive = 0;
            b.state = if ok { State::Closed } else { open() };
            if !ok {
                tracing::warn!("circuit breaker probe failed; open again");
            } else {
                tracing::info!("circuit breaker closed after a successful probe");
            }
            return;
        }
        if !matches!(b.state, State::Closed) {
            return;
        }
        b.consecutive = if ok { 0 } else { b.consecutive + 1 };
        b.window.push_back(ok);
        while b.window.len() > limits.window as usize {
            b.window.pop_front();
        }
        let failed = b.window.iter().filter(|ok| !**ok).count();
        let by_rate = limits.window > 0
            && b.window.len() == limits.window as usize
            && failed * 2 >= b.window.len();
        if (limits.consecutive_failures > 0 && b.consecutive >= limits.consecutive_failures)
            || by_rate
        {
            tracing::warn!(
                consecutive = b.consecutive,
                failed_in_window = failed,
                open_ms = limits.open_ms,
                "circuit breaker opened"
            );
            b.state = open();
            b.window.clear();
            b.consecutive = 0;
        }
    }
}

/// Every guard of this host: one per component (its concurrency limit and
/// breaker) and one breaker per link (caller → provider).
#[derive(Debug, Default)]
pub struct Guards {
    all: Mutex<std::collections::HashMap<String, Arc<Guard>>>,
}

impl Guards {
    /// The guard under `key`; allocates only when it is created (this runs
    /// on every request).
    fn get(&self, key: &str, limits: &LimitsConfig) -> Arc<Guard> {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        match all.get(key) {
            Some(g) if g.limits() == limits => Arc::clone(g),
            _ => {
                let g = Arc::new(Guard::new(limits.clone()));
                all.insert(key.to_owned(), Arc::clone(&g));
                g
            }
        }
    }

    /// The guard of component `name` (rebuilt when its limits changed).
    pub fn component(&self, name: &str, limits: &LimitsConfig) -> Arc<Guard> {
        self.get(name, limits)
    }

    /// The breaker of the link `caller` → `provider`.
    pub fn link(&self, caller: &str, provider: &str, limits: &LimitsConfig) -> Arc<Guard> {
        self.get(&format!("{caller}->{provider}"), limits)
    }

    /// Forget the state of `name` and its links (a new version deserves a
    /// fresh breaker).
    pub fn reset(&self, name: &str) {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|key, _| key != name && !key.ends_with(&format!("->{name}")));
    }

    /// Breaker state and in-flight count of every guard seen so far.
    pub fn report(&self) -> Vec<(String, BreakerState, usize)> {
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = all
            .iter()
            .map(|(k, g)| (k.clone(), g.state(), g.in_flight()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32) -> LimitsConfig {
        LimitsConfig {
            max_in_flight: max,
            queue_ms: 20,
            consecutive_failures: 3,
            window: 10,
            open_ms: 50,
        }
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_then_probes_and_closes() {
        let g = Arc::new(Guard::new(limits(8)));
        for _ in 0..3 {
            g.admit().await.expect("closed").finish(false);
        }
        assert_eq!(g.state(), BreakerState::Open);
        assert!(matches!(g.admit().await, Err(Refusal::Open(_))));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let probe = g.admit().await.expect("one probe passes");
        assert!(
            matches!(g.admit().await, Err(Refusal::Open(_))),
            "only one probe"
        );
        probe.finish(true);
        assert_eq!(g.state(), BreakerState::Closed);
        g.admit().await.expect("closed again").finish(true);
    }

    #[tokio::test]
    async fn a_failed_probe_opens_it_again() {
        let g = Arc::new(Guard::new(limits(8)));
        for _ in 0..3 {
            g.admit().await.expect("closed").finish(false);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        g.admit().await.expect("probe").finish(false);
        assert_eq!(g.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn a_failure_rate_opens_it_without_a_streak() {
        let g = Arc::new(Guard::new(limits(8)));
        for i in 0..10 {
            g.admit().await.expect("closed").finish(i % 2 == 0);
        }
        assert_eq!(g.state(), BreakerState::Open, "5 of the last 10 failed");
    }

    #[tokio::test]
    async fn excess_concurrency_waits_then_is_refused() {
        let g = Arc::new(Guard::new(limits(1)));
        let held = g.admit().await.expect("first");
        assert_eq!(g.in_flight(), 1);
        assert!(matches!(g.admit().await, Err(Refusal::Busy(_))));
        drop(held);
        g.admit().await.expect("a slot is free again").finish(true);
    }
}
