//! Tracing: one request id finds an order's whole path in the real binary's
//! logs (request → order → cafe's linked `stock` → production → order →
//! mypage), the id and a W3C `traceparent` are stored with events on both
//! backends (dead letters and replays keep them), an old SQLite database
//! gets the new columns, and with an OTLP endpoint the spans of one order
//! reach a collector as one trace.

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use sktarbucks::backend::Subscription;
use sktarbucks::config::Config;
use sktarbucks::trace::TraceContext;
use sktarbucks::uow::{Changes, NewEvent};

use crate::on_both_backends;
use crate::support::binary::Host;
use crate::support::harness::{Harness, Kind};
use crate::support::redis::RedisServer;
use crate::support::{eventually, manifest_text, test_config};

const PATIENCE: Duration = Duration::from_secs(30);

/// A client trace the request continues (W3C example ids).
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// The real binary on `kind`'s backend, with the test manifest edited by
/// `edit` and extra environment variables. The Redis server (if any) must
/// outlive the host.
fn start_host(
    kind: Kind,
    dir: &Path,
    edit: impl FnOnce(&mut Config),
    envs: &[(&str, &str)],
) -> (Host, Option<RedisServer>) {
    let mut config = test_config(dir);
    edit(&mut config);
    let redis = (kind == Kind::Redis).then(RedisServer::start);
    let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    if let Some(redis) = &redis {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        config.redis_prefix = format!("trace{}x{nanos:08x}", std::process::id());
        args.extend(["--redis".to_owned(), redis.url.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = Host::start_env(dir, &manifest_text(&config), &args, envs);
    (host, redis)
}

/// What placing one order told us.
struct Placed {
    order_id: u64,
    /// `x-sktarbucks-version` of the answers: cafe's (linked) and order's.
    cafe_digest: String,
    order_digest: String,
}

/// Register a menu item, order it with `request_id` (and the client trace
/// as `traceparent`), and wait until order and mypage both say ORDERED.
async fn place_order(host: &Host, request_id: &str) -> Placed {
    let http = reqwest::Client::new();
    let base = &host.client.base;
    let cafe = http
        .post(format!("{base}/cafes"))
        .header("x-request-id", "register-the-item")
        .body(r#"{"cafeNm":"Coldbrew","chkDate":"20210713","pcnt":5}"#)
        .send()
        .await
        .expect("POST /cafes");
    assert_eq!(cafe.status(), 201);
    let version = |r: &reqwest::Response| {
        r.headers()
            .get("x-sktarbucks-version")
            .and_then(|v| v.to_str().ok())
            .expect("a component answer names its version")
            .to_owned()
    };
    let cafe_digest = version(&cafe);
    let item: serde_json::Value = cafe.json().await.expect("cafe JSON");
    let order = http
        .post(format!("{base}/orders"))
        .header("x-request-id", request_id)
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .body(json!({"custNm": "Hwang", "cafeId": item["cafeId"]}).to_string())
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(order.status(), 201);
    assert_eq!(
        order.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(request_id.as_bytes()),
        "the client's id is kept and returned"
    );
    let order_digest = version(&order);
    let body: serde_json::Value = order.json().await.expect("order JSON");
    let order_id = body["id"].as_u64().expect("order id");
    for path in [
        format!("/orders/{order_id}"),
        format!("/myPages/{order_id}"),
    ] {
        eventually(&format!("{path} is ORDERED"), PATIENCE, || async {
            let (status, body) = host.client.get(&path).await;
            (status == 200 && body["status"] == "ORDERED").then_some(())
        })
        .await;
    }
    Placed {
        order_id,
        cafe_digest,
        order_digest,
    }
}

/// Whether a text log line carries `request_id=<id>` as a span field (of
/// the `request` or the `event` span).
fn carries(line: &str, id: &str) -> bool {
    line.contains(&format!("request_id={id} ")) || line.contains(&format!("request_id={id}}}"))
}

/// Wait until, for each `(what, needles)` in `wanted`, some line of the
/// host's log contains all of its needles.
async fn wait_for_lines<S: AsRef<str>>(host: &Host, what: &str, wanted: &[(&str, Vec<S>)]) {
    eventually(what, PATIENCE, || async {
        let log = host.log.lock().expect("log lock").clone();
        wanted
            .iter()
            .all(|(_, needles)| {
                log.iter()
                    .any(|line| needles.iter().all(|n| line.contains(n.as_ref())))
            })
            .then_some(())
    })
    .await;
}

/// The log lines of one order, each found by what it must contain.
fn order_path(id: &str, placed: &Placed) -> Vec<(&'static str, Vec<String>)> {
    vec![
        (
            "the request line",
            vec![
                format!("request{{request_id={id} method=POST path=/orders component=order}}: "),
                "request finished status=201".into(),
            ],
        ),
        (
            "order's invocation (debug)",
            vec![
                format!(
                    "component=order}}:invocation{{component=order digest={} attempt=1}}: ",
                    placed.order_digest
                ),
                "invocation finished outcome=committed status=201".into(),
            ],
        ),
        (
            "cafe's linked stock call (debug)",
            vec![
                format!(
                    "invocation{{component=order digest={} attempt=1}}:invocation{{component=cafe digest={} attempt=1 link=stock}}",
                    placed.order_digest, placed.cafe_digest
                ),
                "linked call finished outcome=ok".into(),
            ],
        ),
        (
            "production handling order.requested",
            vec![
                "event{component=production ".into(),
                "topic=order.requested attempt=1".into(),
                "invocation{component=production ".into(),
                "invocation finished outcome=handled".into(),
            ],
        ),
        (
            "order handling production.registered",
            vec![
                "event{component=order ".into(),
                "topic=production.registered attempt=1".into(),
                format!(
                    "invocation{{component=order digest={} attempt=1}}",
                    placed.order_digest
                ),
                "invocation finished outcome=handled".into(),
            ],
        ),
        (
            "mypage handling order.ordered",
            vec![
                "event{component=mypage ".into(),
                "topic=order.ordered attempt=1".into(),
                "invocation{component=mypage ".into(),
                "invocation finished outcome=handled".into(),
            ],
        ),
    ]
    .into_iter()
    .map(|(what, mut needles)| {
        needles.push(format!("request_id={id}"));
        (what, needles)
    })
    .collect()
}

/// One `x-request-id` finds the order's whole path in the host's text log
/// (at `debug`, which adds each invocation of the request).
async fn one_request_id_finds_the_whole_path_in_the_log(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host, _redis) = start_host(
        kind,
        dir.path(),
        |_| {},
        &[("RUST_LOG", "info,sktarbucks=debug")],
    );
    let id = format!("trace-{kind:?}-order-1").to_lowercase();
    let placed = place_order(&host, &id).await;
    let wanted = order_path(&id, &placed);
    // The lines reach the log reader a moment after the effects are visible.
    wait_for_lines(&host, "every step's log line", &wanted).await;
    let log = host.log.lock().expect("log lock").clone();
    let ours: Vec<&String> = log.iter().filter(|l| carries(l, &id)).collect();
    for (what, needles) in &wanted {
        assert!(
            ours.iter()
                .any(|line| needles.iter().all(|n| line.contains(n.as_str()))),
            "no line for {what} carrying {id}; lines with the id:\n{}",
            ours.iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The other request's id stays on its own lines.
    assert!(
        !ours.iter().any(|l| l.contains("register-the-item")),
        "ids do not bleed into each other"
    );
    assert!(placed.order_id > 0);
}

/// Events carry the request id and traceparent on the backend; a dead
/// letter keeps them and its replay delivers them again.
async fn events_store_the_trace_context(kind: Kind) {
    let h = Harness::start(kind).await;
    let sub = h.subscribe("tracer", vec!["trace.test".into()]).await;
    let trace = TraceContext {
        request_id: Some("req-7".into()),
        traceparent: Some(format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")),
    };
    let event = |key: &str, trace: TraceContext| NewEvent {
        topic: "trace.test".into(),
        key: key.into(),
        payload: b"{}".to_vec(),
        source: "test".into(),
        trace,
    };
    let changes = Changes {
        events: vec![
            event("1", trace.clone()),
            event("2", TraceContext::default()),
        ],
        ..Changes::default()
    };
    h.backend.commit(changes).await.expect("commit");
    // Both backends hand out the oldest pending delivery first (Redis one
    // at a time): take it, settle it, take the next.
    let first = next_delivery(&h, &sub).await;
    assert_eq!(first.key, "1");
    assert_eq!(first.trace, trace, "stored and read back");
    h.backend
        .fail(&sub, &first, "poisoned on purpose", true)
        .await
        .expect("dead-letter");
    let second = next_delivery(&h, &sub).await;
    assert_eq!(second.key, "2");
    assert_eq!(second.trace, TraceContext::default(), "none is none");
    let acked = h
        .backend
        .ack(&sub, &second, Changes::default())
        .await
        .expect("ack");
    assert_eq!(acked, sktarbucks::backend::Commit::Applied);

    let dead = h.backend.dead_letters().await.expect("dead letters");
    let letter = dead
        .iter()
        .find(|d| d.subscriber == "tracer")
        .expect("the dead letter");
    assert_eq!(letter.request_id.as_deref(), Some("req-7"));
    assert!(
        h.backend.replay(&letter.id).await.expect("replay"),
        "replayed"
    );
    let again = next_delivery(&h, &sub).await;
    assert_eq!(again.key, "1");
    assert_eq!(again.trace, trace, "a replay keeps the trace context");
    h.stop().await;
}

/// The next delivery for `sub` (waiting for it at most [`PATIENCE`]).
async fn next_delivery(h: &Harness, sub: &Subscription) -> sktarbucks::backend::Delivery {
    eventually("a delivery", PATIENCE, || async {
        h.backend
            .poll(sub, 10, Duration::from_millis(200))
            .await
            .expect("poll")
            .into_iter()
            .next()
    })
    .await
}

on_both_backends!(
    one_request_id_finds_the_whole_path_in_the_log,
    events_store_the_trace_context,
    spans_of_one_order_reach_an_otlp_collector_as_one_trace,
);

/// With `SKTARBUCKS_LOG_FORMAT=json` every line of an order carries its
/// request id (a log pipeline can filter on it). At the default level an
/// order is one line for its request and one per event delivery, and
/// neither has a span: each names what it is about in its own fields.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_request_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host, _redis) = start_host(
        Kind::Sqlite,
        dir.path(),
        |_| {},
        &[("SKTARBUCKS_LOG_FORMAT", "json")],
    );
    let id = "json-order-1";
    place_order(&host, id).await;
    let spans = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        let mut all = v["spans"].as_array().cloned().unwrap_or_default();
        if v["span"].is_object() {
            all.push(v["span"].clone());
        }
        all
    };
    let lines = |log: &[String]| -> Vec<serde_json::Value> {
        log.iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["fields"]["request_id"] == id || spans(v).iter().any(|s| s["request_id"] == id)
            })
            .collect()
    };
    let delivered = |lines: &[serde_json::Value], component: &str| {
        lines.iter().any(|v| {
            v["fields"]["message"] == "invocation finished"
                && v["fields"]["outcome"] == "handled"
                && v["fields"]["ran"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(&format!("{component}@")))
        })
    };
    let ours = eventually("JSON lines of the order's path", PATIENCE, || async {
        let ours = lines(&host.log.lock().expect("log lock"));
        (["production", "order", "mypage"]
            .iter()
            .all(|c| delivered(&ours, c)))
        .then_some(ours)
    })
    .await;
    let dump = || {
        ours.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        ours.iter().all(|v| spans(v).is_empty()),
        "no spans at the default level:\n{}",
        dump()
    );
    // The request's one line says what was asked and which component
    // answered.
    let of_the_request: Vec<&serde_json::Value> = ours
        .iter()
        .filter(|v| v["fields"]["message"] == "request finished")
        .collect();
    assert_eq!(of_the_request.len(), 1, "one line per request:\n{}", dump());
    let line = &of_the_request[0]["fields"];
    assert_eq!(line["status"], 201);
    assert_eq!(line["request_id"], id);
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/orders");
    assert_eq!(line["component"], "order");
    // Every other line is a delivery's, naming the event and what ran.
    let deliveries: Vec<&serde_json::Value> = ours
        .iter()
        .filter(|v| v["fields"]["message"] != "request finished")
        .collect();
    assert!(!deliveries.is_empty(), "the deliveries' lines:\n{}", dump());
    for v in deliveries {
        let f = &v["fields"];
        assert_eq!(
            f["message"],
            "invocation finished",
            "only the request line and one per delivery:\n{}",
            dump()
        );
        let ran = f["ran"].as_str().unwrap_or_default();
        let component = ran.split('@').next().unwrap_or_default();
        assert!(
            ["production", "order", "mypage"].contains(&component)
                && ran.len() == component.len() + 13,
            "`ran` is component@digest: {v}"
        );
        assert!(
            f["event_id"].is_string() && f["topic"].is_string() && f["attempt"] == 1,
            "a delivery's line names its event: {v}"
        );
    }
}

/// At the default level requests and deliveries have no spans, yet their
/// failure lines still name the request: a trapping request's lines and a
/// refused event's retry line carry its `request_id` (in a span made for
/// the line), beside the routine lines that carry it as a field.
#[tokio::test(flavor = "multi_thread")]
async fn without_spans_failure_lines_still_name_their_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host, _redis) = start_host(Kind::Sqlite, dir.path(), |_| {}, &[]);
    let http = reqwest::Client::new();
    let base = &host.client.base;
    let post = |path: &str, id: &str, body: &'static str| {
        http.post(format!("{base}{path}"))
            .header("x-request-id", id)
            .body(body)
            .send()
    };
    let trapped = post("/faulty/write-then-trap", "trap-1", "x")
        .await
        .expect("POST trap");
    assert_eq!(trapped.status(), 500);
    // Its event carries the id to the handler, which refuses it.
    let poisoned = post("/faulty/write?key=p", "poison-1", "poison")
        .await
        .expect("POST poison");
    assert_eq!(poisoned.status(), 200);
    let wanted: [(&str, Vec<&str>); 5] = [
        (
            "the trapping request's line",
            vec![
                "INFO sktarbucks::http::server: request finished request_id=trap-1 method=POST path=/faulty/write-then-trap component=faulty status=500",
            ],
        ),
        (
            "the trap's error, in a span made for it",
            vec![
                "request{request_id=trap-1 method=POST path=/faulty/write-then-trap component=faulty}: ",
                "invocation failed",
            ],
        ),
        (
            "the failed run's line",
            vec!["invocation finished outcome=failed", "request_id=trap-1"],
        ),
        (
            "the poison request's line",
            vec![
                "request finished request_id=poison-1 method=POST path=/faulty/write component=faulty status=200",
            ],
        ),
        (
            "the refused event's retry, in a span made for it",
            vec![
                "event{component=faulty ",
                "topic=faulty.happened attempt=1 request_id=poison-1}: ",
                "event handler failed; will retry",
            ],
        ),
    ];
    wait_for_lines(&host, "the failure lines", &wanted).await;
    // Premise: at this level no routine line is in a span.
    let log = host.log.lock().expect("log lock").clone();
    assert!(
        !log.iter()
            .any(|l| l.contains("request{") && l.contains("request finished")),
        "the request line has no span at the default level"
    );
}

/// A database from before trace contexts (no `request_id`/`traceparent`
/// columns, one event pending) opens, keeps its event (delivered without a
/// context), and stores contexts from then on; opening again is a no-op.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_sqlite_database_gets_the_trace_columns() {
    use sktarbucks::backend::Backend;
    use sktarbucks::backend::sqlite::SqliteBackend;
    use sktarbucks::config::Synchronous;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let conn =
            rusqlite::Connection::open(dir.path().join("sktarbucks.db")).expect("open old db");
        conn.execute_batch(
            "CREATE TABLE events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                topic TEXT NOT NULL, key TEXT NOT NULL, payload BLOB NOT NULL,
                source TEXT NOT NULL, created_ms INTEGER NOT NULL
             );
             INSERT INTO events (topic, key, payload, source, created_ms)
             VALUES ('trace.test', 'old', x'7b7d', 'test', 0);",
        )
        .expect("old schema");
    }
    let sub = Subscription {
        component: "tracer".into(),
        topics: vec!["trace.test".into()],
    };
    for _ in 0..2 {
        let backend =
            SqliteBackend::open(dir.path(), Synchronous::Normal).expect("the old database opens");
        backend.subscribe(&sub).await.expect("subscribe");
        let trace = TraceContext::request("req-new");
        backend
            .commit(Changes {
                events: vec![NewEvent {
                    topic: "trace.test".into(),
                    key: "new".into(),
                    payload: b"{}".to_vec(),
                    source: "test".into(),
                    trace: trace.clone(),
                }],
                ..Changes::default()
            })
            .await
            .expect("commit after the migration");
        let polled = backend.poll(&sub, 10, Duration::ZERO).await.expect("poll");
        let old = polled
            .iter()
            .find(|d| d.key == "old")
            .expect("the old event");
        assert_eq!(old.trace, TraceContext::default());
        let new = polled
            .iter()
            .find(|d| d.key == "new")
            .expect("the new event");
        assert_eq!(new.trace, trace);
    }
    let conn = rusqlite::Connection::open(dir.path().join("sktarbucks.db")).expect("open");
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('events')")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("columns");
    assert_eq!(
        columns
            .iter()
            .filter(|c| *c == "request_id" || *c == "traceparent")
            .count(),
        2,
        "{columns:?}"
    );
}

/// Spans received by the in-process OTLP collector.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    /// `service.name` of every export seen.
    services: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// Serve `POST /v1/traces` (OTLP/HTTP protobuf) on an ephemeral port;
    /// returns its base URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("collector binds");
        let addr = listener.local_addr().expect("collector address");
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let me = me.clone();
                            async move { Ok::<_, Infallible>(me.receive(req).await) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    async fn receive(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: u16| {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/x-protobuf"),
            );
            r
        };
        if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" {
            return reply(404);
        }
        let Ok(body) = req.into_body().collect().await else {
            return reply(400);
        };
        let Ok(export) = ExportTraceServiceRequest::decode(body.to_bytes()) else {
            return reply(400);
        };
        for resource in export.resource_spans {
            if let Some(name) = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
            {
                self.services.lock().expect("services").push(name);
            }
            let mut spans = self.spans.lock().expect("spans");
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        reply(200)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("spans").clone()
    }
}

fn text(v: &Any) -> Option<String> {
    match v {
        Any::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// An attribute of `span` as text (strings as they are, numbers in decimal).
fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    match value {
        Any::IntValue(n) => Some(n.to_string()),
        other => text(other),
    }
}

/// The one span named `name` whose attributes include all of `want` (and,
/// given one, whose parent is `parent`).
fn find<'a>(
    spans: &'a [Span],
    name: &str,
    want: &[(&str, &str)],
    parent: Option<&Span>,
) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == name
                && want.iter().all(|(k, v)| attr(s, k).as_deref() == Some(*v))
                && parent.is_none_or(|p| s.parent_span_id == p.span_id)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {name} span with {want:?}; all spans: {:#?}",
        spans
            .iter()
            .map(|s| (
                s.name.clone(),
                s.attributes
                    .iter()
                    .map(|kv| kv.key.clone())
                    .collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>()
    );
    found[0]
}

/// `child` is a child of `parent` in the same trace.
fn assert_child(child: &Span, parent: &Span, what: &str) {
    assert_eq!(child.trace_id, parent.trace_id, "{what}: same trace");
    assert_eq!(child.parent_span_id, parent.span_id, "{what}: parent");
}

/// With an OTLP endpoint (manifest on SQLite, the standard environment
/// variable on Redis), one order's spans reach the collector as one trace
/// continuing the client's: request → http → order's invocation → cafe's
/// linked call; and each event's span a child of the invocation that
/// published it, through production, order and mypage. The batch delay is
/// a minute: the spans arrive because shutdown flushes them.
async fn spans_of_one_order_reach_an_otlp_collector_as_one_trace(kind: Kind) {
    let collector = Collector::default();
    let url = collector.start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut envs = vec![("OTEL_BSP_SCHEDULE_DELAY", "60000")];
    if kind == Kind::Redis {
        envs.push(("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()));
    }
    let manifest_url = url.clone();
    let (mut host, _redis) = start_host(
        kind,
        dir.path(),
        |config| {
            if kind == Kind::Sqlite {
                config.tracing.otlp_endpoint = Some(manifest_url);
            }
        },
        &envs,
    );
    let id = format!("otlp-{kind:?}-order-1").to_lowercase();
    let placed = place_order(&host, &id).await;
    assert!(
        collector.spans().is_empty(),
        "nothing exported before shutdown (the batch delay is a minute)"
    );
    let status = tokio::task::block_in_place(|| host.terminate());
    assert!(
        status.success(),
        "clean exit: {status}\n{}",
        host.log_text()
    );
    let spans = collector.spans();
    assert!(
        collector
            .services
            .lock()
            .expect("services")
            .iter()
            .all(|s| s == "sktarbucks"),
        "service.name"
    );

    let trace = hex::decode(CLIENT_TRACE).expect("hex");
    let request = find(&spans, "request", &[("request_id", id.as_str())], None);
    assert_eq!(
        request.trace_id, trace,
        "the request continues the client's trace"
    );
    assert_eq!(
        request.parent_span_id,
        hex::decode(CLIENT_SPAN).expect("hex")
    );
    for (key, value) in [
        ("method", "POST"),
        ("path", "/orders"),
        ("component", "order"),
    ] {
        assert_eq!(
            attr(request, key).as_deref(),
            Some(value),
            "the request span's {key}"
        );
    }
    let order = find(
        &spans,
        "invocation",
        &[
            ("component", "order"),
            ("digest", placed.order_digest.as_str()),
            ("attempt", "1"),
        ],
        Some(request),
    );
    assert_child(order, request, "order's invocation");
    let cafe = find(
        &spans,
        "invocation",
        &[
            ("component", "cafe"),
            ("digest", placed.cafe_digest.as_str()),
            ("attempt", "1"),
            ("link", "stock"),
        ],
        Some(order),
    );
    assert_child(cafe, order, "the linked stock call");

    // Each delivery's span continues the span of the invocation that
    // published its event, and carries the request id.
    let delivery = |component: &str, topic: &str| {
        find(
            &spans,
            "event",
            &[
                ("component", component),
                ("topic", topic),
                ("attempt", "1"),
                ("request_id", id.as_str()),
            ],
            None,
        )
    };
    let handler = |event: &Span, component: &str| {
        let found: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.name == "invocation"
                    && s.parent_span_id == event.span_id
                    && attr(s, "component").as_deref() == Some(component)
            })
            .collect();
        assert_eq!(found.len(), 1, "{component}'s invocation under its event");
        let inv = found[0];
        assert_eq!(attr(inv, "attempt").as_deref(), Some("1"));
        assert_eq!(
            attr(inv, "digest").map(|d| d.len()),
            Some(12),
            "short digest"
        );
        inv
    };
    let production_event = delivery("production", "order.requested");
    assert_child(
        production_event,
        order,
        "order.requested under order's invocation",
    );
    let production = handler(production_event, "production");
    let order_event = delivery("order", "production.registered");
    assert_child(
        order_event,
        production,
        "production.registered under production",
    );
    let order_again = handler(order_event, "order");
    let mypage_event = delivery("mypage", "order.ordered");
    assert_child(
        mypage_event,
        order_again,
        "order.ordered under order's handler",
    );
    handler(mypage_event, "mypage");
    for span in [production_event, order_event, mypage_event] {
        assert_eq!(span.trace_id, trace, "events stay in the request's trace");
    }
    assert!(placed.order_id > 0);
}
