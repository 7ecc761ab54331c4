//! The Redis backend's stream handling, driven directly: trimming never drops
//! what a consumer group still needs; a lost consumer group is recreated.

use std::time::Duration;

use sktarbucks::backend::redis::RedisBackend;
use sktarbucks::backend::{Backend, Commit, Subscription};
use sktarbucks::uow::{Changes, NewEvent};

use crate::support::redis::{RedisServer, available};

fn events(n: usize) -> Changes {
    Changes {
        events: (0..n)
            .map(|i| NewEvent {
                topic: "t".into(),
                key: format!("k{i}"),
                payload: format!("{i}").into_bytes(),
                source: "test".into(),
            })
            .collect(),
        ..Changes::default()
    }
}

async fn xlen(redis: &RedisServer, stream: &str) -> usize {
    let client = redis::Client::open(redis.url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    redis::AsyncCommands::xlen(&mut conn, stream)
        .await
        .expect("xlen")
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
    let backend = RedisBackend::connect(
        &redis.url,
        "nogroup",
        Duration::from_secs(60),
        Duration::from_secs(3600),
    )
    .await
    .expect("connect");
    let sub = Subscription {
        component: "c".into(),
        topics: vec!["t".into()],
    };
    backend.subscribe(&sub).await.expect("subscribe");
    let client = redis::Client::open(redis.url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
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
    let backend = RedisBackend::connect(
        &redis.url,
        "gone",
        Duration::from_millis(10),
        Duration::from_secs(3600),
    )
    .await
    .expect("connect");
    let sub = Subscription {
        component: "c".into(),
        topics: vec!["t".into()],
    };
    backend.subscribe(&sub).await.expect("subscribe");
    backend.commit(events(2)).await.expect("commit");
    let client = redis::Client::open(redis.url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
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
