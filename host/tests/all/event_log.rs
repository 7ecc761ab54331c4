//! The embedded event log, driven directly: per-topic offsets and pruning.

use std::time::Duration;

use sktarbucks::backend::sqlite::SqliteBackend;
use sktarbucks::backend::{Backend, Subscription};
use sktarbucks::config::Synchronous;
use sktarbucks::uow::{Changes, NewEvent};

fn event(topic: &str, key: &str) -> Changes {
    Changes {
        events: vec![NewEvent {
            topic: topic.into(),
            key: key.into(),
            payload: b"{}".to_vec(),
            source: "test".into(),
            trace: Default::default(),
        }],
        ..Changes::default()
    }
}

/// Milliseconds since the epoch, as the backends stamp appends.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A SQLite log in `dir` with `component` subscribed to `topics`.
async fn subscribed(
    dir: &std::path::Path,
    component: &str,
    topics: &[&str],
) -> (SqliteBackend, Subscription) {
    let backend = SqliteBackend::open(dir, Synchronous::Normal).expect("open");
    let sub = Subscription {
        component: component.into(),
        topics: topics.iter().map(|t| (*t).into()).collect(),
    };
    backend.subscribe(&sub).await.expect("subscribe");
    (backend, sub)
}

fn count(dir: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("sktarbucks.db")).expect("db");
    conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count")
}

/// Pruning removes only events every subscriber of their topic has passed; a
/// topic added to a subscriber later is read from the start of the log.
#[tokio::test(flavor = "multi_thread")]
async fn pruning_keeps_what_subscribers_still_need_and_new_topics_start_at_the_beginning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::open(dir.path(), Synchronous::Normal)
        .expect("open")
        .with_retention(Duration::ZERO);
    let a = Subscription {
        component: "a".into(),
        topics: vec!["x".into()],
    };
    backend.subscribe(&a).await.expect("subscribe");
    for i in 0..4 {
        backend
            .commit(event("x", &format!("x{i}")))
            .await
            .expect("commit");
    }
    backend.commit(event("y", "y0")).await.expect("commit");
    for _ in 0..2 {
        let got = backend.poll(&a, 1, Duration::ZERO).await.expect("poll");
        backend
            .ack(&a, &got[0], Changes::default())
            .await
            .expect("ack");
    }
    // x0, x1 acknowledged by their only subscriber; y0 has no subscriber.
    assert_eq!(backend.maintain().await.expect("maintain"), 3);
    assert_eq!(count(dir.path()), 2, "x2 and x3 are still needed by a");
    // `a` now also takes topic y: nothing of y is left, but x continues where it was.
    let a2 = Subscription {
        component: "a".into(),
        topics: vec!["x".into(), "y".into()],
    };
    backend.subscribe(&a2).await.expect("subscribe");
    backend.commit(event("y", "y1")).await.expect("commit");
    let mut keys = Vec::new();
    loop {
        let got = backend.poll(&a2, 1, Duration::ZERO).await.expect("poll");
        let Some(d) = got.first() else { break };
        keys.push(d.key.clone());
        backend.ack(&a2, d, Changes::default()).await.expect("ack");
    }
    assert_eq!(keys, ["x2", "x3", "y1"]);
    assert_eq!(backend.lag(&a2).await.expect("lag"), 0);
}

/// A host that died mid-event (no clean stop) charges that event one attempt
/// when the next host starts, so an event that crashes hosts ends up
/// dead-lettered instead of crashing them forever; a clean stop charges nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_charges_the_pending_event_an_attempt_and_a_clean_stop_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = Subscription {
        component: "a".into(),
        topics: vec!["x".into()],
    };
    {
        let first = SqliteBackend::open(dir.path(), Synchronous::Normal).expect("open");
        first.subscribe(&sub).await.expect("subscribe");
        first.commit(event("x", "x0")).await.expect("commit");
        let got = first.poll(&sub, 1, Duration::ZERO).await.expect("poll");
        assert_eq!(got[0].attempt, 1);
        // ... and the process dies here, without unsubscribe.
    }
    let second = SqliteBackend::open(dir.path(), Synchronous::Normal).expect("open");
    second.subscribe(&sub).await.expect("subscribe");
    let got = second.poll(&sub, 1, Duration::ZERO).await.expect("poll");
    assert_eq!(got[0].attempt, 2, "the crash counted as an attempt");
    // Repeated subscribe in one process is not a crash.
    second.subscribe(&sub).await.expect("subscribe again");
    let got = second.poll(&sub, 1, Duration::ZERO).await.expect("poll");
    assert_eq!(got[0].attempt, 2);
    second.unsubscribe(&sub).await.expect("clean stop");
    drop(second);
    let third = SqliteBackend::open(dir.path(), Synchronous::Normal).expect("open");
    third.subscribe(&sub).await.expect("subscribe");
    let got = third.poll(&sub, 1, Duration::ZERO).await.expect("poll");
    assert_eq!(got[0].attempt, 2, "a clean stop charges nothing");
}

/// A subscriber of several topics gets its events in log order across them,
/// `max` at a time: each wave holds the lowest pending sequence numbers of
/// all its topics together (never a later one of one topic before an earlier
/// one of another), a topic listed twice is delivered once, and events of
/// topics it does not take are skipped.
#[tokio::test(flavor = "multi_thread")]
async fn waves_over_several_topics_follow_the_log_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, sub) = subscribed(dir.path(), "s", &["x", "y", "z", "y"]).await;
    // Runs of one topic longer than a wave, and topics interleaved.
    let order = "xxxxxxyzyzwwxyzzzzzzzxwyyyyyyxz";
    let mut expected = Vec::new();
    for (i, topic) in order.chars().enumerate() {
        let key = format!("{topic}{i}");
        backend
            .commit(event(&topic.to_string(), &key))
            .await
            .expect("commit");
        if topic != 'w' {
            expected.push(key);
        }
    }
    let mut delivered = Vec::new();
    let mut mixed_waves = 0;
    loop {
        let wave = backend.poll(&sub, 4, Duration::ZERO).await.expect("poll");
        if wave.is_empty() {
            break;
        }
        assert!(wave.len() <= 4, "a wave of {} (max 4)", wave.len());
        if wave.iter().any(|d| d.topic != wave[0].topic) {
            mixed_waves += 1;
        }
        for d in &wave {
            delivered.push(d.key.clone());
            backend.ack(&sub, d, Changes::default()).await.expect("ack");
        }
    }
    assert!(mixed_waves >= 2, "the merge across topics was exercised");
    assert_eq!(delivered, expected);
    assert_eq!(backend.lag(&sub).await.expect("lag"), 0);
}

/// A delivery carries when its event was appended: the pipeline's latency
/// to a subscriber (`sktarbucks_event_age_seconds`) is counted from it.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_carries_when_its_event_was_appended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, sub) = subscribed(dir.path(), "a", &["x"]).await;
    let before = now_ms();
    backend.commit(event("x", "k")).await.expect("commit");
    let after = now_ms();
    let got = backend.poll(&sub, 1, Duration::ZERO).await.expect("poll");
    let appended = got.first().map(|d| d.appended_ms).expect("one delivery");
    assert!(
        (before..=after).contains(&appended),
        "appended at {appended}, committed between {before} and {after}"
    );
    // The log's offsets move only when a delivery is acknowledged: it does
    // not read past one in flight (its dispatcher polls after the commit).
    assert!(!backend.reads_ahead(), "the SQLite log reads ahead");
    assert!(
        backend.poll_ahead(&sub, 10).await.is_err(),
        "the SQLite log read ahead"
    );
}
