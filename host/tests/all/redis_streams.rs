//! The Redis backend's stream handling, driven directly: trimming never drops
//! what a consumer group still needs; a lost consumer group is recreated.

use std::time::Duration;

use sktarbucks::backend::redis::RedisBackend;
use sktarbucks::backend::{Backend, Commit, Delivery, Subscription};
use sktarbucks::uow::{Changes, NewEvent};

use crate::support::redis::{RedisServer, available, calls, info};

fn events(n: usize) -> Changes {
    Changes {
        events: (0..n)
            .map(|i| NewEvent {
                topic: "t".into(),
                key: format!("k{i}"),
                payload: format!("{i}").into_bytes(),
                source: "test".into(),
                trace: Default::default(),
            })
            .collect(),
        ..Changes::default()
    }
}

async fn xlen(redis: &RedisServer, stream: &str) -> usize {
    let mut conn = redis.conn().await;
    redis::AsyncCommands::xlen(&mut conn, stream)
        .await
        .expect("xlen")
}

/// How many entries of `stream` group `group` has pending (`XPENDING`'s
/// summary).
async fn pending_count(redis: &RedisServer, stream: &str, group: &str) -> u64 {
    let mut conn = redis.conn().await;
    let (count, ..): (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(&mut conn)
        .await
        .expect("xpending");
    count
}

/// The fields of hash `key` (a subscriber's failed-attempt records).
async fn hkeys(redis: &RedisServer, key: &str) -> Vec<String> {
    let mut conn = redis.conn().await;
    redis::AsyncCommands::hkeys(&mut conn, key)
        .await
        .expect("hkeys")
}

/// Trimming (retention 0) keeps every entry a group has pending or not yet read.
#[tokio::test(flavor = "multi_thread")]
async fn trimming_never_drops_entries_a_group_still_needs() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let backend =
        RedisBackend::connect(&redis.url, "trim", Duration::from_secs(60), Duration::ZERO)
            .await
            .expect("connect");
    let fast = Subscription {
        component: "fast".into(),
        topics: vec!["t".into()],
    };
    let slow = Subscription {
        component: "slow".into(),
        topics: vec!["t".into()],
    };
    backend.subscribe(&fast).await.expect("subscribe");
    backend.subscribe(&slow).await.expect("subscribe");
    assert_eq!(
        backend.commit(events(5)).await.expect("commit"),
        Commit::Applied
    );

    // `fast` handles three, and holds the fourth without acknowledging it.
    for _ in 0..3 {
        let got = backend.poll(&fast, 1, Duration::ZERO).await.expect("poll");
        assert_eq!(got.len(), 1);
        backend
            .ack(&fast, &got[0], Changes::default())
            .await
            .expect("ack");
    }
    let held = backend.poll(&fast, 1, Duration::ZERO).await.expect("poll");
    assert_eq!(held[0].key, "k3");

    // `slow` has read nothing: nothing may go.
    backend.trim("trim:stream:t").await.expect("trim");
    assert_eq!(xlen(&redis, "trim:stream:t").await, 5);

    // `slow` catches up entirely: only `fast`'s pending and unread entries stay.
    for _ in 0..5 {
        let got = backend.poll(&slow, 1, Duration::ZERO).await.expect("poll");
        backend
            .ack(&slow, &got[0], Changes::default())
            .await
            .expect("ack");
    }
    backend.trim("trim:stream:t").await.expect("trim");
    assert_eq!(
        xlen(&redis, "trim:stream:t").await,
        2,
        "k3 (pending) and k4 (unread) stay"
    );
    // The held entry is still deliverable after trimming.
    let again = backend.poll(&fast, 1, Duration::ZERO).await.expect("poll");
    assert_eq!(again[0].key, "k3");
    backend
        .ack(&fast, &again[0], Changes::default())
        .await
        .expect("ack");
    let last = backend.poll(&fast, 1, Duration::ZERO).await.expect("poll");
    assert_eq!(last[0].key, "k4");
}

/// After Redis loses its data (no persistence), a missing group is recreated and delivery goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_consumer_group_is_recreated() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let (backend, sub) = subscribed(&redis, "nogroup", Duration::from_secs(60)).await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("DEL")
        .arg("nogroup:stream:t")
        .arg("nogroup:replay:c")
        .query_async(&mut conn)
        .await
        .expect("del");
    assert!(
        backend
            .poll(&sub, 1, Duration::ZERO)
            .await
            .expect("poll recovers")
            .is_empty()
    );
    backend.commit(events(1)).await.expect("commit");
    let got = backend.poll(&sub, 1, Duration::ZERO).await.expect("poll");
    assert_eq!(
        got.len(),
        1,
        "delivery resumes after the group is recreated"
    );
}

/// Streams nobody subscribes to are trimmed by retention alone.
#[tokio::test(flavor = "multi_thread")]
async fn unsubscribed_streams_are_trimmed_by_retention() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let backend = RedisBackend::connect(
        &redis.url,
        "orphan",
        Duration::from_secs(60),
        Duration::ZERO,
    )
    .await
    .expect("connect");
    backend.commit(events(3)).await.expect("commit");
    assert_eq!(xlen(&redis, "orphan:stream:t").await, 3);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(backend.maintain().await.expect("maintain"), 3);
    assert_eq!(xlen(&redis, "orphan:stream:t").await, 0);
}

/// Consumers of stopped processes that hold nothing are removed from their
/// groups; consumers holding pending entries never are.
#[tokio::test(flavor = "multi_thread")]
async fn idle_consumers_holding_nothing_are_forgotten() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let (backend, _) = subscribed(&redis, "gone", Duration::from_millis(10)).await;
    backend.commit(events(2)).await.expect("commit");
    let mut conn = redis.conn().await;
    // Two "stopped processes": one read and acked its entry, one still holds one.
    for (consumer, ack) in [("dead-clean", true), ("dead-holding", false)] {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("c")
            .arg(consumer)
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg("gone:stream:t")
            .arg(">")
            .query_async(&mut conn)
            .await
            .expect("xreadgroup");
        if ack {
            let id = reply.keys[0].ids[0].id.clone();
            let _: i64 = redis::AsyncCommands::xack(&mut conn, "gone:stream:t", "c", &[id])
                .await
                .expect("xack");
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    backend.maintain().await.expect("maintain");
    let info: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("gone:stream:t")
        .arg("c")
        .query_async(&mut conn)
        .await
        .expect("xinfo");
    let text = format!("{info:?}");
    assert!(
        !text.contains("dead-clean"),
        "the idle, empty consumer is gone: {text}"
    );
    assert!(
        text.contains("dead-holding"),
        "a consumer holding an entry stays: {text}"
    );
}

/// A consumer without a heartbeat (its process died) has its entries taken
/// over at the next poll of another host, counted as an attempt, and is
/// removed from the group; a live consumer's entry is never taken (the idle
/// reclaim is set far away). A clean `close` deletes the heartbeat, so what
/// that process still held is taken over at once too.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_consumers_entries_are_taken_over_at_once_and_a_live_ones_never() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b, sub) = two_hosts(&redis, "hb", Duration::from_secs(600)).await;
    let mut conn = redis.conn().await;
    let alive_key = format!("hb:alive:{}", a.consumer());
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&alive_key)
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(
        ttl > 0 && ttl <= 3_000,
        "a subscribed process heartbeats with a TTL: {ttl}"
    );
    backend_commit(&a, 3).await;
    // A (alive) holds k0; a consumer of a dead process ("ghost", no
    // heartbeat) holds k1.
    let held = a.poll(&sub, 1, Duration::ZERO).await.expect("poll");
    assert_eq!(held[0].key, "k0");
    let _: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("c")
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("hb:stream:t")
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("xreadgroup");

    let got = b.poll(&sub, 16, Duration::ZERO).await.expect("poll");
    let keys: Vec<(&str, u32)> = got.iter().map(|d| (d.key.as_str(), d.attempt)).collect();
    assert_eq!(
        keys,
        vec![("k1", 2)],
        "the ghost's entry at once, as a second attempt; not A's"
    );
    let owners = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
                .arg("hb:stream:t")
                .arg("c")
                .arg("-")
                .arg("+")
                .arg(100)
                .query_async(&mut conn)
                .await
                .expect("xpending");
            reply
                .ids
                .into_iter()
                .map(|p| p.consumer)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        owners(&mut conn).await,
        vec![a.consumer().to_owned(), b.consumer().to_owned()]
    );
    let info: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("hb:stream:t")
        .arg("c")
        .query_async(&mut conn)
        .await
        .expect("xinfo");
    assert!(
        info.consumers.iter().all(|c| c.name != "ghost"),
        "the dead consumer, holding nothing now, is removed"
    );
    b.ack(&sub, &got[0], Changes::default()).await.expect("ack");
    let next = b.poll(&sub, 16, Duration::ZERO).await.expect("poll");
    assert_eq!(next[0].key, "k2", "B goes on with new entries, not A's");
    b.ack(&sub, &next[0], Changes::default())
        .await
        .expect("ack");
    // Later polls (dead-consumer scans due again) still leave A's entry alone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b.poll(&sub, 16, Duration::ZERO)
            .await
            .expect("poll")
            .is_empty()
    );
    assert_eq!(owners(&mut conn).await, vec![a.consumer().to_owned()]);

    // A stops cleanly: its heartbeat is deleted and B takes k0 at once.
    a.close().await.expect("close");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&alive_key)
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert!(!exists, "a clean close deletes the heartbeat");
    let taken =
        crate::support::eventually("A's entry taken over", Duration::from_secs(10), || async {
            let got = b.poll(&sub, 16, Duration::ZERO).await.expect("poll");
            (!got.is_empty()).then_some(got)
        })
        .await;
    assert_eq!((taken[0].key.as_str(), taken[0].attempt), ("k0", 2));
}

/// A retried delivery's failed-attempt record goes with its acknowledgement
/// (a first attempt's acknowledgement skips the delete: it has none).
#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledged_retry_leaves_no_failed_attempt_record() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let (backend, sub) = subscribed(&redis, "retried", Duration::from_secs(60)).await;
    backend_commit(&backend, 2).await;
    let first = backend.poll(&sub, 2, Duration::ZERO).await.expect("poll");
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|d| d.attempt == 1), "{first:?}");
    // The first fails once; the second is acknowledged at its first attempt.
    backend
        .fail(&sub, &first[0], "boom", false)
        .await
        .expect("fail");
    assert_eq!(
        backend
            .ack(&sub, &first[1], handled("b"))
            .await
            .expect("ack"),
        Commit::Applied
    );
    assert_eq!(
        hkeys(&redis, "retried:attempts:c").await,
        vec![first[0].id.clone()],
        "premise: only the failure is recorded"
    );
    let again = backend.poll(&sub, 2, Duration::ZERO).await.expect("poll");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (again[0].id.as_str(), again[0].attempt),
        (first[0].id.as_str(), 2)
    );
    assert_eq!(
        backend
            .ack(&sub, &again[0], handled("a"))
            .await
            .expect("ack"),
        Commit::Applied
    );
    assert_eq!(
        hkeys(&redis, "retried:attempts:c").await,
        Vec::<String>::new(),
        "the record went with the retry's acknowledgement"
    );
    assert!(
        backend
            .poll(&sub, 2, Duration::ZERO)
            .await
            .expect("poll")
            .is_empty()
    );
}

/// An entry deleted from its stream while it sat in this consumer's pending
/// list comes back from Redis as an id without fields: the poll
/// acknowledges it and hands nothing out.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_deleted_while_pending_is_acknowledged_and_skipped() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let (backend, sub) = subscribed(&redis, "deleted", Duration::from_secs(60)).await;
    backend_commit(&backend, 2).await;
    let first = backend.poll(&sub, 2, Duration::ZERO).await.expect("poll");
    assert_eq!(first.len(), 2, "{first:?}");
    backend
        .fail(&sub, &first[0], "boom", false)
        .await
        .expect("fail");
    assert_eq!(
        backend
            .ack(&sub, &first[1], handled("b"))
            .await
            .expect("ack"),
        Commit::Applied
    );
    // A Redis delivery's id is `{topic}@{stream entry id}`.
    let (_, entry) = first[0].id.split_once('@').expect("a stream delivery id");
    let stream = "deleted:stream:t";
    let mut conn = redis.conn().await;
    assert_eq!(
        pending_count(&redis, stream, "c").await,
        1,
        "premise: the failed entry is pending"
    );
    let deleted: u64 = redis::AsyncCommands::xdel(&mut conn, stream, &[entry])
        .await
        .expect("xdel");
    assert_eq!(deleted, 1, "premise: the entry was in the stream");
    let again = backend.poll(&sub, 2, Duration::ZERO).await.expect("poll");
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(
        pending_count(&redis, stream, "c").await,
        0,
        "the deleted entry was acknowledged"
    );
}

/// Scripts Redis has cached (`INFO memory`'s `number_of_cached_scripts`).
async fn cached_scripts(redis: &RedisServer) -> u64 {
    info(&mut redis.conn().await, "memory")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("number_of_cached_scripts:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("number_of_cached_scripts in INFO memory")
}

/// A Redis that lost its script cache (restarted, or `SCRIPT FLUSH`) gets
/// the commit script again at the next commit, which then applies.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_after_the_script_cache_is_flushed_loads_the_script_again() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let (backend, _sub) = subscribed(&redis, "flushed", Duration::from_secs(60)).await;
    backend_commit(&backend, 1).await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("script flush");
    assert_eq!(
        cached_scripts(&redis).await,
        0,
        "premise: the cache is empty"
    );
    backend_commit(&backend, 1).await;
    assert_eq!(xlen(&redis, "flushed:stream:t").await, 2);
    assert!(
        cached_scripts(&redis).await >= 1,
        "the script was loaded again"
    );
}

/// Two hosts' backends on one Redis (`prefix`), both consuming topic `t`
/// as component `c`, taking over entries idle longer than `claim_idle`.
async fn two_hosts(
    redis: &RedisServer,
    prefix: &str,
    claim_idle: Duration,
) -> (RedisBackend, RedisBackend, Subscription) {
    let (a, sub) = subscribed(redis, prefix, claim_idle).await;
    let (b, _) = subscribed(redis, prefix, claim_idle).await;
    (a, b, sub)
}

/// One host's backend on `redis` (`prefix`), subscribed as component `c`
/// to topic `t`, taking over entries idle longer than `claim_idle`.
async fn subscribed(
    redis: &RedisServer,
    prefix: &str,
    claim_idle: Duration,
) -> (RedisBackend, Subscription) {
    let backend = RedisBackend::connect(&redis.url, prefix, claim_idle, Duration::from_secs(3600))
        .await
        .expect("connect");
    let sub = Subscription {
        component: "c".into(),
        topics: vec!["t".into()],
    };
    backend.subscribe(&sub).await.expect("subscribe");
    (backend, sub)
}

async fn backend_commit(backend: &RedisBackend, n: usize) {
    assert_eq!(
        backend.commit(events(n)).await.expect("commit"),
        Commit::Applied
    );
}

/// A handler's changes: one document written and one event published.
fn handled(value: &str) -> Changes {
    Changes {
        writes: vec![(
            sktarbucks::uow::DocKey::new("c", "docs", "x"),
            Some(value.as_bytes().to_vec()),
        )],
        events: vec![NewEvent {
            topic: "out".into(),
            key: value.into(),
            payload: value.as_bytes().to_vec(),
            source: "c".into(),
            trace: Default::default(),
        }],
        ..Changes::default()
    }
}

/// A stalled host (alive, heartbeat kept) whose entry another host took over
/// after `claim_idle`: only the consumer holding the entry when it commits
/// applies its changes, whichever commits first; the other's are dropped.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_consumer_holding_an_entry_commits_its_effect() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    for (prefix, taker_first) in [("late1", false), ("late2", true)] {
        let (a, b, sub) = two_hosts(&redis, prefix, Duration::from_millis(200)).await;
        backend_commit(&a, 1).await;
        let stalled = a.poll(&sub, 1, Duration::ZERO).await.expect("poll");
        assert_eq!((stalled[0].key.as_str(), stalled[0].attempt), ("k0", 1));
        // A is alive (heartbeat) but sits on it past claim_idle: B takes it.
        let taken = crate::support::eventually(
            "B reclaims A's idle entry",
            Duration::from_secs(10),
            || async {
                let got = b.poll(&sub, 1, Duration::ZERO).await.expect("poll");
                (!got.is_empty()).then_some(got)
            },
        )
        .await;
        assert_eq!(
            (taken[0].id.as_str(), taken[0].attempt),
            (stalled[0].id.as_str(), 2),
            "the same entry, as a second attempt"
        );
        let (first, second) = if taker_first {
            ((&b, &taken[0], "b"), (&a, &stalled[0], "a"))
        } else {
            ((&a, &stalled[0], "a"), (&b, &taken[0], "b"))
        };
        for (backend, delivery, value) in [first, second] {
            assert_eq!(
                backend
                    .ack(&sub, delivery, handled(value))
                    .await
                    .expect("ack"),
                Commit::Applied,
                "a dropped late commit still counts as acknowledged"
            );
        }
        let doc = b
            .get(&sktarbucks::uow::DocKey::new("c", "docs", "x"))
            .await
            .expect("get");
        assert_eq!(doc.value.as_deref(), Some(b"b".as_slice()), "{prefix}");
        let out: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("{prefix}:stream:out"))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("xrange");
        let keys: Vec<String> = out
            .ids
            .iter()
            .map(|e| e.get::<String>("key").unwrap_or_default())
            .collect();
        assert_eq!(keys, vec!["b".to_owned()], "{prefix}: one event, B's");
        assert!(
            b.poll(&sub, 16, Duration::ZERO)
                .await
                .expect("poll")
                .is_empty()
                && a.poll(&sub, 16, Duration::ZERO)
                    .await
                    .expect("poll")
                    .is_empty(),
            "{prefix}: nothing left pending"
        );
        a.close().await.expect("close");
        b.close().await.expect("close");
    }
}

/// A poll reads this host's pending list (and the failed attempts) only
/// when something can be there: once every entry handed out was
/// acknowledged, a poll is one `XREADGROUP`; after a failure the failed
/// entry still comes back first, as a second attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_poll_reads_the_pending_list_only_when_something_can_be_there() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let (backend, sub) = subscribed(&redis, "own", Duration::from_secs(600)).await;
    backend_commit(&backend, 3).await;
    let poll = || async { backend.poll(&sub, 1, Duration::ZERO).await.expect("poll") };

    let first = poll().await;
    assert_eq!((first[0].key.as_str(), first[0].attempt), ("k0", 1));
    backend
        .ack(&sub, &first[0], Changes::default())
        .await
        .expect("ack");

    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .expect("resetstat");
    let second = poll().await;
    assert_eq!((second[0].key.as_str(), second[0].attempt), ("k1", 1));
    assert_eq!(
        (
            calls(&mut conn, "xreadgroup").await,
            calls(&mut conn, "hmget").await
        ),
        (1, 0),
        "nothing held: new entries only, no attempts to look up"
    );

    backend
        .fail(&sub, &second[0], "boom", false)
        .await
        .expect("fail");
    let again = poll().await;
    assert_eq!(
        (again[0].key.as_str(), again[0].attempt),
        ("k1", 2),
        "the failed entry first, with its attempt"
    );
    assert_eq!(calls(&mut conn, "xreadgroup").await, 2);
    assert_eq!(calls(&mut conn, "hmget").await, 1);
    backend
        .ack(&sub, &again[0], Changes::default())
        .await
        .expect("ack");
    let last = poll().await;
    assert_eq!((last[0].key.as_str(), last[0].attempt), ("k2", 1));
    backend
        .ack(&sub, &last[0], Changes::default())
        .await
        .expect("ack");
    assert!(poll().await.is_empty());
}

/// A delivery carries when its entry was appended (the server's clock at
/// `XADD`, from the entry id): the pipeline's latency to a subscriber is
/// counted from it.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_carries_when_its_entry_was_appended() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let (backend, sub) = subscribed(&redis, "age", Duration::from_secs(60)).await;
    let before = crate::event_log::now_ms();
    backend_commit(&backend, 1).await;
    let after = crate::event_log::now_ms();
    let got = backend.poll(&sub, 1, Duration::ZERO).await.expect("poll");
    let appended = got.first().map(|d| d.appended_ms).expect("one delivery");
    assert!(
        (before..=after).contains(&appended),
        "appended at {appended}, committed between {before} and {after}"
    );
}

/// Reading ahead (while the deliveries of the last poll are committed) takes
/// only entries never handed out, never one in flight; what was read ahead
/// and then dropped (a commit before it failed) comes back from this
/// consumer's own list at the next poll, still a first attempt.
#[tokio::test(flavor = "multi_thread")]
async fn reading_ahead_takes_only_new_entries_and_a_dropped_one_comes_back() {
    if !available() {
        return;
    }
    let redis = RedisServer::start();
    let (backend, sub) = subscribed(&redis, "ahead", Duration::from_secs(600)).await;
    assert!(backend.reads_ahead(), "premise: Redis reads ahead");
    backend_commit(&backend, 4).await;
    let keys = |d: &[Delivery]| {
        d.iter()
            .map(|d| (d.key.clone(), d.attempt))
            .collect::<Vec<_>>()
    };
    let ack_all = |deliveries: Vec<Delivery>| {
        let (backend, sub) = (&backend, &sub);
        async move {
            for d in &deliveries {
                backend.ack(sub, d, Changes::default()).await.expect("ack");
            }
        }
    };
    let in_flight = backend.poll(&sub, 2, Duration::ZERO).await.expect("poll");
    assert_eq!(keys(&in_flight), [("k0".into(), 1), ("k1".into(), 1)]);
    let ahead = backend.poll_ahead(&sub, 10).await.expect("poll ahead");
    assert_eq!(keys(&ahead), [("k2".into(), 1), ("k3".into(), 1)]);
    let again = backend.poll_ahead(&sub, 10).await.expect("poll ahead");
    assert!(again.is_empty(), "nothing new: nothing read");
    ack_all(in_flight).await;
    // The batch read ahead is dropped unhandled: the next poll hands it out
    // again, from the pending list.
    let back = backend.poll(&sub, 10, Duration::ZERO).await.expect("poll");
    assert_eq!(keys(&back), [("k2".into(), 1), ("k3".into(), 1)]);
    ack_all(back).await;
    assert!(
        backend
            .poll(&sub, 10, Duration::ZERO)
            .await
            .expect("poll")
            .is_empty()
    );
    assert_eq!(pending_count(&redis, "ahead:stream:t", "c").await, 0);
}
