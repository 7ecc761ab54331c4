//! Accept loop and request handling. `serve` takes a bound listener so tests
//! can bind port 0, and a shutdown future so SIGTERM drains in-flight requests.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use bytes::BytesMut;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument;

use super::reply::{self, Body};
use super::request_log::RequestLog;
use crate::bindings;
use crate::invoke::Failure;
use crate::runtime::{HttpFailure, Runtime};

/// Identifies a request in the logs; kept when the client sends a valid one.
/// The guest sees the effective id in this header too, and every event of
/// the request's chain carries it.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// A client's W3C trace context: with span export, the request's span
/// continues that trace.
const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");

/// The client's `x-request-id` when it is 1..=128 characters of
/// `[A-Za-z0-9._:-]`, otherwise a new random one (128 bits, hex).
fn request_id<B>(req: &Request<B>) -> String {
    let given = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        });
    match given {
        Some(id) => id.to_owned(),
        None => format!("{:032x}", rand::random::<u128>()),
    }
}

/// Names the component version that served a request.
const VERSION_HEADER: HeaderName = HeaderName::from_static("x-sktarbucks-version");

/// Open connections served at once.
const MAX_CONNECTIONS: usize = 10_000;
/// How long a client may take to send its whole request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request target (path + query) answered by a guest; longer → 414.
const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes (names + values) of one request; more → 431.
const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Largest read buffer of one connection. hyper's default (~400 KiB) would
/// let every connection streaming a body hold that much besides the body
/// budget; this still fits the biggest request head accepted.
const READ_BUFFER_BYTES: usize = MAX_URI_BYTES + MAX_HEADER_BYTES + 24 * 1024;
/// Most headers of one request (hyper refuses more itself, see README).
const MAX_HEADERS: usize = 100;
/// Bytes of an oversized body read and dropped before the 413, so a client
/// that writes its whole body before reading still gets the answer.
const LINGER_BYTES: usize = 16 * 1024 * 1024;
/// How long a body waits for room in the budget.
const BODY_BUDGET_WAIT: Duration = Duration::from_millis(500);
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Open connections per client address.
type Clients = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One client's connection, counted while it is open.
struct ClientSlot {
    clients: Clients,
    ip: std::net::IpAddr,
}

impl ClientSlot {
    /// Count a new connection from `ip`, unless it already holds `max`.
    fn take(clients: &Clients, ip: std::net::IpAddr, max: usize) -> Option<Self> {
        let mut all = clients.lock().unwrap_or_else(|p| p.into_inner());
        let n = all.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            clients: Arc::clone(clients),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut all = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = all.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                all.remove(&self.ip);
            }
        }
    }
}

/// A 503 in JSON written straight to a connection over its client's limit.
async fn refuse_connection(mut stream: tokio::net::TcpStream, max: usize) {
    use tokio::io::AsyncWriteExt;
    let body = json!({
        "error": "too_many_connections",
        "message": format!("this address already has {max} open connections; close some and retry"),
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Shared by every connection.
struct App {
    rt: Arc<Runtime>,
    /// Permits are bytes of request bodies being buffered.
    body_budget: Arc<tokio::sync::Semaphore>,
    /// Set once shutdown begins: readiness turns false so balancers stop sending.
    draining: AtomicBool,
}

/// Serve HTTP on `listener` until `shutdown` resolves, then drain.
pub async fn serve(
    listener: TcpListener,
    rt: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let budget = rt
        .config()
        .body_budget_bytes
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    let app = Arc::new(App {
        rt,
        body_budget: Arc::new(tokio::sync::Semaphore::new(budget)),
        draining: AtomicBool::new(false),
    });
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let clients: Clients = Arc::default();
    tokio::pin!(shutdown);
    loop {
        // Past the limit, stop accepting (the kernel backlog queues the rest)
        // instead of spawning without bound.
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let per_client = app.rt.config().max_connections_per_client;
        let header_timeout = Duration::from_millis(app.rt.config().header_timeout_ms.max(1));
        let Some(slot) = ClientSlot::take(&clients, peer.ip(), per_client) else {
            // One address holds its share: answer and close, so it cannot
            // take every connection slot from everyone else.
            tokio::spawn(refuse_connection(stream, per_client));
            drop(permit);
            continue;
        };
        let app = Arc::clone(&app);
        let service = service_fn(move |req: Request<Incoming>| {
            let app = Arc::clone(&app);
            async move {
                // What its lines say about it (and its span, when requests
                // have spans); its work runs in that span.
                let log = RequestLog::new(
                    request_id(&req),
                    req.method(),
                    req.uri().path(),
                    req.headers()
                        .get(TRACEPARENT_HEADER)
                        .and_then(|v| v.to_str().ok()),
                );
                let probe = req.uri().path().starts_with("/health/");
                let started = std::time::Instant::now();
                let mut response = app.handle(req, &log).instrument(log.span().clone()).await;
                // One line per request (health probes only at debug).
                log.finished(
                    response.status().as_u16(),
                    crate::trace::micros(started),
                    probe,
                );
                if let Ok(v) = HeaderValue::from_str(&log.id) {
                    response.headers_mut().insert(REQUEST_ID_HEADER, v);
                }
                Ok::<_, Infallible>(response)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_headers(MAX_HEADERS)
            .max_buf_size(READ_BUFFER_BYTES)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
            drop(permit);
        });
    }
    app.draining.store(true, Ordering::SeqCst);
    tracing::info!("shutting down: draining in-flight requests");
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    Ok(())
}

impl App {
    async fn handle(&self, req: Request<Incoming>, log: &RequestLog) -> Response<Body> {
        if let Some(refused) = refuse_at_the_edge(&req) {
            return refused;
        }
        let path = req.uri().path().to_owned();
        if path == "/health/live" || path == "/health/ready" {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                let mut r = reply::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{path} answers GET and HEAD only"),
                );
                r.headers_mut()
                    .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return r;
            }
            return if path == "/health/live" {
                reply::json(StatusCode::OK, &json!({"status": "live"}))
            } else {
                self.ready().await
            };
        }
        if path == "/openapi.json" {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                let mut r = reply::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "/openapi.json answers GET and HEAD only",
                );
                r.headers_mut()
                    .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return r;
            }
            return reply::json(StatusCode::OK, &crate::openapi::document(&self.rt).await);
        }
        // One snapshot per request: routes and versions agree with each other.
        let live = self.rt.registry.snapshot();
        let Some(name) = live.router.route(&path) else {
            return reply::error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no route for {path}; routes: {}",
                    live.router.prefixes().join(", ")
                ),
            );
        };
        let Some(loaded) = live.components.get(name).cloned() else {
            return reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "component_unavailable",
                format!("component {name:?} is not loaded"),
            );
        };
        log.routed(&loaded);
        self.invoke(loaded, req, log).await
    }

    async fn invoke(
        &self,
        loaded: Arc<crate::registry::Loaded>,
        req: Request<Incoming>,
        log: &RequestLog,
    ) -> Response<Body> {
        let id = log.id.as_str();
        let limit = self.rt.read_config(|c| c.max_body_bytes);
        let too_large = || {
            reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds the limit of {limit} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let chunked = req.headers().contains_key(hyper::header::TRANSFER_ENCODING);
        let expects_continue = req
            .headers()
            .get(hyper::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let (parts, body) = req.into_parts();
        if declared.is_some_and(|n| n > limit as u64) {
            if !expects_continue {
                // The client may be writing the body before it reads:
                // drop some of it so it gets the 413 instead of a reset.
                discard(body, LINGER_BYTES).await;
            }
            // With Expect: 100-continue the body is never polled, so no
            // `100 Continue` goes out before the 413.
            return too_large();
        }
        // Room in the global body budget (a declared length reserves it all
        // up front; a chunked body reserves the limit; no body, nothing).
        let reserve = match (declared, chunked) {
            (Some(n), _) => usize::try_from(n).unwrap_or(limit).min(limit),
            (None, true) => limit,
            (None, false) => 0,
        };
        let budget = if reserve == 0 {
            None
        } else {
            let wanted = u32::try_from(reserve).unwrap_or(u32::MAX);
            match tokio::time::timeout(
                BODY_BUDGET_WAIT,
                Arc::clone(&self.body_budget).acquire_many_owned(wanted),
            )
            .await
            {
                Ok(Ok(permit)) => Some(permit),
                _ => None,
            }
        };
        if reserve > 0 && budget.is_none() {
            let mut r = reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many request bodies are being received at once; retry",
            );
            r.headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        let body =
            match tokio::time::timeout(BODY_READ_TIMEOUT, read_body(body, limit, reserve)).await {
                Err(_) => {
                    return reply::error(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!(
                            "the request body did not arrive within {} s",
                            BODY_READ_TIMEOUT.as_secs()
                        ),
                    );
                }
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) => return too_large(),
                Ok(Err(e)) => {
                    return reply::error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("failed to read the request body: {e}"),
                    );
                }
            };
        // HEAD is GET without the body (hyper drops it from the answer).
        let method = if parts.method == Method::HEAD {
            "GET"
        } else {
            parts.method.as_str()
        };
        let request = bindings::Request {
            method: method.to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or("").to_owned(),
            // The guest sees the effective request id (the client's, or the
            // one assigned here), never an invalid one the client sent.
            headers: parts
                .headers
                .iter()
                .filter(|(k, _)| **k != REQUEST_ID_HEADER)
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .chain(std::iter::once((
                    REQUEST_ID_HEADER.as_str().to_owned(),
                    id.to_owned(),
                )))
                .collect(),
            body: body.to_vec(),
        };
        let started = std::time::Instant::now();
        let route = crate::metrics::route_template(&request.path);
        let served = Box::pin(self.rt.serve_http(
            &loaded,
            request,
            crate::trace::TraceContext::request(id),
        ))
        .await;
        let outcome = match &served {
            Ok(r) if r.status >= 500 => "error_5xx",
            Ok(_) => "ok",
            Err(HttpFailure::Refused(crate::guard::Refusal::Open(_))) => "refused_open",
            Err(HttpFailure::Refused(crate::guard::Refusal::Busy(_))) => "refused_busy",
            Err(HttpFailure::Invoke(Failure::Deadline(_))) => "timeout",
            Err(HttpFailure::Invoke(Failure::Backend(_)) | HttpFailure::Commit(_)) => "backend",
            Err(HttpFailure::Invoke(Failure::Overloaded(_))) => "refused_busy",
            Err(HttpFailure::Contended { .. }) => "contended",
            Err(HttpFailure::ResponseTooLarge { .. }) => "response_too_large",
            Err(HttpFailure::Invoke(_)) => "trap",
        };
        let metrics = &self.rt.env.metrics;
        metrics.invocation(&loaded.name, outcome);
        let mut response = match served {
            Ok(response) => to_hyper(response),
            Err(failure) => {
                // Failures are rare: their lines get the request's span
                // even when requests have none.
                let span = log.span_for_line();
                let _in = span.enter();
                self.failure_response(&loaded.name, failure)
            }
        };
        metrics.request(
            &loaded.name,
            &route,
            response.status().as_u16(),
            started.elapsed(),
        );
        // Which version answered: the start of its sha256, as listed by
        // `GET /admin/components` (a swap shows up here at once).
        if let Ok(v) = HeaderValue::from_str(loaded.short_digest()) {
            response.headers_mut().insert(VERSION_HEADER, v);
        }
        response
    }

    fn failure_response(&self, name: &str, failure: HttpFailure) -> Response<Body> {
        match failure {
            HttpFailure::Refused(refusal) => {
                let (kind, message) = match &refusal {
                    crate::guard::Refusal::Open(d) => (
                        "circuit_open",
                        format!(
                            "{name} failed repeatedly and is cut off for now (retry in {} ms); nothing was run or saved",
                            d.as_millis()
                        ),
                    ),
                    crate::guard::Refusal::Busy(d) => (
                        "overloaded",
                        format!(
                            "{name} is at its concurrency limit (waited {} ms); nothing was run or saved, retry",
                            d.as_millis()
                        ),
                    ),
                };
                let mut response = reply::error(StatusCode::SERVICE_UNAVAILABLE, kind, message);
                if let Ok(v) = HeaderValue::from_str(&refusal.retry_after_secs().to_string()) {
                    response.headers_mut().insert(hyper::header::RETRY_AFTER, v);
                }
                response
            }
            HttpFailure::Invoke(Failure::Deadline(budget)) => {
                tracing::warn!(reason = "deadline", "invocation interrupted");
                reply::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "{name} did not answer within {} ms; nothing was saved",
                        budget.as_millis()
                    ),
                )
            }
            HttpFailure::Invoke(Failure::Backend(reason)) => {
                tracing::error!(reason = %reason, "state backend failed");
                reply::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backend_unavailable",
                    format!(
                        "the state backend is unavailable ({reason}); nothing was saved, retry later"
                    ),
                )
            }
            HttpFailure::Commit(reason) => {
                tracing::error!(reason = %reason, "commit failed");
                reply::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "commit_unknown",
                    format!(
                        "the state backend failed while committing ({reason}); the request may or may not \
                         have been applied: check before retrying"
                    ),
                )
            }
            HttpFailure::Invoke(Failure::Overloaded(why)) => {
                tracing::warn!(reason = %why, "no instance slot free");
                let mut response = reply::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    format!("{name} is at its concurrency limit; nothing was saved, retry"),
                );
                response
                    .headers_mut()
                    .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            HttpFailure::Invoke(failure) => {
                tracing::error!(reason = %failure, "invocation failed");
                reply::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "component_failed",
                    format!(
                        "{name} failed while handling the request ({failure}); nothing was saved"
                    ),
                )
            }
            HttpFailure::ResponseTooLarge { bytes, limit } => {
                tracing::error!(bytes, limit, "component answered an oversized body");
                reply::error(
                    StatusCode::BAD_GATEWAY,
                    "response_too_large",
                    format!(
                        "{name} answered {bytes} bytes, more than max_response_bytes ({limit}); nothing was saved"
                    ),
                )
            }
            HttpFailure::Contended { attempts, queued } => {
                tracing::warn!(
                    attempts,
                    queued_ms = queued.map(|q| q.as_millis() as u64),
                    "unit of work kept conflicting"
                );
                let why = match queued {
                    None => format!("the data changed concurrently {attempts} times in a row"),
                    Some(waited) => format!(
                        "the data changed concurrently ({attempts} attempt(s) conflicted) and the queue of retries stayed busy for {} ms",
                        waited.as_millis()
                    ),
                };
                let mut response = reply::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "contended",
                    format!("{why}; nothing was saved, retry"),
                );
                response
                    .headers_mut()
                    .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
        }
    }

    async fn ready(&self) -> Response<Body> {
        if self.draining.load(Ordering::SeqCst) {
            return reply::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "draining"}),
            );
        }
        let components: Vec<_> = self
            .rt
            .registry
            .all()
            .iter()
            .map(|c| {
                let diverged = self.rt.diverged(&c.name);
                let guard = self.rt.env.guards.component(&c.name, &c.config.limits);
                json!({"name": c.name, "digest": c.digest, "diverged": diverged,
                       "breaker": guard.state(), "inFlight": guard.in_flight()})
            })
            .collect();
        let links: serde_json::Map<String, serde_json::Value> = self
            .rt
            .env
            .guards
            .report()
            .into_iter()
            .filter(|(key, _, _)| key.contains("->"))
            .map(|(key, state, _)| (key, json!(state)))
            .collect();
        match self.rt.backend.ready().await {
            Ok(()) => {
                let lag: serde_json::Map<String, serde_json::Value> = self
                    .rt
                    .lag()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(name, n)| (name, json!(n)))
                    .collect();
                reply::json(
                    StatusCode::OK,
                    &json!({"status": "ready", "backend": self.rt.backend.name(), "components": components, "links": links, "lag": lag}),
                )
            }
            Err(e) => reply::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "unavailable", "backend": self.rt.backend.name(), "reason": format!("{e:#}")}),
            ),
        }
    }
}

/// Limits answered before any guest runs, each with a JSON body: an
/// unsupported `Expect` (417), an over-long target (414), too many header
/// bytes (431).
fn refuse_at_the_edge<B>(req: &Request<B>) -> Option<Response<Body>> {
    if let Some(expect) = req.headers().get(hyper::header::EXPECT)
        && !expect.as_bytes().eq_ignore_ascii_case(b"100-continue")
    {
        return Some(reply::error(
            StatusCode::EXPECTATION_FAILED,
            "expectation_failed",
            "only `Expect: 100-continue` is supported",
        ));
    }
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(reply::error(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {target} bytes; at most {MAX_URI_BYTES} are accepted"),
        ));
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(reply::error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
            ),
        ));
    }
    None
}

/// The whole body, or `None` (after discarding the rest) past `limit`. `expected` (the declared length,
/// already reserved in the budget) sizes the buffer once, so it never grows
/// by doubling to twice what the budget accounted for.
async fn read_body(
    mut body: Incoming,
    limit: usize,
    expected: usize,
) -> Result<Option<Bytes>, hyper::Error> {
    let mut buf = BytesMut::with_capacity(expected.min(limit));
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > limit {
                discard(body, LINGER_BYTES).await;
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(buf.freeze()))
}

/// Read and drop up to `limit` more bytes (for at most five seconds) before
/// a 413, so a client still sending gets the answer instead of a reset
/// connection; a bigger or slower body is cut off.
async fn discard(mut body: Incoming, limit: usize) {
    let mut seen = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > limit {
                    break;
                }
            }
        }
    })
    .await;
}

/// Turn a component's response into hyper's; headers it cannot legally send are dropped.
fn to_hyper(response: bindings::Response) -> Response<Body> {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() = status;
    for (name, value) in response.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value))
            && name != CONTENT_LENGTH
        {
            out.headers_mut().append(name, value);
        }
    }
    out
}
