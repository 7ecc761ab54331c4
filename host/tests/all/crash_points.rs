//! Kill the real binary at each named crash point of the commit and
//! acknowledgement paths (`SKTARBUCKS_CRASH_AT`, compiled into the test
//! build only), restart it on the same data and count the outcome: no
//! acknowledged order or cancel lost, no effect applied twice. Both backends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::binary::Host;
use crate::support::redis::{RedisServer, available};
use crate::support::{Client, eventually};

/// Stock of the one item every order takes from.
const INITIAL: u64 = 100_000;
/// How long a crash may take to come (the point is hit within seconds).
const CRASH_WITHIN: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(90);

/// Where the host keeps its state: a data directory alone, or Redis too.
struct Store {
    dir: tempfile::TempDir,
    config: sktarbucks::config::Config,
    manifest: String,
    redis: Option<RedisServer>,
}

impl Store {
    fn new(redis: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = crate::support::test_config(dir.path());
        config.redis_prefix = format!("crash{}", rand::random::<u32>());
        let redis = redis.then(RedisServer::start);
        let manifest = crate::support::manifest_text(&config);
        config.redis = redis.as_ref().map(|r| r.url.clone());
        Self {
            dir,
            config,
            manifest,
            redis,
        }
    }

    fn start(&self, crash_at: Option<&str>) -> Host {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        if let Some(redis) = &self.redis {
            args.extend(["--redis", redis.url.as_str()]);
        }
        let envs: Vec<(&str, &str)> = crash_at
            .map(|spec| vec![("SKTARBUCKS_CRASH_AT", spec)])
            .unwrap_or_default();
        Host::start_env(self.dir.path(), &self.manifest, &args, &envs)
    }
}

/// What the clients were told before the crash.
#[derive(Default)]
struct Acknowledged {
    /// Order id → qty of every order answered 201.
    orders: HashMap<u64, u64>,
    /// Orders whose cancel was answered 200.
    canceled: HashSet<u64>,
    /// Requests that got no answer (the process died under them).
    unanswered: usize,
}

/// Place (and cancel every third) order from four clients until the host
/// dies under them; a bounded number of rounds so a crash point that never
/// fires fails the test instead of hanging it.
async fn order_until_it_dies(c: &Client) -> Acknowledged {
    let seen = Arc::new(Mutex::new(Acknowledged::default()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (c, seen) = (c.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                for i in 0..400u64 {
                    let qty = 1 + i % 3;
                    let body = json!({"custNm": format!("w{w}-{i}"), "cafeId": 1, "qty": qty});
                    let id = match c.try_send("POST", "/orders", Some(body)).await {
                        Ok((201, b)) => b["id"].as_u64().expect("a placed order has an id"),
                        Ok((s, b)) => {
                            assert!(s < 500 || s == 503, "unexpected answer {s}: {b}");
                            continue;
                        }
                        Err(_) => break,
                    };
                    seen.lock().expect("lock").orders.insert(id, qty);
                    if i % 3 == 0 {
                        match c
                            .try_send("POST", &format!("/orders/{id}/cancel"), None)
                            .await
                        {
                            Ok((200, _)) => {
                                seen.lock().expect("lock").canceled.insert(id);
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                }
                seen.lock().expect("lock").unanswered += 1;
            })
        })
        .collect();
    for w in workers {
        w.await.expect("client task");
    }
    Arc::try_unwrap(seen)
        .ok()
        .expect("every client finished")
        .into_inner()
        .expect("lock")
}

/// Kill at `point` on its `pass`-th hit while orders flow, restart, count.
async fn orders_survive_a_crash_at(point: &str, pass: u32, redis: bool) {
    let store = Store::new(redis);
    let spec = format!("{point}@{pass}");
    let mut host = store.start(Some(&spec));
    let c = host.client.clone();
    c.seed_item(1, INITIAL).await;
    let acked = order_until_it_dies(&c).await;
    let status = host.wait_exit(CRASH_WITHIN);
    // Premise: the process died at the point under test, with work done.
    assert!(
        status.is_some_and(|s| !s.success()),
        "the host must die at {spec}: {status:?}\n{}",
        host.log_text()
    );
    assert!(
        host.log_text()
            .contains(&format!("crash point {point} reached")),
        "the crash came from {point}:\n{}",
        host.log_text()
    );
    assert!(
        !acked.orders.is_empty(),
        "orders were acknowledged before the crash"
    );
    drop(host);

    let host = store.start(None);
    let c = host.client.clone();
    let (orders, pages, productions) = eventually("every order settled", SETTLE, || async {
        let orders = c.get_all("/orders?limit=1000").await.items;
        let pages = c.get_all("/myPages?limit=1000").await.items;
        let productions = c.get_all("/productions?limit=1000").await.items;
        // Every subscriber done, cafe's releases included (an order.canceled
        // a dead host held is taken over only when its heartbeat expires).
        let drained = c.pending_events().await == Some(0);
        let settled = drained
            && orders.iter().all(|o| o["status"] != "REQUESTED")
            && pages.len() == orders.len()
            && productions.len() == orders.len()
            && pages.iter().all(|p| {
                orders
                    .iter()
                    .any(|o| o["id"] == p["orderId"] && o["status"] == p["status"])
            });
        settled.then_some((orders, pages, productions))
    })
    .await;

    let by_id: HashMap<u64, &Value> = orders
        .iter()
        .filter_map(|o| Some((o["id"].as_u64()?, o)))
        .collect();
    let lost_orders = acked
        .orders
        .iter()
        .filter(|(id, qty)| {
            by_id
                .get(id)
                .is_none_or(|o| o["qty"].as_u64() != Some(**qty))
        })
        .count();
    let lost_cancels = acked
        .canceled
        .iter()
        .filter(|id| by_id.get(id).is_none_or(|o| o["status"] != "CANCELED"))
        .count();
    let open: u64 = orders
        .iter()
        .filter(|o| o["status"] == "ORDERED")
        .filter_map(|o| o["qty"].as_u64())
        .sum();
    let (_, cafe) = c.get("/cafes/1").await;
    let pcnt = cafe["pcnt"].as_u64().expect("pcnt");
    let duplicated_productions = productions.len()
        - productions
            .iter()
            .map(|p| p["orderId"].to_string())
            .collect::<HashSet<_>>()
            .len();
    let duplicated_pages = pages.len()
        - pages
            .iter()
            .map(|p| p["orderId"].to_string())
            .collect::<HashSet<_>>()
            .len();
    eprintln!(
        "{spec} ({}): {} orders acknowledged, {} cancels, {} requests unanswered, {} orders after restart; \
         lost {lost_orders} orders, {lost_cancels} cancels; stock {pcnt} (open {open}); \
         duplicated {duplicated_productions} productions, {duplicated_pages} pages",
        if redis { "redis" } else { "sqlite" },
        acked.orders.len(),
        acked.canceled.len(),
        acked.unanswered,
        orders.len(),
    );
    assert_eq!(lost_orders, 0, "acknowledged orders lost");
    assert_eq!(lost_cancels, 0, "acknowledged cancels lost");
    assert_eq!(
        pcnt,
        INITIAL - open,
        "every reservation and release applied exactly once"
    );
    assert_eq!(duplicated_productions, 0);
    assert_eq!(duplicated_pages, 0);
}

/// Dead-letter a poison event and die while doing it; after the restart it
/// is dead-lettered exactly once, and a later event is applied exactly once.
async fn a_dead_letter_survives_a_crash_while_it_is_written(redis: bool) {
    let store = Store::new(redis);
    let mut host = store.start(Some("dead-letter@1"));
    let c = host.client.clone();
    let (s, b) = c
        .raw(
            "POST",
            "/faulty/forge?topic=faulty.poison&key=p",
            Some("poison"),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = c
        .raw(
            "POST",
            "/faulty/forge?topic=faulty.happened&key=after",
            Some("fine"),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let status = host.wait_exit(CRASH_WITHIN);
    assert!(
        status.is_some_and(|s| !s.success()),
        "the host must die while dead-lettering: {status:?}\n{}",
        host.log_text()
    );
    assert!(
        host.log_text().contains("crash point dead-letter reached"),
        "{}",
        host.log_text()
    );
    drop(host);

    let host = store.start(None);
    let c = host.client.clone();
    let backend = sktarbucks::app::open_backend(&store.config)
        .await
        .expect("the backend opens beside the host");
    let letters = eventually(
        "the poison dead-lettered, nothing pending",
        SETTLE,
        || async {
            let (_, counts) = c.get("/faulty/counts").await;
            let drained = c.pending_events().await == Some(0);
            let letters = backend.dead_letters().await.ok()?;
            (counts["after"] == json!(1) && drained && !letters.is_empty()).then_some(letters)
        },
    )
    .await;
    eprintln!(
        "dead-letter ({}): {} dead letters after the restart",
        if redis { "redis" } else { "sqlite" },
        letters.len()
    );
    assert_eq!(letters.len(), 1, "exactly one dead letter: {letters:?}");
    let (_, counts) = c.get("/faulty/counts").await;
    assert_eq!(counts, json!({"after": 1}), "no effect twice, poison none");
}

macro_rules! crash_tests {
    ($($name:ident: $point:expr, $pass:expr, $redis:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            if $redis && !available() {
                return;
            }
            orders_survive_a_crash_at($point, $pass, $redis).await;
        }
    )*};
}

crash_tests! {
    sqlite_before_commit: "before-commit", 60, false;
    sqlite_after_commit: "after-commit", 60, false;
    sqlite_after_handler: "after-handler", 120, false;
    redis_before_commit: "before-commit", 60, true;
    redis_after_commit: "after-commit", 60, true;
    redis_after_handler: "after-handler", 120, true;
    redis_script_reply: "redis-reply", 150, true;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_while_dead_lettering() {
    a_dead_letter_survives_a_crash_while_it_is_written(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_while_dead_lettering() {
    if !available() {
        return;
    }
    a_dead_letter_survives_a_crash_while_it_is_written(true).await;
}
