//! Wakes the SQLite dispatchers whose topics a commit appended to, and no
//! others.
//!
//! One shared signal woke every dispatcher on every commit with events:
//! each ran its poll (a read transaction over all its topics) to find,
//! mostly, nothing. Per order four dispatchers woke three times (twelve
//! polls) for five deliveries. Here each subscriber waits on its own
//! signal, and a commit signals the subscribers of the topics it appended
//! to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A subscriber's topics and the signal it waits on.
struct Waiter {
    topics: Vec<String>,
    notify: Arc<Notify>,
}

/// Signals by subscriber; cheap to share behind the backend.
#[derive(Default)]
pub(super) struct Wakeups {
    waiters: Mutex<HashMap<String, Waiter>>,
}

impl Wakeups {
    /// The signal `component` waits on, now for `topics` (a resubscription
    /// after a swap may change them).
    pub(super) fn waiter(&self, component: &str, topics: &[String]) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        match waiters.get_mut(component) {
            Some(w) => {
                if w.topics != topics {
                    w.topics = topics.to_vec();
                }
                Arc::clone(&w.notify)
            }
            None => {
                let notify = Arc::new(Notify::new());
                waiters.insert(
                    component.to_owned(),
                    Waiter {
                        topics: topics.to_vec(),
                        notify: Arc::clone(&notify),
                    },
                );
                notify
            }
        }
    }

    /// Wake the subscribers of any of `topics` that wait now.
    pub(super) fn appended<'a>(&self, topics: impl IntoIterator<Item = &'a str> + Clone) {
        if topics.clone().into_iter().next().is_none() {
            return;
        }
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for w in waiters.values() {
            if topics
                .clone()
                .into_iter()
                .any(|t| w.topics.iter().any(|mine| mine == t))
            {
                w.notify.notify_waiters();
            }
        }
    }

    /// Wake `component` (a replay was queued for it).
    pub(super) fn wake(&self, component: &str) {
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = waiters.get(component) {
            w.notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn topics(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Whether `notify` is signalled while it waits (armed before the call).
    async fn woken(notify: &Notify, signal: impl FnOnce()) -> bool {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        signal();
        tokio::time::timeout(Duration::from_millis(50), notified)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_the_subscribers_of_an_appended_topic_wake() {
        let w = Wakeups::default();
        let production = w.waiter("production", &topics(&["order.requested"]));
        let order = w.waiter("order", &topics(&["production.registered"]));
        assert!(
            woken(&production, || w.appended(["order.requested"])).await,
            "a subscriber of the topic wakes"
        );
        assert!(
            !woken(&order, || w.appended(["order.requested"])).await,
            "another topic's subscriber sleeps on"
        );
        assert!(
            woken(&order, || w.appended(["x", "production.registered"])).await,
            "any one of the appended topics wakes it"
        );
        assert!(
            woken(&order, || w.wake("order")).await,
            "a replay wakes its subscriber"
        );
    }

    #[tokio::test]
    async fn a_resubscription_follows_the_new_topics() {
        let w = Wakeups::default();
        let first = w.waiter("mypage", &topics(&["a"]));
        let again = w.waiter("mypage", &topics(&["b"]));
        assert!(Arc::ptr_eq(&first, &again), "one signal per subscriber");
        assert!(
            !woken(&again, || w.appended(["a"])).await,
            "the old topic no longer wakes it"
        );
        assert!(
            woken(&again, || w.appended(["b"])).await,
            "the new one does"
        );
    }
}
