//! Data growth and cross-context consistency, against the real binary on
//! SQLite and on Redis: tens of thousands of maximum-length orders paged
//! through every list route with bounded memory; a popular item deleted and
//! its orders force-cancelled in bounded chunks across a SIGKILL; cancels
//! racing deletes ending in one final state; client-chosen ids far ahead of
//! the sequence.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::support::binary::Host;
use crate::support::redis::{RedisServer, available};
use crate::support::{Client, eventually, manifest_text, rss_kib, test_config};

/// Orders of the growth test (the "busy week").
const ORDERS: usize = 20_000;
/// Concurrent clients when loading data.
const CLIENTS: usize = 32;
/// Waiting for a pipeline of tens of thousands of events.
const BULK_PATIENCE: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Redis,
}

/// One or more hosts over one state: the data dir (SQLite) or Redis.
struct Deployment {
    dir: tempfile::TempDir,
    redis: Option<RedisServer>,
    manifest: String,
    args: Vec<String>,
}

impl Deployment {
    fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        match backend {
            Backend::Sqlite => Self {
                manifest: manifest_text(&config),
                args: vec!["--listen".into(), "127.0.0.1:0".into()],
                dir,
                redis: None,
            },
            Backend::Redis => {
                let redis = RedisServer::start_bulk();
                config.redis_prefix = format!("growth{}", std::process::id());
                Self {
                    manifest: manifest_text(&config),
                    args: vec![
                        "--listen".into(),
                        "127.0.0.1:0".into(),
                        "--redis".into(),
                        redis.url.clone(),
                    ],
                    dir,
                    redis: Some(redis),
                }
            }
        }
    }

    /// A host in its own directory (several may run at once).
    fn host(&self, name: &str) -> Host {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("host dir");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Host::start(&dir, &self.manifest, &args)
    }

    fn sqlite_db(&self) -> std::path::PathBuf {
        self.dir.path().join("sktarbucks.db")
    }

    fn redis_prefix(&self) -> Option<String> {
        let config = sktarbucks::config::Config::parse(&self.manifest, self.dir.path()).ok()?;
        Some(config.redis_prefix)
    }

    /// Events appended on `topic` (SQLite log or Redis stream).
    async fn count_events(&self, topic: &str) -> u64 {
        match &self.redis {
            None => sqlite_count(
                &self.sqlite_db(),
                "SELECT count(*) FROM events WHERE topic = ?1",
                topic,
            ),
            Some(redis) => {
                let prefix = self.redis_prefix().expect("prefix");
                redis_cmd(redis, &["XLEN", &format!("{prefix}:stream:{topic}")]).await
            }
        }
    }

    /// Dead letters waiting for an operator.
    async fn dead_letters(&self) -> u64 {
        match &self.redis {
            None => sqlite_count(
                &self.sqlite_db(),
                "SELECT count(*) FROM dead_letters WHERE replayed = 0 AND ?1 = ?1",
                "",
            ),
            Some(redis) => {
                let prefix = self.redis_prefix().expect("prefix");
                redis_cmd(redis, &["XLEN", &format!("{prefix}:dead")]).await
            }
        }
    }
}

fn sqlite_count(db: &Path, sql: &str, arg: &str) -> u64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the host's database read-only");
    conn.query_row(sql, [arg], |r| r.get(0))
        .expect("count query")
}

async fn redis_cmd(redis: &RedisServer, args: &[&str]) -> u64 {
    let mut conn = redis.conn().await;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.expect("redis command")
}

/// A 200-character field (the maximum) of 4-byte characters, ending in `tag`.
fn longest(tag: char) -> String {
    let mut s = "🙂".repeat(199);
    s.push(tag);
    s
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Wait until no subscriber has undelivered events.
async fn settled(c: &Client) {
    eventually("every subscriber's lag is 0", BULK_PATIENCE, || async {
        let (status, body) = c.get("/health/ready").await;
        let lag = body["lag"].as_object()?;
        (status == 200 && !lag.is_empty() && lag.values().all(|v| v == 0)).then_some(())
    })
    .await;
}

async fn create_item(c: &Client, body: Value) -> u64 {
    let (status, item) = c.send("POST", "/cafes", body).await;
    assert_eq!(status, 201, "{item}");
    item["cafeId"].as_u64().expect("cafeId")
}

/// Place orders concurrently; returns the ids in placement order.
async fn place(c: &Client, bodies: Vec<Value>) -> Vec<u64> {
    futures::stream::iter(bodies)
        .map(|body| {
            let c = c.clone();
            async move {
                let (status, order) = c.send("POST", "/orders", body).await;
                assert_eq!(status, 201, "{order}");
                order["id"].as_u64().expect("order id")
            }
        })
        .buffered(CLIENTS)
        .collect()
        .await
}

/// The ids of a paged listing, asserting ascending order and no repeats.
fn ids_of(items: &[Value], field: &str) -> Vec<u64> {
    let ids: Vec<u64> = items
        .iter()
        .map(|i| i[field].as_u64().expect("id field"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "pages are in ascending {field} order with no item twice"
    );
    ids
}

async fn growth_then_mass_delete(backend: Backend) {
    let deployment = Deployment::new(backend);
    let mut host = deployment.host("a");
    let c = host.client.clone();

    let popular = create_item(
        &c,
        json!({"cafeNm": longest('p'), "chkDate": longest('d'), "pcnt": 1_000_000}),
    )
    .await;
    let other = create_item(
        &c,
        json!({"cafeNm": "Tea", "chkDate": "20210713", "pcnt": 10}),
    )
    .await;
    let customers: Vec<String> = ['a', 'b', 'c', 'd'].into_iter().map(longest).collect();
    let bodies: Vec<Value> = (0..ORDERS)
        .map(|i| json!({"custNm": customers[i % 4], "cafeId": popular}))
        .chain((0..3).map(|_| json!({"custNm": "Kim", "cafeId": other})))
        .collect();
    let placed = place(&c, bodies).await;
    let mut popular_ids: Vec<u64> = placed[..ORDERS].to_vec();
    popular_ids.sort_unstable();
    let mut all_ids = placed.clone();
    all_ids.sort_unstable();
    settled(&c).await;
    if backend == Backend::Sqlite {
        // Checkpoints keep up and the WAL restarts: it stays near the
        // autocheckpoint size (1 000 pages) instead of holding every frame
        // written since the start (over a GiB for this load when the WAL
        // was never reset).
        let db = std::fs::metadata(deployment.sqlite_db()).map_or(0, |m| m.len());
        let wal_path = deployment.sqlite_db().with_extension("db-wal");
        let wal = std::fs::metadata(&wal_path).map_or(0, |m| m.len());
        assert!(
            db > 16 * 1024 * 1024,
            "the premise: the load wrote well past a few WAL restarts (database {db} bytes)"
        );
        assert!(
            wal < 64 * 1024 * 1024,
            "the WAL grew to {wal} bytes after {ORDERS} orders (database {db} bytes)"
        );
    }

    // Every list route answers a bounded page; paging returns each once.
    let rss_before = rss_kib(host.pid());
    let orders = c.get_all("/orders").await;
    assert_eq!(ids_of(&orders.items, "id"), all_ids);
    assert_eq!(orders.largest_page_items, 100, "default page size");
    assert!(
        orders.largest_page_bytes < 512 * 1024,
        "{}",
        orders.largest_page_bytes
    );
    assert!(orders.items.iter().all(|o| o["status"] == "ORDERED"));
    let big = c.get_all("/orders?limit=1000").await;
    assert_eq!(ids_of(&big.items, "id"), all_ids);
    assert_eq!(
        (big.pages, big.largest_page_items),
        (ORDERS / 1000 + 1, 1000)
    );
    let by_cafe = c
        .get_all(&format!("/orders?cafeId={popular}&limit=1000"))
        .await;
    assert_eq!(ids_of(&by_cafe.items, "id"), popular_ids);
    let by_customer = c
        .get_all(&format!(
            "/orders?custNm={}&limit=500",
            encode(&customers[1])
        ))
        .await;
    assert_eq!(by_customer.items.len(), ORDERS / 4);
    assert!(
        by_customer
            .items
            .iter()
            .all(|o| o["custNm"] == customers[1].as_str())
    );
    ids_of(&by_customer.items, "id");
    let ordered = c.get_all("/orders?status=ordered&limit=1000").await;
    assert_eq!(ids_of(&ordered.items, "id"), all_ids);
    let productions = c.get_all("/productions?limit=1000").await;
    assert_eq!(ids_of(&productions.items, "orderId"), all_ids);
    let registered = c
        .get_all(&format!(
            "/productions?cafeId={popular}&status=REGISTERED&limit=1000"
        ))
        .await;
    assert_eq!(ids_of(&registered.items, "orderId"), popular_ids);
    let pages = c.get_all("/myPages").await;
    assert_eq!(ids_of(&pages.items, "orderId"), all_ids);
    let mine = c
        .get_all(&format!(
            "/myPages?custNm={}&limit=1000",
            encode(&customers[2])
        ))
        .await;
    assert_eq!(mine.items.len(), ORDERS / 4);
    let cafes = c.get_all("/cafes?limit=1").await;
    assert_eq!(ids_of(&cafes.items, "cafeId"), vec![popular, other]);
    let rss_after = rss_kib(host.pid());
    eprintln!("host RSS before paging {rss_before} KiB, after {rss_after} KiB");
    assert!(
        rss_after < rss_before + 256 * 1024,
        "paging through {ORDERS} orders grew the host from {rss_before} to {rss_after} KiB"
    );
    for bad in [
        "/orders?limit=0",
        "/orders?limit=1001",
        "/productions?after=x",
        "/myPages?limit=-1",
    ] {
        let (status, body) = c.get(bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_query")),
            "{bad}: {body}"
        );
    }

    // Delete the popular item, SIGKILL the host while the chunked
    // force-cancel is halfway, restart: every order changes exactly once.
    let (status, body) = c
        .send("DELETE", &format!("/cafes/{popular}"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let first = popular_ids[0];
    let last = *popular_ids.last().expect("orders");
    eventually("the sweep has started", BULK_PATIENCE, || async {
        let (_, o) = c.get(&format!("/orders/{first}")).await;
        (o["status"] == "FORCE_CANCELED").then_some(())
    })
    .await;
    let (_, last_order) = c.get(&format!("/orders/{last}")).await;
    host.kill();
    // The premise: the kill interrupted the sweep.
    assert_ne!(
        last_order["status"], "FORCE_CANCELED",
        "the sweep was still running"
    );
    let done_at_kill = deployment.count_events("order.force-canceled").await;
    eprintln!("force-cancelled before the kill: {done_at_kill} of {ORDERS}");
    assert!(
        done_at_kill > 0 && done_at_kill < ORDERS as u64,
        "{done_at_kill}"
    );
    let restarted = deployment.host("b");
    let c = restarted.client.clone();
    settled(&c).await;
    let orders = c.get_all("/orders?limit=1000").await;
    assert_eq!(ids_of(&orders.items, "id"), all_ids);
    for o in &orders.items {
        let id = o["id"].as_u64().expect("id");
        if o["cafeId"] == popular {
            assert_eq!(
                (o["status"].as_str(), o["version"].as_u64()),
                (Some("FORCE_CANCELED"), Some(3)),
                "order {id} was changed exactly once more after ORDERED"
            );
        } else {
            assert_eq!(
                o["status"], "ORDERED",
                "order {id} of another item is untouched"
            );
        }
    }
    let productions = c
        .get_all(&format!("/productions?cafeId={popular}&limit=1000"))
        .await;
    assert_eq!(ids_of(&productions.items, "orderId"), popular_ids);
    assert!(
        productions
            .items
            .iter()
            .all(|p| p["status"] == "FORCE_CANCELED" && p["version"] == 2)
    );
    let rows = c.get_all("/myPages?limit=1000").await;
    for row in rows.items.iter().filter(|r| r["cafeId"] == popular) {
        assert_eq!(
            (row["status"].as_str(), row["productionStatus"].as_str()),
            (Some("FORCE_CANCELED"), Some("FORCE_CANCELED")),
            "{row}"
        );
    }
    assert_eq!(
        rows.items.iter().filter(|r| r["cafeId"] == popular).count(),
        ORDERS
    );
    assert_eq!(
        deployment.count_events("order.force-canceled").await,
        ORDERS as u64,
        "one force-cancel event per order, none repeated across the kill"
    );
    assert_eq!(
        deployment.dead_letters().await,
        0,
        "nothing was dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_orders_page_and_force_cancel_on_sqlite() {
    growth_then_mass_delete(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_orders_page_and_force_cancel_on_redis() {
    if available() {
        growth_then_mass_delete(Backend::Redis).await;
    }
}

/// Cancels racing deletes, 200 times: order, production and mypage end in
/// one final state every time.
async fn cancel_delete_race(backend: Backend) {
    const TRIALS: u64 = 200;
    let deployment = Deployment::new(backend);
    let first = deployment.host("a");
    // On Redis a second host takes half the requests and half the events.
    let second = (backend == Backend::Redis).then(|| deployment.host("b"));
    let a = first.client.clone();
    let b = second
        .as_ref()
        .map_or_else(|| a.clone(), |h| h.client.clone());
    let mut trials = Vec::new();
    for i in 0..TRIALS {
        let item = create_item(
            &a,
            json!({"cafeNm": format!("item {i}"), "chkDate": "20210713", "pcnt": 5}),
        )
        .await;
        let order = place(&a, vec![json!({"custNm": format!("c{i}"), "cafeId": item})]).await[0];
        trials.push((i, item, order));
    }
    let outcomes: Vec<(u16, u16)> = futures::stream::iter(trials.clone())
        .map(|(i, item, order)| {
            let (a, b) = (a.clone(), b.clone());
            async move {
                // Spread the two requests over a few milliseconds either way.
                let (d_delete, d_cancel) = if i % 2 == 0 { (0, i % 7) } else { (i % 7, 0) };
                let delete = async {
                    tokio::time::sleep(Duration::from_millis(d_delete)).await;
                    a.send("DELETE", &format!("/cafes/{item}"), json!({}))
                        .await
                        .0
                };
                let cancel = async {
                    tokio::time::sleep(Duration::from_millis(d_cancel)).await;
                    b.send(
                        "PUT",
                        &format!("/orders/{order}"),
                        json!({"custNm": format!("c{i}"), "cafeId": item, "status": "CANCELED"}),
                    )
                    .await
                    .0
                };
                tokio::join!(delete, cancel)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (delete, cancel) in &outcomes {
        assert_eq!(*delete, 200);
        assert!(*cancel == 200 || *cancel == 409, "cancel answered {cancel}");
    }
    settled(&a).await;
    let mut finals: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (_, _, order) in &trials {
        let state = eventually("the order's three views agree", BULK_PATIENCE, || async {
            let (_, o) = a.get(&format!("/orders/{order}")).await;
            let (_, p) = a.get(&format!("/productions/{order}")).await;
            let (_, m) = b.get(&format!("/myPages/{order}")).await;
            let status = o["status"].as_str()?.to_owned();
            let done = matches!(status.as_str(), "CANCELED" | "FORCE_CANCELED");
            let agree = p["status"] == status.as_str()
                && m["status"] == status.as_str()
                && m["productionStatus"] == status.as_str();
            (done && agree).then_some(status)
        })
        .await;
        seen.insert(*order);
        *finals
            .entry(if state == "CANCELED" {
                "CANCELED"
            } else {
                "FORCE_CANCELED"
            })
            .or_default() += 1;
    }
    eprintln!("cancel/delete race outcomes: {finals:?}");
    assert_eq!(seen.len() as u64, TRIALS);
    assert_eq!(deployment.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancels_racing_deletes_end_in_one_final_state_on_sqlite() {
    cancel_delete_race(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancels_racing_deletes_end_in_one_final_state_on_redis() {
    if available() {
        cancel_delete_race(Backend::Redis).await;
    }
}

/// 30,000 client-chosen ids ahead of the sequence: an id-less POST takes
/// the next id at once (no loop over used ids), and `/cafes` pages them all.
async fn ids_ahead(backend: Backend) {
    const AHEAD: u64 = 30_000;
    let deployment = Deployment::new(backend);
    let host = deployment.host("a");
    let c = host.client.clone();
    let created: Vec<u16> = futures::stream::iter(1..=AHEAD)
        .map(|id| {
            let c = c.clone();
            async move {
                let body = json!({"cafeId": id.to_string(), "cafeNm": "coffee", "chkDate": "210713", "pcnt": 20});
                c.send("POST", "/cafes", body).await.0
            }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    assert!(created.iter().all(|s| *s == 201));
    let (status, item) = c
        .send(
            "POST",
            "/cafes",
            json!({"cafeNm": "tea", "chkDate": "210713", "pcnt": 1}),
        )
        .await;
    assert_eq!(
        (status, item["cafeId"].as_u64()),
        (201, Some(AHEAD + 1)),
        "{item}"
    );
    let cafes = c.get_all("/cafes?limit=1000").await;
    assert_eq!(
        ids_of(&cafes.items, "cafeId"),
        (1..=AHEAD + 1).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_chosen_by_clients_far_ahead_do_not_slow_an_id_less_post_on_sqlite() {
    ids_ahead(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_chosen_by_clients_far_ahead_do_not_slow_an_id_less_post_on_redis() {
    if available() {
        ids_ahead(Backend::Redis).await;
    }
}
