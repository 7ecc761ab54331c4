//! Delivers logged events to one subscribing component.
//!
//! Each delivery runs the handler in its own instance; its writes, its own
//! published events and the acknowledgement commit together (exactly-once
//! effect on top of at-least-once delivery). A failed delivery is recorded,
//! retried with exponential backoff and dead-lettered after
//! `events.max_attempts`; then the subscriber moves on.
//!
//! **Ordering.** Deliveries are taken in waves: the longest run at the head
//! of the batch whose events have pairwise different keys. A wave's handlers
//! run concurrently, and their changes and acknowledgements commit together,
//! in log order. Events with the same key are therefore handled one after
//! another in log order (per key, per subscriber); events of different keys
//! may be handled concurrently. A redelivered event (a retry) is handled
//! alone.
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::backend::{Commit, Delivery, Subscription};
use crate::runtime::{EventOutcome, Runtime};

/// Consecutive conflicts of one delivery before it counts as a failed attempt.
const MAX_CONFLICTS: u32 = 20;

/// Tracks consecutive commit conflicts of the delivery at the head.
#[derive(Default)]
struct Streak {
    id: String,
    conflicts: u32,
}

impl Streak {
    /// Record a conflict of `id`; returns how many in a row.
    fn bump(&mut self, id: &str) -> u32 {
        if self.id != id {
            self.id = id.to_owned();
            self.conflicts = 0;
        }
        self.conflicts += 1;
        self.conflicts
    }
}

/// Deliveries asked for per poll, and the most handled at once (a wave).
/// A Redis poll can return up to this many *per stream* it reads; the waves
/// still take at most `BATCH` each, so a subscriber to many topics neither
/// runs more instances at once nor takes a larger share of the machine per
/// turn than one reading a single topic (with three full streams, mypage's
/// 96-event waves held production and order to a fifth of the deliveries
/// during a backlog drain).
const BATCH: usize = 32;
/// A wave, or a first attempt delivered alone, that starts this soon after
/// its poll skips `touch`: the read itself restarted the deliveries' idle
/// clocks, and the manifest check keeps `events.claim_idle_ms` above a
/// deadline plus the longest backoff plus one second, so nothing is taken
/// over while it is handled.
const FRESH: Duration = Duration::from_secs(1);
/// Longest wait for new events before polling again (covers other processes).
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Waves handled during the last one's commit stop this long after the
/// last ordinary poll, so that one comes at least this often while a
/// backlog drains: it is the poll that takes over what dead or stalled
/// consumers held and reads back what this one did not acknowledge.
const ORDINARY_POLL_EVERY: Duration = Duration::from_millis(100);

/// A batch read while the last wave committed, its head handled already
/// (a wave whose keys differ from that one's).
struct Ahead {
    batch: Vec<Delivery>,
    /// The handled head, if any: exactly the next wave.
    head: Option<Handled>,
    /// When it was read (its head's handling started then too).
    polled_at: std::time::Instant,
}

/// A wave's handler runs, ready to acknowledge: each delivery's outcome
/// (`None`: not taken), the span it ran in (its acknowledgement's lines go
/// under the same one) and when the runs started (what handling-to-ack is
/// measured from).
struct Handled {
    outcomes: Vec<Option<EventOutcome>>,
    spans: Vec<tracing::Span>,
    started: std::time::Instant,
}

/// Start a dispatcher for every loaded component that subscribes to
/// something and has none yet (at start, and after a reload added one).
pub async fn spawn_all(
    rt: &Arc<Runtime>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::new();
    for loaded in rt.registry.all() {
        if rt.is_dispatching(&loaded.name) {
            continue;
        }
        let topics = rt.subscriptions(&loaded).await?;
        if topics.is_empty() {
            continue;
        }
        rt.set_dispatching(&loaded.name);
        let sub = Subscription {
            component: loaded.name.clone(),
            topics,
        };
        rt.backend.subscribe(&sub).await?;
        tracing::info!(component = %sub.component, topics = ?sub.topics, "subscribed");
        rt.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sub.clone());
        let rt = Arc::clone(rt);
        let shutdown = shutdown.clone();
        handles.push(tokio::spawn(supervise(rt, sub, shutdown)));
    }
    Ok(handles)
}

/// Keep a subscriber's dispatcher running: a panic in it is logged and the
/// dispatcher restarted, instead of silently stopping delivery.
async fn supervise(rt: Arc<Runtime>, sub: Subscription, shutdown: watch::Receiver<bool>) {
    loop {
        let task = tokio::spawn(run(Arc::clone(&rt), sub.clone(), shutdown.clone()));
        match task.await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(component = %sub.component, error = %e, "dispatcher crashed; restarting it");
                if *shutdown.borrow() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn run(rt: Arc<Runtime>, sub: Subscription, shutdown: watch::Receiver<bool>) {
    dispatch(&rt, &sub, shutdown).await;
    if let Err(e) = rt.backend.unsubscribe(&sub).await {
        tracing::warn!(component = %sub.component, error = %format!("{e:#}"), "unsubscribing failed");
    }
}

async fn dispatch(rt: &Arc<Runtime>, sub: &Subscription, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    let mut streak = Streak::default();
    let mut sub = sub.clone();
    let mut version = rt.registry.get(&sub.component).map(|l| l.digest.clone());
    let mut ahead: Option<Ahead> = None;
    let mut ordinary_poll = std::time::Instant::now();
    while !*shutdown.borrow() {
        // A swap or reload may change what this component consumes: follow
        // it at the next poll (the old version finished its delivery).
        if let Some(live) = rt.registry.get(&sub.component)
            && version.as_deref() != Some(live.digest.as_str())
        {
            match resubscribe(rt, &sub, &live).await {
                Ok(next) => {
                    sub = next;
                    version = Some(live.digest.clone());
                }
                Err(e) => {
                    tracing::warn!(component = %sub.component, error = %format!("{e:#}"), "could not read the new version's subscriptions; keeping the old ones");
                    version = Some(live.digest.clone());
                }
            }
        }
        let sub = &sub;
        let (deliveries, polled_at, mut handled) = match ahead.take() {
            Some(a) => (a.batch, a.polled_at, a.head),
            None => {
                // Not cancelled on shutdown: a blocking read that already
                // took entries must hand them over, or they would sit
                // pending until reclaimed. The wait is bounded by IDLE_WAIT.
                let polled = rt.backend.poll(sub, BATCH, IDLE_WAIT).await;
                ordinary_poll = std::time::Instant::now();
                match polled {
                    Ok(d) => {
                        backoff = Duration::from_millis(100);
                        (d, ordinary_poll, None)
                    }
                    Err(e) => {
                        tracing::warn!(component = %sub.component, error = %format!("{e:#}"), "event poll failed; retrying");
                        sleep_or_shutdown(backoff, &mut shutdown).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
        };
        // A full batch is a backlog: its last wave commits while the next
        // one is read and handled (where the backend can read past it).
        let overlap = rt.backend.reads_ahead()
            && deliveries.len() >= BATCH
            && ordinary_poll.elapsed() < ORDINARY_POLL_EVERY;
        let max = rt.config().events.max_attempts;
        let mut rest = deliveries.as_slice();
        while !rest.is_empty() {
            if *shutdown.borrow() {
                return;
            }
            // Handled during the last commit: exactly that prefix is the wave.
            let len = handled
                .as_ref()
                .map_or_else(|| wave_len(rest, max), |h| h.outcomes.len());
            let (wave, after) = rest.split_at(len);
            let next = (overlap && after.is_empty()).then_some(&mut ahead);
            let fresh = polled_at.elapsed() < FRESH;
            let all_acked = match (wave, handled.take()) {
                // Alone, and any that goes alone (it may be due for the
                // dead letters, which `deliver` checks).
                ([one], None) if next.is_none() || goes_alone(one, max) => {
                    // A first attempt just polled skips `touch`, as a wave
                    // does: at a steady trickle most events come alone, and
                    // on Redis the touch was a round trip on every hop.
                    let fresh = fresh && !goes_alone(one, max);
                    deliver(rt, sub, one, fresh, &mut shutdown, &mut streak).await
                }
                (_, handled) => {
                    let run = Wave {
                        deliveries: wave,
                        fresh,
                        handled,
                        next,
                    };
                    deliver_wave(rt, sub, run, &mut shutdown, &mut streak).await
                }
            };
            if !all_acked {
                // Failed, conflicted or backend trouble: poll again so the
                // next attempt sees fresh state and attempt counts (a batch
                // read ahead is read back from this consumer's own list).
                ahead = None;
                break;
            }
            rest = after;
        }
    }
}

/// Seconds from `appended_ms` to `now`; 0 when the clocks disagree (the
/// Redis server's clock stamped it, and it is ahead of this host's), none
/// when the backend gave no time.
fn age_seconds(appended_ms: u64, now: std::time::SystemTime) -> Option<f64> {
    if appended_ms == 0 {
        return None;
    }
    let now_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Some(((now_ms - appended_ms as f64) / 1000.0).max(0.0))
}

/// How many deliveries at the head of `pending` form the next wave: first
/// deliveries with pairwise different keys, at most [`BATCH`]. A retry, or
/// one delivered more often than allowed, goes alone (one is always taken,
/// unless none is pending).
fn wave_len(pending: &[Delivery], max_attempts: u32) -> usize {
    head_len(
        pending,
        &std::collections::HashSet::new(),
        max_attempts,
        true,
    )
}

/// How many deliveries at the head of `batch` can be handled while a wave
/// with `busy` keys commits: as [`wave_len`], but none of `busy` and none
/// that goes alone.
fn overlap_len(
    batch: &[Delivery],
    busy: &std::collections::HashSet<&str>,
    max_attempts: u32,
) -> usize {
    head_len(batch, busy, max_attempts, false)
}

/// A retry, or one delivered more often than allowed: handled by itself
/// (and, when overdue, dead-lettered instead).
fn goes_alone(delivery: &Delivery, max_attempts: u32) -> bool {
    delivery.attempt > 1 || delivery.attempt > max_attempts
}

/// The deliveries at the head of `pending` with pairwise different keys,
/// none of `busy`, at most [`BATCH`]; one that [`goes_alone`] only first
/// and by itself, and only when `alone_too`.
fn head_len(
    pending: &[Delivery],
    busy: &std::collections::HashSet<&str>,
    max_attempts: u32,
    alone_too: bool,
) -> usize {
    let mut keys = std::collections::HashSet::new();
    let mut n = 0;
    for delivery in pending.iter().take(BATCH) {
        let key = delivery.key.as_str();
        let alone = goes_alone(delivery, max_attempts);
        if (alone && (n > 0 || !alone_too)) || busy.contains(key) || !keys.insert(key) {
            break;
        }
        n += 1;
        if alone {
            break;
        }
    }
    n
}

/// The subscription of a newly live version (the same one if unchanged).
async fn resubscribe(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    live: &Arc<crate::registry::Loaded>,
) -> Result<Subscription> {
    let topics = rt.subscriptions(live).await?;
    if topics == sub.topics {
        return Ok(sub.clone());
    }
    let next = Subscription {
        component: sub.component.clone(),
        topics,
    };
    rt.backend.subscribe(&next).await?;
    tracing::info!(component = %next.component, topics = ?next.topics, "subscriptions changed with the new version");
    let mut subs = rt.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
    subs.retain(|s| s.component != next.component);
    subs.push(next.clone());
    Ok(next)
}

/// Deliver one event (`fresh`: just polled, skip `touch`); true when it was
/// acknowledged and the batch may go on.
async fn deliver(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    delivery: &Delivery,
    fresh: bool,
    shutdown: &mut watch::Receiver<bool>,
    streak: &mut Streak,
) -> bool {
    let Some(loaded) = live_version(rt, sub, shutdown).await else {
        return false;
    };
    handle(rt, sub, delivery, fresh, shutdown, loaded, streak)
        .instrument(delivery_span(sub, delivery))
        .await
}

/// The subscriber's live version; when it was removed, wait a while and
/// say so (its events stay in the log until it is back).
async fn live_version(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Arc<crate::registry::Loaded>> {
    let live = rt.registry.get(&sub.component);
    if live.is_none() {
        sleep_or_shutdown(IDLE_WAIT, shutdown).await;
    }
    live
}

/// The span of one delivery when deliveries have spans (spans exported, or
/// `sktarbucks` lines at `debug`: see [`crate::invoke::own_spans`]), else
/// none. A span per delivery (made, its fields formatted, entered at every
/// poll, closed) cost more than the delivery's one routine line, which
/// then names the delivery itself (`invocation finished event_id=..
/// topic=.. attempt=.. request_id=..`); its rarer lines get a span made for
/// them ([`span_for_line`]). With export, it continues the publisher's trace.
fn delivery_span(sub: &Subscription, delivery: &Delivery) -> tracing::Span {
    if !crate::invoke::own_spans() {
        return tracing::Span::none();
    }
    make_delivery_span(sub, delivery)
}

/// The span for a delivery's line that is not routine (a failure, a
/// retry): the current one when deliveries have spans (it is the
/// delivery's), else one made now, so the line still names the event and
/// the originating request's id.
fn span_for_line(sub: &Subscription, delivery: &Delivery) -> tracing::Span {
    if crate::invoke::own_spans() {
        return tracing::Span::current();
    }
    make_delivery_span(sub, delivery)
}

fn make_delivery_span(sub: &Subscription, delivery: &Delivery) -> tracing::Span {
    let span = tracing::info_span!(
        "event",
        component = %sub.component,
        event_id = %delivery.id,
        topic = %delivery.topic,
        attempt = delivery.attempt,
        request_id = tracing::field::Empty,
    );
    if let Some(id) = &delivery.trace.request_id {
        span.record("request_id", tracing::field::display(id));
    }
    delivery.trace.adopt(&span);
    span
}

/// A wave to deliver, and how.
struct Wave<'a, 'b> {
    /// First deliveries with pairwise different keys.
    deliveries: &'a [Delivery],
    /// Just polled: no need to restart the deliveries' idle clocks.
    fresh: bool,
    /// Handled already (during the last wave's commit).
    handled: Option<Handled>,
    /// Where to put the next batch, read and partly handled during this
    /// wave's commit (when the backend can read past it).
    next: Option<&'b mut Option<Ahead>>,
}

/// Whether `delivery` is still this consumer's to handle: `touch` restarts
/// its idle clock and says so, unless it was `fresh`ly polled (the read
/// restarted the clock; see [`FRESH`]).
async fn ours(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    delivery: &Delivery,
    fresh: bool,
) -> Result<bool> {
    if fresh {
        Ok(true)
    } else {
        rt.backend.touch(sub, delivery).await
    }
}

/// Run `sub`'s handlers on `wave` at once from `started` (`fresh`: skip
/// `touch`), each in its delivery's span; `None` for a delivery not taken
/// (acknowledged elsewhere, or the backend down).
async fn handle_wave(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    loaded: &Arc<crate::registry::Loaded>,
    wave: &[Delivery],
    fresh: bool,
    started: std::time::Instant,
) -> Handled {
    let spans: Vec<tracing::Span> = wave.iter().map(|d| delivery_span(sub, d)).collect();
    let runs = wave.iter().zip(&spans).map(|(delivery, span)| {
        let loaded = Arc::clone(loaded);
        async move {
            match ours(rt, sub, delivery, fresh).await {
                Ok(true) => Some(rt.handle_event(&loaded, delivery).await),
                // Already acknowledged elsewhere, or the backend is down:
                // left for the next poll.
                Ok(false) | Err(_) => None,
            }
        }
        .instrument(span.clone())
    });
    let outcomes = futures::future::join_all(runs).await;
    Handled {
        outcomes,
        spans,
        started,
    }
}

/// Read the next batch while `busy` commits and handle its head: the
/// deliveries whose keys `busy` does not hold (per key, events stay in log
/// order: none is handled before an earlier one of its key committed).
async fn read_and_handle_ahead(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    busy: &[Delivery],
) -> Option<Ahead> {
    let batch = match rt.backend.poll_ahead(sub, BATCH).await {
        Ok(batch) if !batch.is_empty() => batch,
        Ok(_) => return None,
        Err(e) => {
            // Whatever it took is read back by the next ordinary poll.
            tracing::debug!(component = %sub.component, error = %format!("{e:#}"), "reading ahead failed");
            return None;
        }
    };
    let polled_at = std::time::Instant::now();
    let keys = busy.iter().map(|d| d.key.as_str()).collect();
    let n = overlap_len(&batch, &keys, rt.config().events.max_attempts);
    let head = match rt.registry.get(&sub.component) {
        Some(loaded) if n > 0 => {
            Some(handle_wave(rt, sub, &loaded, &batch[..n], true, polled_at).await)
        }
        _ => None,
    };
    Some(Ahead {
        batch,
        head,
        polled_at,
    })
}

/// Deliver a wave (first deliveries, pairwise different keys) at once:
/// handlers run concurrently, then the handled prefix is acknowledged in
/// log order in one commit. True when all were acknowledged.
async fn deliver_wave(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    run: Wave<'_, '_>,
    shutdown: &mut watch::Receiver<bool>,
    streak: &mut Streak,
) -> bool {
    let wave = run.deliveries;
    let Some(loaded) = live_version(rt, sub, shutdown).await else {
        return false;
    };
    let Handled {
        outcomes,
        spans,
        started,
    } = match run.handled {
        Some(handled) => handled,
        None => {
            let started = std::time::Instant::now();
            handle_wave(rt, sub, &loaded, wave, run.fresh, started).await
        }
    };
    // The handled prefix commits; the first other outcome is settled on
    // its own; everything after it is delivered again.
    let mut acks = Vec::new();
    let mut stopped = None;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Some(EventOutcome::Handled(changes)) => acks.push((wave[i].clone(), changes)),
            other => {
                stopped = Some((i, other));
                break;
            }
        }
    }
    let handled = acks.len();
    if handled > 0 {
        for _ in 0..handled {
            crate::crash::point(crate::crash::AFTER_HANDLER);
        }
        let commit = rt.backend.ack_batch(sub, acks);
        // At shutdown nothing more is taken: it would wait for a takeover.
        let committed = match run.next.filter(|_| !*shutdown.borrow()) {
            Some(slot) => {
                let (committed, next) = tokio::join!(commit, read_and_handle_ahead(rt, sub, wave));
                // Kept only if every acknowledgement applies (below).
                *slot = next;
                committed
            }
            None => commit.await,
        };
        match committed {
            Ok(commits) => {
                for (i, commit) in commits.iter().enumerate() {
                    let acked =
                        settle_ack(rt, sub, &wave[i], Ok(*commit), started, shutdown, streak)
                            .instrument(spans[i].clone())
                            .await;
                    if !acked {
                        return false;
                    }
                }
                if commits.len() < handled {
                    return false;
                }
            }
            Err(e) => {
                return settle_ack(rt, sub, &wave[0], Err(e), started, shutdown, streak)
                    .instrument(spans[0].clone())
                    .await;
            }
        }
    }
    match stopped {
        None => true,
        Some((_, None)) => false,
        Some((i, Some(outcome))) => {
            settle_failure(rt, sub, &wave[i], outcome, shutdown)
                .instrument(spans[i].clone())
                .await;
            false
        }
    }
}

async fn handle(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    delivery: &Delivery,
    fresh: bool,
    shutdown: &mut watch::Receiver<bool>,
    loaded: Arc<crate::registry::Loaded>,
    streak: &mut Streak,
) -> bool {
    let max = rt.config().events.max_attempts;
    if delivery.attempt > max {
        // Delivered more often than allowed without ever completing: its
        // handlers died with it (a crash, a kill). Stop here, before it can
        // take down another host.
        let reason = format!(
            "delivered {} times without completing; the hosts handling it stopped",
            delivery.attempt - 1
        );
        let span = span_for_line(sub, delivery);
        tracing::error!(parent: &span, reason = %reason, "event dead-lettered");
        if let Err(e) = rt.backend.fail(sub, delivery, &reason, true).await {
            tracing::warn!(parent: &span, error = %format!("{e:#}"), "dead-lettering failed");
        }
        return false;
    }
    match ours(rt, sub, delivery, fresh).await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            tracing::warn!(parent: &span_for_line(sub, delivery), error = %format!("{e:#}"), "event backend unavailable; retrying");
            sleep_or_shutdown(Duration::from_millis(200), shutdown).await;
            return false;
        }
    }
    let started = std::time::Instant::now();
    match rt.handle_event(&loaded, delivery).await {
        EventOutcome::Handled(changes) => {
            let acked = acknowledge(rt, sub, delivery, changes).await;
            settle_ack(rt, sub, delivery, acked, started, shutdown, streak).await
        }
        other => {
            settle_failure(rt, sub, delivery, other, shutdown).await;
            false
        }
    }
}

/// What follows a handled delivery's commit: metrics when applied; on a
/// conflict, a short pause and (after [`MAX_CONFLICTS`] in a row) a failed
/// attempt. True when it was acknowledged.
async fn settle_ack(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    delivery: &Delivery,
    acked: Result<Commit>,
    started: std::time::Instant,
    shutdown: &mut watch::Receiver<bool>,
    streak: &mut Streak,
) -> bool {
    let metrics = &rt.env.metrics;
    let max = rt.config().events.max_attempts;
    match acked {
        Ok(Commit::Applied) => {
            metrics.delivery(&sub.component, "ok");
            metrics.acked(
                &sub.component,
                started.elapsed(),
                age_seconds(delivery.appended_ms, std::time::SystemTime::now()),
            );
            true
        }
        Ok(Commit::Conflict) => {
            metrics.delivery(&sub.component, "conflict");
            let n = streak.bump(&delivery.id);
            if n >= MAX_CONFLICTS {
                let reason =
                    format!("kept conflicting with concurrent changes ({n} times in a row)");
                let span = span_for_line(sub, delivery);
                tracing::warn!(parent: &span, reason = %reason, "counting as a failed attempt");
                let dead = delivery.attempt >= max;
                if let Err(e) = rt.backend.fail(sub, delivery, &reason, dead).await {
                    tracing::warn!(parent: &span, error = %format!("{e:#}"), "recording the failure failed");
                }
                streak.conflicts = 0;
            } else {
                tracing::debug!(parent: &span_for_line(sub, delivery), conflicts = n, "event handling conflicted; redelivering");
            }
            // Let the competing writers finish before trying again.
            let jitter = rand::random_range(1..=u64::from(n.min(10)) * 5);
            sleep_or_shutdown(Duration::from_millis(jitter), shutdown).await;
            false
        }
        Err(e) => {
            tracing::warn!(parent: &span_for_line(sub, delivery), error = %format!("{e:#}"), "acknowledging event failed; redelivering");
            sleep_or_shutdown(Duration::from_millis(200), shutdown).await;
            false
        }
    }
}

/// What follows a delivery that was not handled: the failure recorded (or
/// dead-lettered) with backoff, or a wait when the handler was not admitted
/// or the backend failed underneath it (no attempt counted).
async fn settle_failure(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    delivery: &Delivery,
    outcome: EventOutcome,
    shutdown: &mut watch::Receiver<bool>,
) {
    let max = rt.config().events.max_attempts;
    let label = match &outcome {
        EventOutcome::Handled(_) => return,
        EventOutcome::Failed(_) if delivery.attempt >= max => "dead",
        EventOutcome::Failed(_) => "failed",
        EventOutcome::Faulted(_) => "faulted",
        EventOutcome::Refused(_) => "refused",
        EventOutcome::Unavailable(_) => "unavailable",
    };
    rt.env.metrics.delivery(&sub.component, label);
    let span = span_for_line(sub, delivery);
    match outcome {
        EventOutcome::Handled(_) => {}
        EventOutcome::Unavailable(reason) => {
            // The backend, not the handler, failed: not the event's fault,
            // so no attempt is counted.
            tracing::warn!(parent: &span, reason = %reason, "state backend unavailable; retrying the event");
            sleep_or_shutdown(Duration::from_millis(500), shutdown).await;
        }
        EventOutcome::Refused(refusal) => {
            // The component's breaker is open or it is saturated: the event
            // waits (no attempt counted) and is delivered when it admits.
            tracing::debug!(parent: &span, ?refusal, "component not admitting; event waits");
            let wait = match refusal {
                crate::guard::Refusal::Open(d) => d.min(IDLE_WAIT),
                crate::guard::Refusal::Busy(_) => Duration::from_millis(50),
            };
            sleep_or_shutdown(wait, shutdown).await;
        }
        EventOutcome::Failed(reason) | EventOutcome::Faulted(reason) => {
            let dead = delivery.attempt >= max;
            if dead {
                tracing::error!(parent: &span, reason = %reason, "event dead-lettered after {max} attempts");
            } else {
                tracing::warn!(parent: &span, reason = %reason, "event handler failed; will retry");
            }
            if let Err(e) = rt.backend.fail(sub, delivery, &reason, dead).await {
                tracing::warn!(parent: &span, error = %format!("{e:#}"), "recording the failure failed");
            }
            if !dead {
                let delay = rt.config().events.backoff(delivery.attempt + 1);
                sleep_or_shutdown(delay, shutdown).await;
            }
        }
    }
}

/// Commit a handler's changes together with the acknowledgement.
async fn acknowledge(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    delivery: &Delivery,
    changes: crate::uow::Changes,
) -> Result<Commit> {
    crate::crash::point(crate::crash::AFTER_HANDLER);
    rt.backend.ack(sub, delivery, changes).await
}

/// Deliver everything currently pending for `sub`, then return how many
/// deliveries were attempted. For tests and one-shot tooling; the long-running
/// path is `spawn_all`.
pub async fn drain(rt: &Arc<Runtime>, sub: &Subscription) -> Result<usize> {
    let (_keep, mut never) = watch::channel(false);
    let mut streak = Streak::default();
    let mut attempted = 0;
    loop {
        let deliveries = rt.backend.poll(sub, BATCH, Duration::ZERO).await?;
        if deliveries.is_empty() {
            return Ok(attempted);
        }
        for delivery in deliveries {
            attempted += 1;
            if !deliver(rt, sub, &delivery, false, &mut never, &mut streak).await {
                break;
            }
        }
    }
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cursor;

    fn delivery(seq: i64, key: &str, attempt: u32) -> Delivery {
        Delivery {
            id: seq.to_string(),
            topic: "t".into(),
            key: key.into(),
            payload: Vec::new(),
            source: "s".into(),
            attempt,
            trace: crate::trace::TraceContext::default(),
            appended_ms: 0,
            cursor: Cursor::Seq { seq, replay: false },
        }
    }

    #[test]
    fn an_events_age_is_measured_from_its_append() {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_000_250);
        let age = age_seconds(1_000_000, at).expect("an age");
        assert!((age - 0.25).abs() < 1e-9, "{age}");
        assert_eq!(
            age_seconds(1_000_300, at),
            Some(0.0),
            "a clock ahead reads 0"
        );
        assert_eq!(age_seconds(0, at), None, "no time given: no age");
    }

    #[test]
    fn a_wave_stops_before_a_repeated_key() {
        let pending = [
            delivery(1, "a", 1),
            delivery(2, "b", 1),
            delivery(3, "a", 1),
            delivery(4, "c", 1),
        ];
        assert_eq!(wave_len(&pending, 5), 2);
        assert_eq!(wave_len(&pending[2..], 5), 2);
    }

    #[test]
    fn retries_and_overdue_deliveries_go_alone() {
        let retry_first = [delivery(1, "a", 2), delivery(2, "b", 1)];
        assert_eq!(wave_len(&retry_first, 5), 1);
        let retry_later = [delivery(1, "a", 1), delivery(2, "b", 3)];
        assert_eq!(wave_len(&retry_later, 5), 1);
        let overdue = [delivery(1, "a", 9)];
        assert_eq!(wave_len(&overdue, 5), 1);
        assert_eq!(wave_len(&[], 5), 0);
    }

    #[test]
    fn a_wave_handled_during_a_commit_avoids_its_keys_and_retries() {
        let busy: std::collections::HashSet<&str> = ["a", "b"].into_iter().collect();
        let next = [
            delivery(5, "c", 1),
            delivery(6, "d", 1),
            delivery(7, "a", 1),
        ];
        assert_eq!(
            overlap_len(&next, &busy, 5),
            2,
            "stops at a key still committing"
        );
        let repeat = [delivery(5, "c", 1), delivery(6, "c", 1)];
        assert_eq!(overlap_len(&repeat, &busy, 5), 1, "stops at a repeated key");
        let retry = [delivery(5, "c", 1), delivery(6, "d", 2)];
        assert_eq!(overlap_len(&retry, &busy, 5), 1, "stops at a retry");
        let first_busy = [delivery(5, "b", 1), delivery(6, "d", 1)];
        assert_eq!(overlap_len(&first_busy, &busy, 5), 0, "nothing before it");
        let retry_first = [delivery(5, "c", 2), delivery(6, "d", 1)];
        assert_eq!(
            overlap_len(&retry_first, &busy, 5),
            0,
            "a retry never overlaps"
        );
        let many: Vec<Delivery> = (0..2 * BATCH)
            .map(|i| delivery(i as i64, &format!("k{i}"), 1))
            .collect();
        assert_eq!(overlap_len(&many, &busy, 5), BATCH);
    }

    #[test]
    fn a_wave_takes_at_most_a_batch() {
        let pending: Vec<Delivery> = (0..3 * BATCH)
            .map(|i| delivery(i as i64, &format!("k{i}"), 1))
            .collect();
        assert_eq!(wave_len(&pending, 5), BATCH);
        assert_eq!(wave_len(&pending[..BATCH - 1], 5), BATCH - 1);
    }
}
