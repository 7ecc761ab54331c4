//! Ranged reads and sequences of both backends, driven directly: key order,
//! caps on entries and bytes, deleted documents skipped, O(1) sequence moves.

use sktarbucks::backend::{Backend, Commit, RangeLimit};
use sktarbucks::uow::{Add, Changes, DocKey};

use crate::on_both_backends;
use crate::support::harness::{Harness, Kind};

const LIMIT: RangeLimit = RangeLimit {
    entries: 1000,
    bytes: 4 * 1024 * 1024,
};

fn key(i: usize) -> String {
    format!("{i:020}")
}

async fn write(backend: &dyn Backend, ns: &str, coll: &str, docs: Vec<(String, Option<Vec<u8>>)>) {
    let changes = Changes {
        writes: docs
            .into_iter()
            .map(|(k, v)| (DocKey::new(ns, coll, &k), v))
            .collect(),
        ..Changes::default()
    };
    backend.commit(changes).await.expect("commit");
}

/// Every live key of a collection, following `more`.
async fn walk(
    backend: &dyn Backend,
    ns: &str,
    coll: &str,
    limit: RangeLimit,
) -> (Vec<String>, usize) {
    let (mut keys, mut calls) = (Vec::new(), 0);
    let mut after: Option<String> = None;
    loop {
        let page = backend
            .range(ns, coll, after.as_deref(), limit)
            .await
            .expect("range");
        calls += 1;
        assert!(page.entries.len() <= limit.entries);
        keys.extend(page.entries.iter().map(|(k, _, _)| k.clone()));
        if !page.more {
            return (keys, calls);
        }
        after = Some(page.entries.last().expect("more implies entries").0.clone());
    }
}

async fn ranges_follow_key_order_skip_deletes_and_respect_caps(kind: Kind) {
    let h = Harness::start(kind).await;
    let b = h.backend.as_ref();
    // 2,500 documents written in a shuffled order, every 10th deleted again.
    let mut ids: Vec<usize> = (0..2500).collect();
    ids.sort_by_key(|i| (i * 7919) % 2500);
    for chunk in ids.chunks(500) {
        write(
            b,
            "t",
            "c",
            chunk
                .iter()
                .map(|i| (key(*i), Some(b"{}".to_vec())))
                .collect(),
        )
        .await;
    }
    write(
        b,
        "t",
        "c",
        (0..2500).step_by(10).map(|i| (key(i), None)).collect(),
    )
    .await;
    // Same collection name in another namespace and another collection: invisible.
    write(b, "u", "c", vec![(key(1), Some(b"{}".to_vec()))]).await;
    write(b, "t", "d", vec![(key(1), Some(b"{}".to_vec()))]).await;
    let live: Vec<String> = (0..2500).filter(|i| i % 10 != 0).map(key).collect();
    let (keys, calls) = walk(b, "t", "c", LIMIT).await;
    assert_eq!(keys, live);
    assert_eq!(calls, 3, "1000 + 1000 + 250 entries");
    let small = RangeLimit {
        entries: 7,
        ..LIMIT
    };
    assert_eq!(walk(b, "t", "c", small).await.0, live);
    // A range starting after the last key is empty and final.
    let end = b
        .range("t", "c", Some(&key(2499)), LIMIT)
        .await
        .expect("range");
    assert!(end.entries.is_empty() && !end.more);
    let missing = b.range("t", "nothing", None, LIMIT).await.expect("range");
    assert!(missing.entries.is_empty() && !missing.more);

    // Bytes: 1 MiB documents, 4 MiB per call, yet at least one entry.
    let big = vec![b'x'; 1024 * 1024];
    for i in 0..6 {
        write(b, "t", "big", vec![(key(i), Some(big.clone()))]).await;
    }
    let page = b.range("t", "big", None, LIMIT).await.expect("range");
    assert_eq!((page.entries.len(), page.more), (4, true));
    let tiny = RangeLimit {
        entries: 1000,
        bytes: 10,
    };
    let page = b.range("t", "big", None, tiny).await.expect("range");
    assert_eq!(
        (page.entries.len(), page.more),
        (1, true),
        "the first entry always comes"
    );
    assert_eq!(walk(b, "t", "big", tiny).await.0.len(), 6);

    // Versions come with the entries and match a point read.
    let page = b
        .range(
            "t",
            "c",
            None,
            RangeLimit {
                entries: 3,
                ..LIMIT
            },
        )
        .await
        .expect("range");
    for (k, v, version) in page.entries {
        let read = b.get(&DocKey::new("t", "c", &k)).await.expect("get");
        assert_eq!((read.value, read.version), (Some(v), version));
    }
    h.stop().await;
}

async fn sequences_jump_past_client_ids_in_one_step(kind: Kind) {
    let h = Harness::start(kind).await;
    let b = h.backend.as_ref();
    assert_eq!(b.next_id("t", "s").await.expect("next"), 1);
    b.advance_sequence("t", "s", 30_000).await.expect("advance");
    assert_eq!(b.next_id("t", "s").await.expect("next"), 30_001);
    b.advance_sequence("t", "s", 5)
        .await
        .expect("advance below is a no-op");
    assert_eq!(b.next_id("t", "s").await.expect("next"), 30_002);
    b.advance_sequence("t", "fresh", 9)
        .await
        .expect("advance a new sequence");
    assert_eq!(b.next_id("t", "fresh").await.expect("next"), 10);
    assert_eq!(b.next_id("u", "s").await.expect("other namespace"), 1);
    h.stop().await;
}

/// `get_many` answers exactly what one `get` per key would, in the order
/// asked (repeats, absent and deleted documents included).
async fn get_many_reads_like_get_in_order(kind: Kind) {
    let h = Harness::start(kind).await;
    let b = h.backend.as_ref();
    write(
        b,
        "t",
        "c",
        vec![
            (key(1), Some(b"one".to_vec())),
            (key(2), Some(b"two".to_vec())),
        ],
    )
    .await;
    write(b, "t", "c", vec![(key(2), None)]).await;
    let asked = [key(3), key(1), key(2), key(1)].map(|k| DocKey::new("t", "c", &k));
    let many = b.get_many(&asked).await.expect("get_many");
    let mut one_by_one = Vec::new();
    for k in &asked {
        one_by_one.push(b.get(k).await.expect("get"));
    }
    assert_eq!(many, one_by_one);
    assert_eq!(many[1].value.as_deref(), Some(&b"one"[..]));
    assert_eq!(many[2].value, None, "deleted");
    assert!(many[2].version > 0, "a delete keeps its version");
    assert_eq!(
        (many[0].value.as_ref(), many[0].version),
        (None, 0),
        "never written"
    );
    assert!(b.get_many(&[]).await.expect("no keys").is_empty());
    h.stop().await;
}

/// Commit one unit that read `reads` (at the versions a point read gives
/// now) and writes `writes` and `adds`; it must apply.
async fn unit(
    backend: &dyn Backend,
    reads: &[&str],
    writes: Vec<(&str, Option<&[u8]>)>,
    adds: Vec<(&str, i64)>,
) {
    let mut changes = Changes::default();
    for k in reads {
        let key = DocKey::new("t", "live", k);
        let version = backend.get(&key).await.expect("get").version;
        changes.reads.push((key, version));
    }
    changes.writes = writes
        .into_iter()
        .map(|(k, v)| (DocKey::new("t", "live", k), v.map(<[u8]>::to_vec)))
        .collect();
    changes.adds = adds
        .into_iter()
        .map(|(k, delta)| (DocKey::new("t", "live", k), Add { delta, floor: 0 }))
        .collect();
    let done = backend.commit(changes).await.expect("commit");
    assert!(
        matches!(done, Commit::Applied),
        "the unit applies: {done:?}"
    );
}

/// The keys and values a range of `t/live` lists.
async fn listed(backend: &dyn Backend) -> Vec<(String, Vec<u8>)> {
    let page = backend
        .range("t", "live", None, LIMIT)
        .await
        .expect("range");
    page.entries.into_iter().map(|(k, v, _)| (k, v)).collect()
}

/// What a range lists follows every kind of write a unit makes after its
/// reads: a document rewritten after it was read live stays listed once, a
/// deleted one goes, a tombstone written again (read, so known to the
/// commit) comes back, and a counter is listed from its first addition on.
/// (Redis skips the key index's add for documents its commit found live.)
async fn ranges_follow_writes_of_documents_read_first(kind: Kind) {
    let h = Harness::start(kind).await;
    let b = h.backend.as_ref();
    let kv = |k: &str, v: &str| (k.to_owned(), v.as_bytes().to_vec());
    unit(b, &[], vec![("a", Some(b"1")), ("b", Some(b"1"))], vec![]).await;
    unit(b, &["a"], vec![("a", Some(b"2"))], vec![]).await;
    assert_eq!(listed(b).await, vec![kv("a", "2"), kv("b", "1")]);
    unit(b, &["b"], vec![("b", None)], vec![]).await;
    assert_eq!(listed(b).await, vec![kv("a", "2")], "deleted after a read");
    let tombstone = b.get(&DocKey::new("t", "live", "b")).await.expect("get");
    assert!(
        tombstone.value.is_none() && tombstone.version > 0,
        "the premise: b is a tombstone the next unit reads"
    );
    unit(b, &["b"], vec![("b", Some(b"3"))], vec![]).await;
    assert_eq!(
        listed(b).await,
        vec![kv("a", "2"), kv("b", "3")],
        "a tombstone written again is listed again"
    );
    unit(b, &["c"], vec![], vec![("c", 5)]).await;
    unit(b, &["c"], vec![], vec![("c", 2)]).await;
    assert_eq!(
        listed(b).await,
        vec![kv("a", "2"), kv("b", "3"), kv("c", "7")]
    );
    unit(b, &["a", "c"], vec![("a", None)], vec![("c", -7)]).await;
    assert_eq!(
        listed(b).await,
        vec![kv("b", "3"), kv("c", "0")],
        "a counter at zero is still a document"
    );
    h.stop().await;
}

on_both_backends!(
    ranges_follow_writes_of_documents_read_first,
    ranges_follow_key_order_skip_deletes_and_respect_caps,
    sequences_jump_past_client_ids_in_one_step,
    get_many_reads_like_get_in_order,
);

/// SQLite hands ids out of blocks reserved ahead: a clean stop gives the
/// unused rest back (the next process goes on without a gap), a crash may
/// leave a gap but never hands an id out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_ids_survive_clean_stops_and_crashes_without_repeats() {
    use sktarbucks::backend::sqlite::SqliteBackend;
    use sktarbucks::config::Synchronous;

    let dir = tempfile::tempdir().expect("tempdir");
    let open = || SqliteBackend::open(dir.path(), Synchronous::Normal).expect("sqlite opens");
    let mut handed = Vec::new();

    let first = open();
    for _ in 0..3 {
        handed.push(first.next_id("order", "orders").await.expect("next"));
    }
    assert_eq!(handed, [1, 2, 3]);
    first.close().await.expect("clean stop");
    drop(first);

    let second = open();
    let after_clean_stop = second.next_id("order", "orders").await.expect("next");
    assert_eq!(after_clean_stop, 4, "a clean stop leaves no gap");
    handed.push(after_clean_stop);
    // More than a block, then a crash: no close, the unused rest is lost.
    for _ in 0..40 {
        handed.push(second.next_id("order", "orders").await.expect("next"));
    }
    drop(second);

    let third = open();
    let after_crash = third.next_id("order", "orders").await.expect("next");
    let last = *handed.last().expect("ids were handed out");
    assert!(
        after_crash > last,
        "after a crash the next id {after_crash} must follow every id handed out (last {last})"
    );
    assert!(
        after_crash <= last + 32,
        "a crash leaves at most one block unused: {after_crash} after {last}"
    );
    handed.push(after_crash);
    assert!(
        handed.windows(2).all(|w| w[0] < w[1]),
        "ids strictly increase: {handed:?}"
    );
    third.close().await.expect("clean stop");
}
