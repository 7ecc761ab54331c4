//! Delivers logged events to one subscribing component, one at a time.
//!
//! Each delivery runs the handler in a fresh instance; its writes, its own
//! published events and the acknowledgement commit together (exactly-once
//! effect on top of at-least-once delivery). A failed delivery is recorded,
//! retried with exponential backoff and dead-lettered after
//! `events.max_attempts`; then the subscriber moves on.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::backend::{Commit, Delivery, Subscription};
use crate::runtime::{EventOutcome, Runtime};

/// Deliveries fetched per poll.
const BATCH: usize = 16;
/// Longest wait for new events before polling again (covers other processes).
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// Start a dispatcher for every loaded component that subscribes to something.
pub async fn spawn_all(
    rt: &Arc<Runtime>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::new();
    for loaded in rt.registry.all() {
        let topics = rt.subscriptions(&loaded).await?;
        if topics.is_empty() {
            continue;
        }
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
        handles.push(tokio::spawn(async move { run(rt, sub, shutdown).await }));
    }
    Ok(handles)
}

async fn run(rt: Arc<Runtime>, sub: Subscription, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        let polled = tokio::select! {
            polled = rt.backend.poll(&sub, BATCH, IDLE_WAIT) => polled,
            _ = shutdown.changed() => break,
        };
        let deliveries = match polled {
            Ok(d) => {
                backoff = Duration::from_millis(100);
                d
            }
            Err(e) => {
                tracing::warn!(component = %sub.component, error = %format!("{e:#}"), "event poll failed; retrying");
                sleep_or_shutdown(backoff, &mut shutdown).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        for delivery in deliveries {
            if *shutdown.borrow() {
                return;
            }
            if !deliver(&rt, &sub, &delivery, &mut shutdown).await {
                // Failed, conflicted or backend trouble: poll again so the
                // next attempt sees fresh state and attempt counts.
                break;
            }
        }
    }
}

/// Deliver one event; true when it was acknowledged and the batch may go on.
async fn deliver(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    delivery: &Delivery,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let Some(loaded) = rt.registry.get(&sub.component) else {
        // Removed: its events wait in the log until it is back.
        sleep_or_shutdown(IDLE_WAIT, shutdown).await;
        return false;
    };
    let span = tracing::info_span!("event", component = %sub.component, event_id = %delivery.id, topic = %delivery.topic, attempt = delivery.attempt);
    handle(rt, sub, delivery, shutdown, loaded)
        .instrument(span)
        .await
}

async fn handle(
    rt: &Arc<Runtime>,
    sub: &Subscription,
    delivery: &Delivery,
    shutdown: &mut watch::Receiver<bool>,
    loaded: Arc<crate::registry::Loaded>,
) -> bool {
    match rt.handle_event(&loaded, delivery).await {
        EventOutcome::Handled(changes) => match rt.backend.ack(sub, delivery, changes).await {
            Ok(Commit::Applied) => true,
            Ok(Commit::Conflict) => {
                tracing::debug!("event handling conflicted; redelivering");
                false
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "acknowledging event failed; redelivering");
                sleep_or_shutdown(Duration::from_millis(200), shutdown).await;
                false
            }
        },
        EventOutcome::Failed(reason) => {
            let max = rt.config.events.max_attempts;
            let dead = delivery.attempt >= max;
            if dead {
                tracing::error!(reason = %reason, "event dead-lettered after {max} attempts");
            } else {
                tracing::warn!(reason = %reason, "event handler failed; will retry");
            }
            if let Err(e) = rt.backend.fail(sub, delivery, &reason, dead).await {
                tracing::warn!(error = %format!("{e:#}"), "recording the failure failed");
            }
            if !dead {
                let delay = rt.config.events.backoff(delivery.attempt + 1);
                sleep_or_shutdown(delay, shutdown).await;
            }
            false
        }
    }
}

/// Deliver everything currently pending for `sub`, then return how many
/// deliveries were attempted. For tests and one-shot tooling; the long-running
/// path is `spawn_all`.
pub async fn drain(rt: &Arc<Runtime>, sub: &Subscription) -> Result<usize> {
    let (_keep, mut never) = watch::channel(false);
    let mut attempted = 0;
    loop {
        let deliveries = rt.backend.poll(sub, BATCH, Duration::ZERO).await?;
        if deliveries.is_empty() {
            return Ok(attempted);
        }
        for delivery in deliveries {
            attempted += 1;
            if !deliver(rt, sub, &delivery, &mut never).await {
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
