//! Prometheus metrics (`GET /metrics` on the admin listener), built with
//! `prometheus-client`: requests, invocations, units of work, linked calls,
//! event deliveries, versions and the process itself. Counters move where
//! the work happens; lags, breakers, dead letters, versions and process
//! figures are read when scraped.

mod handles;

use std::sync::OnceLock;
use std::time::Duration;

use handles::ByPair;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::guard::BreakerState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub component: String,
    pub route: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub component: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub component: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabels {
    pub link: String,
    pub outcome: String,
}

/// Labels of a retired reusable instance: its component and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetireLabels {
    pub component: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    pub guard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub component: String,
    pub digest: String,
}

fn latency() -> Histogram {
    // 0.1 ms .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric family of the host.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub invocations: Family<OutcomeLabels, Counter>,
    pub instantiate_seconds: Family<ComponentLabels, Histogram, fn() -> Histogram>,
    pub conflicts: Family<ComponentLabels, Counter>,
    pub commit_seconds: Histogram,
    pub commit_failures: Family<KindLabels, Counter>,
    pub link_calls: Family<LinkLabels, Counter>,
    pub link_seconds: Family<ComponentLabels, Histogram, fn() -> Histogram>,
    pub deliveries: Family<OutcomeLabels, Counter>,
    pub handle_to_ack_seconds: Family<ComponentLabels, Histogram, fn() -> Histogram>,
    /// From an event's append to the log to its acknowledgement.
    pub event_age_seconds: Family<ComponentLabels, Histogram, fn() -> Histogram>,
    /// Instances created for invocations (fresh or for a reuse pool).
    pub instances_created: Family<ComponentLabels, Counter>,
    /// Invocations served by an instance taken from a reuse pool.
    pub instances_reused: Family<ComponentLabels, Counter>,
    /// Reusable instances dropped, by reason (see `pool::Retire`).
    pub instances_retired: Family<RetireLabels, Counter>,
    /// Instances waiting in reuse pools.
    pub instances_idle: Family<ComponentLabels, Gauge>,
    breakers: Family<GuardLabels, Gauge>,
    lag: Family<ComponentLabels, Gauge>,
    dead_letters: Gauge,
    versions: Family<VersionLabels, Gauge>,
    resident: Gauge,
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    open_fds: Gauge,
    start_time: Gauge,
    /// Handles of the per-request and per-delivery series by label values.
    fast: FastHandles,
}

/// The handles of the series every request and every delivery moves. Their
/// families are never cleared (only the scraped ones are): a cleared
/// family would leave these handles counting into series no longer listed.
#[derive(Default)]
struct FastHandles {
    requests: ByPair<RequestHandles>,
    invocations: ByPair<Counter>,
    deliveries: ByPair<Counter>,
    /// Handling-to-ack and event-age histograms by subscriber.
    acked: ByPair<(Histogram, Histogram)>,
}

/// A route's latency histogram and its counters by status class (1xx..5xx),
/// each made when that class is first answered.
struct RequestHandles {
    seconds: Histogram,
    classes: [OnceLock<Counter>; 5],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency),
            invocations: Family::default(),
            instantiate_seconds: Family::new_with_constructor(latency),
            conflicts: Family::default(),
            commit_seconds: latency(),
            commit_failures: Family::default(),
            link_calls: Family::default(),
            link_seconds: Family::new_with_constructor(latency),
            deliveries: Family::default(),
            handle_to_ack_seconds: Family::new_with_constructor(latency),
            event_age_seconds: Family::new_with_constructor(latency),
            instances_created: Family::default(),
            instances_reused: Family::default(),
            instances_retired: Family::default(),
            instances_idle: Family::default(),
            breakers: Family::default(),
            lag: Family::default(),
            dead_letters: Gauge::default(),
            versions: Family::default(),
            resident: Gauge::default(),
            cpu_seconds: Gauge::default(),
            open_fds: Gauge::default(),
            start_time: Gauge::default(),
            fast: FastHandles::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "sktarbucks_http_requests",
            "HTTP requests answered by a component, by route template and status class",
            m.requests.clone(),
        );
        r.register(
            "sktarbucks_http_request_seconds",
            "Time to answer a request routed to a component",
            m.request_seconds.clone(),
        );
        r.register("sktarbucks_invocations", "Requests and event deliveries by outcome (ok, error_5xx, trap, timeout, backend, refused_open, refused_busy, contended)", m.invocations.clone());
        r.register(
            "sktarbucks_instantiate_seconds",
            "Time to instantiate a component for one invocation",
            m.instantiate_seconds.clone(),
        );
        r.register(
            "sktarbucks_uow_conflicts",
            "Units of work re-run after a conflicting commit",
            m.conflicts.clone(),
        );
        r.register(
            "sktarbucks_uow_commit_seconds",
            "Time to commit a unit of work",
            m.commit_seconds.clone(),
        );
        r.register(
            "sktarbucks_uow_commit_failures",
            "Commits that failed, by kind",
            m.commit_failures.clone(),
        );
        r.register(
            "sktarbucks_link_calls",
            "Synchronous calls between components, by link and outcome",
            m.link_calls.clone(),
        );
        r.register(
            "sktarbucks_link_call_seconds",
            "Duration of a synchronous call, by provider",
            m.link_seconds.clone(),
        );
        r.register(
            "sktarbucks_event_deliveries",
            "Event deliveries by subscriber and outcome",
            m.deliveries.clone(),
        );
        r.register(
            "sktarbucks_event_handle_to_ack_seconds",
            "From handing an event to its handler to its acknowledgement",
            m.handle_to_ack_seconds.clone(),
        );
        r.register(
            "sktarbucks_event_age_seconds",
            "From an event's append to the log to its acknowledgement by this subscriber: the pipeline's latency to it (the appending backend's clock: on Redis, the server's)",
            m.event_age_seconds.clone(),
        );
        r.register(
            "sktarbucks_instances_created",
            "Component instances created for invocations (fresh per call, or for a reuse pool)",
            m.instances_created.clone(),
        );
        r.register(
            "sktarbucks_instances_reused",
            "Invocations served by an instance taken from a reuse pool",
            m.instances_reused.clone(),
        );
        r.register(
            "sktarbucks_instances_retired",
            "Reusable instances dropped, by reason (trap, timeout, host_error, error_response, \
             handler_error, max_uses, idle, pool_full, swap)",
            m.instances_retired.clone(),
        );
        r.register(
            "sktarbucks_instances_idle",
            "Instances waiting in reuse pools",
            m.instances_idle.clone(),
        );
        r.register(
            "sktarbucks_breaker_state",
            "Circuit breaker state (0 closed, 1 half-open, 2 open), per component and link",
            m.breakers.clone(),
        );
        r.register(
            "sktarbucks_event_lag",
            "Events published but not yet acknowledged, per subscriber",
            m.lag.clone(),
        );
        r.register(
            "sktarbucks_dead_letters",
            "Events waiting in the dead letters",
            m.dead_letters.clone(),
        );
        r.register(
            "sktarbucks_component_version_info",
            "The active version (sha256) of each component",
            m.versions.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the host process",
            m.resident.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "CPU time of the host process",
            m.cpu_seconds.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors of the host process",
            m.open_fds.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start of the host process (seconds since the epoch)",
            m.start_time.clone(),
        );
        Self { registry, ..m }
    }

    /// Count one answered request.
    pub fn request(&self, component: &str, route: &str, status: u16, took: Duration) {
        let labels = || RouteLabels {
            component: component.to_owned(),
            route: route.to_owned(),
        };
        let counter = || {
            self.requests
                .get_or_create(&RequestLabels {
                    component: component.to_owned(),
                    route: route.to_owned(),
                    class: format!("{}xx", status / 100),
                })
                .clone()
        };
        self.fast.requests.with(
            component,
            route,
            || RequestHandles {
                seconds: self.request_seconds.get_or_create(&labels()).clone(),
                classes: Default::default(),
            },
            |h| {
                h.seconds.observe(took.as_secs_f64());
                match usize::from(status / 100)
                    .checked_sub(1)
                    .and_then(|i| h.classes.get(i))
                {
                    Some(cell) => cell.get_or_init(counter).inc(),
                    // Not a status hyper sends; counted all the same.
                    None => counter().inc(),
                };
            },
        );
    }

    /// Count one invocation outcome.
    pub fn invocation(&self, component: &str, outcome: &str) {
        count_outcome(
            &self.fast.invocations,
            &self.invocations,
            component,
            outcome,
        );
    }

    /// Count one event delivery outcome.
    pub fn delivery(&self, subscriber: &str, outcome: &str) {
        count_outcome(&self.fast.deliveries, &self.deliveries, subscriber, outcome);
    }

    /// Observe an acknowledged delivery: from handing it to its handler to
    /// the acknowledgement, and (when known) the event's age then.
    pub fn acked(&self, subscriber: &str, handle_to_ack: Duration, age_seconds: Option<f64>) {
        let labels = || ComponentLabels {
            component: subscriber.to_owned(),
        };
        self.fast.acked.with(
            subscriber,
            "",
            || {
                (
                    self.handle_to_ack_seconds.get_or_create(&labels()).clone(),
                    self.event_age_seconds.get_or_create(&labels()).clone(),
                )
            },
            |(to_ack, age)| {
                to_ack.observe(handle_to_ack.as_secs_f64());
                if let Some(a) = age_seconds {
                    age.observe(a);
                }
            },
        );
    }

    /// The text exposition, after refreshing what is read at scrape time.
    pub fn encode(&self, scrape: Scraped) -> String {
        self.breakers.clear();
        for (guard, state, _) in scrape.breakers {
            let v = match state {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            self.breakers.get_or_create(&GuardLabels { guard }).set(v);
        }
        self.lag.clear();
        for (component, n) in scrape.lag {
            self.lag
                .get_or_create(&ComponentLabels { component })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.dead_letters
            .set(i64::try_from(scrape.dead_letters).unwrap_or(i64::MAX));
        self.versions.clear();
        for (component, digest) in scrape.versions {
            self.versions
                .get_or_create(&VersionLabels { component, digest })
                .set(1);
        }
        process(self);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What `encode` reads from the runtime when scraped.
pub struct Scraped {
    pub breakers: Vec<(String, BreakerState, usize)>,
    pub lag: Vec<(String, u64)>,
    pub dead_letters: usize,
    pub versions: Vec<(String, String)>,
}

/// Count `outcome` of `component` in `family`, through its handles.
fn count_outcome(
    handles: &ByPair<Counter>,
    family: &Family<OutcomeLabels, Counter>,
    component: &str,
    outcome: &str,
) {
    handles.with(
        component,
        outcome,
        || {
            family
                .get_or_create(&OutcomeLabels {
                    component: component.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .clone()
        },
        |c| c.inc(),
    );
}

/// The route template of a path under a component: numeric segments become
/// `:id` (others `:key`) and anything deeper than two segments becomes `*`, so the label
/// set stays bounded whatever clients send.
pub fn route_template(path: &str) -> String {
    let mut out = String::new();
    for (i, seg) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        match i {
            0 => {
                out.push('/');
                out.push_str(seg.get(..seg.len().min(64)).unwrap_or(seg));
            }
            1 => out.push_str(if seg.bytes().all(|b| b.is_ascii_digit()) {
                "/:id"
            } else {
                "/:key"
            }),
            _ => {
                out.push_str("/*");
                break;
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Resident memory, CPU time, open fds and start time from `/proc/self`.
fn process(m: &Metrics) {
    let page = 4096i64;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(rss) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<i64>().ok())
    {
        m.resident.set(rss * page);
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat (11 and 12 after the name).
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        m.cpu_seconds.set((ticks(11) + ticks(12)) / 100.0);
        if let (Some(start), Ok(uptime)) = (
            fields.get(19).and_then(|v| v.parse::<f64>().ok()),
            std::fs::read_to_string("/proc/uptime"),
        ) && let Some(up) = uptime
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            m.start_time.set((now - up + start / 100.0) as i64);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        m.open_fds
            .set(i64::try_from(fds.count()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_templates_stay_bounded() {
        assert_eq!(route_template("/orders"), "/orders");
        assert_eq!(route_template("/orders/12"), "/orders/:id");
        assert_eq!(route_template("/orders/12/cancel"), "/orders/:id/*");
        assert_eq!(route_template("/orders/abc/x/y"), "/orders/:key/*");
        assert_eq!(route_template("/"), "/");
    }

    #[test]
    fn the_exposition_names_every_family() {
        let m = Metrics::new();
        m.request("cafe", "/cafes", 200, Duration::from_millis(2));
        let text = m.encode(Scraped {
            breakers: vec![("cafe".into(), BreakerState::Open, 0)],
            lag: vec![("order".into(), 3)],
            dead_letters: 1,
            versions: vec![("cafe".into(), "ab".into())],
        });
        for name in [
            "sktarbucks_http_requests_total{component=\"cafe\",route=\"/cafes\",class=\"2xx\"} 1",
            "sktarbucks_breaker_state{guard=\"cafe\"} 2",
            "sktarbucks_event_lag{component=\"order\"} 3",
            "sktarbucks_dead_letters 1",
            "sktarbucks_component_version_info{component=\"cafe\",digest=\"ab\"} 1",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
