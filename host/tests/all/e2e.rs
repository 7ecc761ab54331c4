//! End-to-end: the real `sktarbucks` binary over real HTTP, with the
//! original system's own requests; then a SIGKILL with events in flight.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::binary::Host;
use crate::support::{Client, eventually, manifest};

const PATIENCE: Duration = Duration::from_secs(20);

async fn field_is(client: &Client, path: &str, field: &str, want: &str) {
    let what = format!("{path} {field} == {want}");
    eventually(&what, PATIENCE, || async {
        let (status, body) = client.get(path).await;
        (status == 200 && body[field] == want).then_some(())
    })
    .await;
}

/// All 11 steps of the scenario, each over HTTP, with the seed's verbatim requests.
#[tokio::test(flavor = "multi_thread")]
async fn the_eleven_step_scenario_runs_over_http_against_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = Host::start(
        dir.path(),
        &manifest(dir.path()),
        &["--listen", "127.0.0.1:0"],
    );
    eleven_steps(&host.client).await;
    // Premise of the contract check: the answers were checked against
    // /openapi.json, not skipped.
    let checked = host.client.contract().map_or(0, |c| c.checked());
    assert!(
        checked >= 15,
        "responses checked against /openapi.json: {checked}"
    );
}

/// The scenario itself, shared with the Redis variant.
pub async fn eleven_steps(c: &Client) {
    // 1. The owner registers menu items (the seed's body, id as a string).
    let (s, b) = c
        .raw(
            "POST",
            "/cafes",
            Some(r#"{"cafeId":"99","cafeNm":"coffee","chkDate":"210713","pcnt":20}"#),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = c
        .raw(
            "POST",
            "/cafes",
            Some(r#"{"cafeId":"5","cafeNm":"Coldbrew","chkDate":"20210713","pcnt":3}"#),
        )
        .await;
    assert_eq!(s, 201, "{b}");

    // 2. Customers order (the seed's body, twice: the seed cancels order 2).
    let seed_order = r#"{"custNm":"Hwang","cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713"}"#;
    let (s, first) = c.raw("POST", "/orders", Some(seed_order)).await;
    assert_eq!(s, 201, "{first}");
    let (s, second) = c.raw("POST", "/orders", Some(seed_order)).await;
    assert_eq!(s, 201, "{second}");
    assert_eq!(
        (first["id"].clone(), second["id"].clone()),
        (json!(1), json!(2))
    );

    // 3. Stock went down synchronously; a sold-out order is refused.
    let (_, cafe) = c.get("/cafes/5").await;
    assert_eq!(cafe["pcnt"], 1, "{cafe}");
    let (s, b) = c
        .raw(
            "POST",
            "/orders",
            Some(r#"{"custNm":"Kim","cafeId":5,"qty":2}"#),
        )
        .await;
    assert_eq!((s, b["error"].clone()), (409, json!("sold_out")), "{b}");

    // 4. + 5. Production registers the orders; the orders become ORDERED.
    field_is(c, "/productions/1", "status", "REGISTERED").await;
    field_is(c, "/orders/1", "status", "ORDERED").await;
    field_is(c, "/orders/2", "status", "ORDERED").await;

    // 6. The seed's cancel.
    let (s, b) = c
        .raw("PUT", "/orders/2", Some(r#"{"custNm":"Hwang","cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713","status":"CANCELED"}"#))
        .await;
    assert_eq!((s, b["status"].clone()), (200, json!("CANCELED")), "{b}");

    // 7. Stock comes back asynchronously; 8. production is canceled.
    field_is(c, "/productions/2", "status", "CANCELED").await;
    eventually("stock restored", PATIENCE, || async {
        let (_, cafe) = c.get("/cafes/5").await;
        (cafe["pcnt"] == 2).then_some(())
    })
    .await;

    // 9. The owner deletes the item; 10. its production and order are force-canceled.
    let (s, b) = c.raw("DELETE", "/cafes/5", None).await;
    assert_eq!(s, 200, "{b}");
    field_is(c, "/productions/1", "status", "FORCE_CANCELED").await;
    field_is(c, "/orders/1", "status", "FORCE_CANCELED").await;
    let (_, canceled) = c.get("/orders/2").await;
    assert_eq!(
        canceled["status"], "CANCELED",
        "a canceled order stays canceled"
    );

    // 11. The customer's page shows each order's progress.
    field_is(c, "/myPages/1", "status", "FORCE_CANCELED").await;
    field_is(c, "/myPages/2", "status", "CANCELED").await;
    let (s, pages) = c.get("/myPages?custNm=Hwang").await;
    assert_eq!(s, 200);
    assert_eq!(pages.as_array().map(Vec::len), Some(2), "{pages}");
    let (s, lists) = c.get("/cafes").await;
    assert_eq!(
        (s, lists.as_array().map(Vec::len)),
        (200, Some(1)),
        "{lists}"
    );
    let (s, b) = c.get("/orders/999").await;
    assert_eq!(s, 404, "{b}");
}

/// Place `n` orders of 2 cups of item 1 at once (customers `{prefix}-{i}`);
/// their ids, each answer asserted 201.
async fn order_burst(c: &Client, prefix: &str, n: usize) -> Vec<u64> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let c = c.clone();
            let name = format!("{prefix}-{i}");
            tokio::spawn(async move {
                c.send(
                    "POST",
                    "/orders",
                    json!({"custNm": name, "cafeId": 1, "qty": 2}),
                )
                .await
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        let (s, b) = t.await.expect("order task");
        assert_eq!(s, 201, "{b}");
        ids.push(b["id"].as_u64().expect("id"));
    }
    ids
}

/// SIGKILL with undelivered events, restart on the same data directory:
/// every event's effect appears exactly once (no loss, no duplicate).
#[tokio::test(flavor = "multi_thread")]
async fn a_host_killed_mid_stream_applies_every_event_exactly_once_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Durable commits make dispatch slow enough that the kill lands mid-stream.
    let text = {
        let mut config = crate::support::test_config(dir.path());
        config.sqlite.synchronous = sktarbucks::config::Synchronous::Full;
        crate::support::manifest_text(&config)
    };
    let mut host = Host::start(dir.path(), &text, &["--listen", "127.0.0.1:0"]);
    let c = host.client.clone();
    c.seed_item(1, 1000).await;
    let mut ids = Vec::new();
    for chunk in 0..6 {
        ids.extend(order_burst(&c, &format!("c{chunk}"), 10).await);
    }
    let canceled: Vec<u64> = ids.iter().copied().step_by(3).collect();
    for id in &canceled {
        let (s, b) = c.raw("POST", &format!("/orders/{id}/cancel"), None).await;
        assert_eq!(s, 200, "{b}");
    }
    // Dispatch keeps up with a small burst in milliseconds: add bursts of
    // orders until a lag is seen, and kill right then.
    let mut ready = Value::Null;
    let mut pending = 0;
    // (At most 20 bursts of 10 × 2 cups: stock 1,000 cannot run out.)
    for burst in 0..20 {
        ids.extend(order_burst(&c, &format!("b{burst}"), 10).await);
        (_, ready) = c.get("/health/ready").await;
        pending = ready["lag"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        if pending > 0 {
            break;
        }
    }
    // Dispatch can catch up within the moment between that read and the
    // kill, so one event is made certain to be in flight: the test guest's
    // handler busy-waits 400 ms on it.
    let (s, b) = c
        .raw("POST", "/faulty/write?key=slow", Some("sleep:400"))
        .await;
    assert_eq!(s, 200, "{b}");
    host.kill();
    // Premise: events were still undelivered when the host died. The lag
    // read right before the kill, and the log itself after it (a killed
    // host delivers nothing more, so this is what the restart must finish).
    let undelivered_at_kill: i64 = {
        let db = rusqlite::Connection::open(dir.path().join("sktarbucks.db")).expect("db opens");
        db.query_row(
            "SELECT count(*) FROM events e JOIN topic_offsets o
               ON o.topic = e.topic WHERE e.seq > o.seq",
            [],
            |r| r.get(0),
        )
        .expect("undelivered count")
    };
    eprintln!(
        "killed with {pending} undelivered deliveries pending ({undelivered_at_kill} in the log after the kill): {}",
        ready["lag"]
    );
    assert!(
        pending > 0,
        "events must be pending at the kill: {}",
        ready["lag"]
    );
    assert!(
        undelivered_at_kill > 0,
        "the killed host left undelivered events in the log"
    );

    let host = Host::start(dir.path(), &text, &["--listen", "127.0.0.1:0"]);
    let c = host.client.clone();
    let kept = ids.len() - canceled.len();
    eventually("every order settled", Duration::from_secs(60), || async {
        let orders = c.get_all("/orders?limit=1000").await.items;
        let ordered = orders.iter().filter(|o| o["status"] == "ORDERED").count();
        let cancel = orders.iter().filter(|o| o["status"] == "CANCELED").count();
        (orders.len() == ids.len() && ordered == kept && cancel == canceled.len()).then_some(())
    })
    .await;
    eventually("stock settled", Duration::from_secs(60), || async {
        let (_, cafe) = c.get("/cafes/1").await;
        (cafe["pcnt"] == json!(1000 - 2 * kept)).then_some(())
    })
    .await;
    eventually(
        "productions and pages settled",
        Duration::from_secs(60),
        || async {
            let (_, prods) = c.get("/productions?limit=1000").await;
            let (_, pages) = c.get("/myPages?limit=1000").await;
            let prods = prods.as_array()?.clone();
            let pages = pages.as_array()?.clone();
            let prod_canceled = prods.iter().filter(|p| p["status"] == "CANCELED").count();
            let page_canceled = pages.iter().filter(|p| p["status"] == "CANCELED").count();
            (prods.len() == ids.len()
                && prod_canceled == canceled.len()
                && pages.len() == ids.len()
                && page_canceled == canceled.len())
            .then_some(())
        },
    )
    .await;
    // The states above can settle before a subscriber's last no-op events
    // (mypage's production.* updates) are through: wait for the log itself.
    eventually(
        "every subscriber drained",
        Duration::from_secs(60),
        || async { (c.pending_events().await == Some(0)).then_some(()) },
    )
    .await;
    // Exactly once: count the effects' own events in the log.
    let db = rusqlite::Connection::open(dir.path().join("sktarbucks.db")).expect("db opens");
    let mut per_key: HashMap<(String, String), u32> = HashMap::new();
    let mut released_orders: HashMap<String, u32> = HashMap::new();
    let mut stmt = db
        .prepare("SELECT topic, key, payload FROM events")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .expect("query");
    for row in rows {
        let (topic, key, payload) = row.expect("row");
        if topic == "cafe.stock-released" {
            let payload: Value = serde_json::from_slice(&payload).expect("json payload");
            *released_orders
                .entry(payload["orderId"].to_string())
                .or_default() += 1;
        } else if topic.starts_with("order.") || topic.starts_with("production.") {
            *per_key.entry((topic, key)).or_default() += 1;
        }
    }
    for ((topic, key), n) in &per_key {
        assert_eq!(*n, 1, "{topic} for {key} appeared {n} times");
    }
    assert_eq!(
        released_orders.len(),
        canceled.len(),
        "each cancel released stock"
    );
    assert!(
        released_orders.values().all(|n| *n == 1),
        "stock released twice: {released_orders:?}"
    );
}

/// SIGTERM drains: an in-flight request finishes, then the process exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish_then_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut host = Host::start_admin(
        dir.path(),
        &manifest(dir.path()),
        &["--listen", "127.0.0.1:0"],
    );
    let slow = {
        let c = host.client.clone();
        tokio::spawn(async move { c.get("/faulty/sleep?ms=400").await })
    };
    // Wait until the request is running in faulty (the admin listing
    // counts invocations in flight), then signal.
    let admin = host.admin.clone().expect("admin listener");
    let http = reqwest::Client::new();
    eventually("the slow request in flight", PATIENCE, || async {
        let listing: Value = http
            .get(format!("{admin}/admin/components"))
            .bearer_auth(crate::support::binary::ADMIN_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let faulty = listing["components"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == "faulty")?
            .clone();
        (faulty["inFlight"] == 1).then_some(())
    })
    .await;
    assert!(!slow.is_finished(), "the request is in flight at SIGTERM");
    let status = tokio::task::block_in_place(|| host.terminate());
    let (s, body) = slow.await.expect("slow request task");
    assert_eq!(s, 200, "the in-flight request completed: {body}");
    assert!(
        status.success(),
        "exit status {status}\n{}",
        host.log_text()
    );
}

/// The dead-letter CLI lists a poisoned event with its error and replays it.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_and_replayed_from_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = manifest(dir.path());
    let host = Host::start(dir.path(), &text, &["--listen", "127.0.0.1:0"]);
    let (s, _) = host
        .client
        .raw("POST", "/faulty/write?key=p", Some("poison"))
        .await;
    assert_eq!(s, 200);
    let config = dir.path().join("sktarbucks.toml");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sktarbucks"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("cli runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let letters: Vec<Value> = eventually("a dead letter", PATIENCE, || async {
        let (ok, out) = cli(&["dead-letters"]);
        let letters: Vec<Value> = serde_json::from_str(&out).ok()?;
        (ok && !letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters[0]["topic"], "faulty.happened");
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("poison pill"),
        "{letters:?}"
    );
    let id = letters[0]["id"].as_str().expect("id").to_owned();
    let (ok, out) = cli(&["replay", &id]);
    assert!(ok, "{out}");
    let (ok, _) = cli(&["replay", "no-such-id"]);
    assert!(!ok, "replaying an unknown id fails");
    // Replayed, it fails again and comes back as a new dead letter.
    let again: String = eventually("dead-lettered again", PATIENCE, || async {
        let (_, out) = cli(&["dead-letters"]);
        let letters: Vec<Value> = serde_json::from_str(&out).ok()?;
        (letters.len() == 1 && letters[0]["id"] != id.as_str())
            .then(|| letters[0]["id"].as_str().map(str::to_owned))
            .flatten()
    })
    .await;
    // A second poison, then `replay --all`: both go back, with progress.
    let (s, _) = host
        .client
        .raw("POST", "/faulty/write?key=q", Some("poison"))
        .await;
    assert_eq!(s, 200);
    eventually("two dead letters", PATIENCE, || async {
        let (_, out) = cli(&["dead-letters"]);
        let letters: Vec<Value> = serde_json::from_str(&out).ok()?;
        (letters.len() == 2).then_some(())
    })
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sktarbucks"))
        .arg("--config")
        .arg(&config)
        .args(["replay", "--all"])
        .output()
        .expect("cli runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("2 of 2 dead letters queued"), "{stdout}");
    assert!(
        stderr.contains("[1/2]") && stderr.contains("[2/2]") && stderr.contains(&again),
        "one progress line per letter: {stderr}"
    );
}

/// Production down (not loaded) → orders are still accepted; when it comes
/// back its events are waiting in the log and it catches up.
#[tokio::test(flavor = "multi_thread")]
async fn orders_are_accepted_while_production_is_down_and_it_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = manifest(dir.path());
    let without = {
        let mut config = crate::support::test_config(dir.path());
        config.components.remove("production");
        crate::support::manifest_text(&config)
    };
    let mut host = Host::start(dir.path(), &without, &["--listen", "127.0.0.1:0"]);
    let c = host.client.clone();
    c.seed_item(5, 10).await;
    for i in 0..3 {
        let (s, body) = c
            .send(
                "POST",
                "/orders",
                json!({"custNm": format!("c{i}"), "cafeId": 5}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
    }
    let (s, body) = c.get("/productions?limit=1000").await;
    assert_eq!(s, 404, "production is not routed while down: {body}");
    let (_, order) = c.get("/orders/1").await;
    assert_eq!(order["status"], "REQUESTED", "nobody registered it yet");
    host.terminate();

    let host = Host::start(dir.path(), &full, &["--listen", "127.0.0.1:0"]);
    let c = host.client.clone();
    eventually("production caught up", PATIENCE, || async {
        let (_, prods) = c.get("/productions?limit=1000").await;
        let (_, orders) = c.get("/orders?status=ORDERED&limit=1000").await;
        (prods.as_array()?.len() == 3 && orders.as_array()?.len() == 3).then_some(())
    })
    .await;
}

/// Run as a user would from a directory: relative manifest, relative data
/// directory and the default compile cache under it.
#[tokio::test(flavor = "multi_thread")]
async fn relative_paths_work_like_for_a_user_in_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = {
        let mut config = crate::support::test_config(dir.path());
        config.data = "./state".into();
        config.compile_cache = None;
        crate::support::manifest_text(&config)
    };
    let host = Host::start_in(dir.path(), &text, &["--listen", "127.0.0.1:0"]);
    let (s, body) = host
        .client
        .raw(
            "POST",
            "/cafes",
            Some(r#"{"cafeId":"99","cafeNm":"coffee","chkDate":"210713","pcnt":20}"#),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    assert!(
        dir.path().join("state/sktarbucks.db").exists(),
        "data lives next to the manifest"
    );
    assert!(
        dir.path().join("state/compile-cache").exists(),
        "compile cache under the data directory"
    );
}
