//! The admin listener: operations never share the public port. Every
//! `/admin/*` route needs `Authorization: Bearer <token>` (compared in
//! constant time); without a token configured the listener does not start.
//!
//! | route | does |
//! |---|---|
//! | `GET /admin/components` | versions, sources, rollback digests, routes, subscriptions, links, in-flight |
//! | `PUT /admin/components/{name}` | body = component bytes: validate, activate (200) or refuse (422) |
//! | `POST /admin/components/{name}/rollback` | back to the previous version |
//! | `POST /admin/reload` | re-read the manifest; all of it applies or none |
//! | `GET /admin/dead-letters` | events that exhausted their attempts, oldest first |
//! | `POST /admin/dead-letters/{id}/replay` | put one back in front of its subscriber (404 if unknown) |
//! | `GET /admin/swaps` | the last 50 version changes on this host, newest first (in memory: since this host started) |
//! | `GET /admin/ui` | the operator console page (static, holds no data; no token) |
//! | `GET /metrics` | Prometheus exposition (read-only, no token) |
//!
//! The console (`console/`: one HTML page, its script and its style, compiled
//! in; no build step) asks for the token once, keeps it in the tab's
//! sessionStorage and calls the JSON routes above with it. Its assets are
//! served with a strict Content-Security-Policy: no inline script, nothing
//! from another origin.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use super::reply::{self, Body};
use crate::deploy::{DeployError, Deployer};
use crate::runtime::Runtime;

/// How long an upload may take.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The operator console's assets, served under `/admin/ui`.
const CONSOLE_HTML: &str = include_str!("console/console.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");
/// Only this origin's own script, style and API; no framing, no forms posted elsewhere.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// Called after a successful reload (to start dispatchers of new components).
pub type AfterReload = Arc<dyn Fn() + Send + Sync>;

/// Shared by every admin connection.
pub struct Admin {
    pub rt: Arc<Runtime>,
    pub deployer: Arc<Deployer>,
    token: String,
    after_reload: AfterReload,
}

impl Admin {
    /// `token` must not be empty: an admin API without one is refused.
    pub fn new(
        rt: Arc<Runtime>,
        deployer: Arc<Deployer>,
        token: String,
        after_reload: AfterReload,
    ) -> Result<Self> {
        anyhow::ensure!(!token.trim().is_empty(), "the admin token is empty");
        Ok(Self {
            rt,
            deployer,
            token: token.trim().to_owned(),
            after_reload,
        })
    }
}

/// Serve the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let admin = Arc::clone(&admin);
        let service = service_fn(move |req| {
            let admin = Arc::clone(&admin);
            async move { Ok::<_, Infallible>(admin.handle(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(given) = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        given.trim().as_bytes().ct_eq(self.token.as_bytes()).into()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if path == "/metrics" {
            // Read-only and scraped by Prometheus: no token.
            return if req.method() == Method::GET {
                self.metrics().await
            } else {
                not_allowed(&path, "GET")
            };
        }
        let Some(rest) = path.strip_prefix("/admin") else {
            return reply::error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no admin route {path}; see /admin/components"),
            );
        };
        if rest == "/ui" || rest.starts_with("/ui/") {
            // Static and data-free: the page asks for the token itself.
            return console(&path, rest, req.method());
        }
        if !self.authorized(&req) {
            return reply::error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "admin routes need `Authorization: Bearer <token>` with the admin token",
            );
        }
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method().clone();
        match (segments.as_slice(), &method) {
            (["components"], &Method::GET) => self.components().await,
            (["components"], _) => not_allowed(&path, "GET"),
            (["components", name], &Method::PUT) => {
                let name = (*name).to_owned();
                self.deploy(&name, req).await
            }
            (["components", _], _) => not_allowed(&path, "PUT"),
            (["components", name, "rollback"], &Method::POST) => {
                answer(self.deployer.rollback(name).await)
            }
            (["components", _, "rollback"], _) => not_allowed(&path, "POST"),
            (["reload"], &Method::POST) => match self.deployer.reload().await {
                Ok(changes) => {
                    (self.after_reload)();
                    reply::json(
                        StatusCode::OK,
                        &json!({"reloaded": true, "changes": changes}),
                    )
                }
                Err(e) => refusal(&e),
            },
            (["reload"], _) => not_allowed(&path, "POST"),
            (["dead-letters"], &Method::GET) => self.dead_letters().await,
            (["dead-letters"], _) => not_allowed(&path, "GET"),
            (["dead-letters", id, "replay"], &Method::POST) => self.replay(id).await,
            (["dead-letters", _, "replay"], _) => not_allowed(&path, "POST"),
            (["swaps"], &Method::GET) => reply::json(
                StatusCode::OK,
                &serde_json::to_value(self.deployer.swaps()).unwrap_or_default(),
            ),
            (["swaps"], _) => not_allowed(&path, "GET"),
            _ => reply::error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no admin route {path}"),
            ),
        }
    }

    async fn metrics(&self) -> Response<Body> {
        let scraped = crate::metrics::Scraped {
            breakers: self.rt.env.guards.report(),
            lag: self.rt.lag().await.unwrap_or_default(),
            dead_letters: self
                .rt
                .backend
                .dead_letters()
                .await
                .map(|d| d.len())
                .unwrap_or(0),
            versions: self
                .rt
                .registry
                .all()
                .iter()
                .map(|l| (l.name.clone(), l.digest.clone()))
                .collect(),
        };
        let text = self.rt.env.metrics.encode(scraped);
        let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        response
    }

    async fn components(&self) -> Response<Body> {
        let lag: std::collections::HashMap<String, u64> = self
            .rt
            .lag()
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let status = self.deployer.status();
        let subscriptions = self
            .rt
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let list: Vec<serde_json::Value> = self
            .rt
            .registry
            .all()
            .iter()
            .map(|l| {
                let st = status.get(&l.name);
                let topics = subscriptions
                    .iter()
                    .find(|s| s.component == l.name)
                    .map(|s| s.topics.clone())
                    .unwrap_or_default();
                json!({
                    "name": l.name,
                    "digest": l.digest,
                    "source": st.map(|s| s.source),
                    "activatedMs": st.map(|s| s.activated_ms),
                    "rollback": st.map(|s| s.rollback.clone()).unwrap_or_default(),
                    "diverged": st.and_then(|s| s.diverged.clone()),
                    "routes": l.config.routes,
                    "subscriptions": topics,
                    "lag": lag.get(&l.name),
                    "links": l.config.links,
                    "deadlineMs": l.config.deadline_ms,
                    "memoryMib": l.config.memory_mib,
                    "inFlight": l.in_flight.load(Ordering::Relaxed),
                    "invocations": l.invocations.load(Ordering::Relaxed),
                    "breaker": self.rt.env.guards.component(&l.name, &l.config.limits).state(),
                    "limits": l.config.limits,
                    "publishes": l.identity.publishes,
                })
            })
            .collect();
        reply::json(StatusCode::OK, &json!({ "components": list }))
    }

    /// Every dead letter, oldest first, in the listing's camelCase.
    async fn dead_letters(&self) -> Response<Body> {
        let letters = match self.rt.backend.dead_letters().await {
            Ok(letters) => letters,
            Err(e) => return backend_unavailable(&e),
        };
        let list: Vec<serde_json::Value> = letters
            .into_iter()
            .map(|d| {
                json!({
                    "id": d.id,
                    "subscriber": d.subscriber,
                    "eventId": d.event_id,
                    "topic": d.topic,
                    "key": d.key,
                    "payload": d.payload,
                    "source": d.source,
                    "attempts": d.attempts,
                    "error": d.error,
                    "deadAtMs": d.dead_at_ms,
                    // Find the event's whole path in the logs by this id.
                    "requestId": d.request_id,
                })
            })
            .collect();
        reply::json(StatusCode::OK, &serde_json::Value::Array(list))
    }

    /// Put dead letter `id` back in front of its subscriber.
    async fn replay(&self, id: &str) -> Response<Body> {
        match self.rt.backend.replay(id).await {
            Ok(true) => {
                tracing::info!(dead_letter = %id, "dead letter replayed from the admin API");
                reply::json(StatusCode::OK, &json!({ "replayed": id }))
            }
            Ok(false) => reply::error(
                StatusCode::NOT_FOUND,
                "dead_letter_not_found",
                format!(
                    "no dead letter with id {id:?} (already replayed, or never existed; see GET /admin/dead-letters)"
                ),
            ),
            Err(e) => backend_unavailable(&e),
        }
    }

    async fn deploy(&self, name: &str, req: Request<Incoming>) -> Response<Body> {
        let limit = self.rt.config().admin_max_wasm_bytes;
        let body = Limited::new(req.into_body(), limit);
        let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, body.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return reply::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the component is larger than admin_max_wasm_bytes ({limit} bytes)"),
                );
            }
            Ok(Err(e)) => {
                return reply::error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("could not read the upload: {e}"),
                );
            }
            Err(_) => {
                return reply::error(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the upload took longer than 60 s",
                );
            }
        };
        if bytes.is_empty() {
            return reply::error(
                StatusCode::BAD_REQUEST,
                "empty_body",
                "send the component's .wasm bytes as the body (Content-Type: application/wasm)",
            );
        }
        answer(self.deployer.deploy(name, bytes.to_vec()).await)
    }
}

fn answer(outcome: Result<crate::deploy::Swap, DeployError>) -> Response<Body> {
    match outcome {
        Ok(swap) => reply::json(
            StatusCode::OK,
            &serde_json::to_value(&swap).unwrap_or_default(),
        ),
        Err(e) => refusal(&e),
    }
}

fn refusal(e: &DeployError) -> Response<Body> {
    match e {
        DeployError::NotFound(m) => reply::error(StatusCode::NOT_FOUND, "component_not_found", m),
        DeployError::Refused(m) => reply::error(StatusCode::UNPROCESSABLE_ENTITY, "refused", m),
        DeployError::Backend(e) => reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            format!("{e:#}"),
        ),
    }
}

fn backend_unavailable(e: &anyhow::Error) -> Response<Body> {
    reply::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        format!("{e:#}"),
    )
}

/// `GET /admin/ui` and its two assets (`rest` is the path after `/admin`);
/// HEAD too (hyper sends no body for it).
fn console(path: &str, rest: &str, method: &Method) -> Response<Body> {
    let (text, content_type) = match rest {
        "/ui" | "/ui/" => (CONSOLE_HTML, "text/html; charset=utf-8"),
        "/ui/console.js" => (CONSOLE_JS, "text/javascript; charset=utf-8"),
        "/ui/console.css" => (CONSOLE_CSS, "text/css; charset=utf-8"),
        _ => {
            return reply::error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no console asset {path}; the console is at /admin/ui"),
            );
        }
    };
    if method != Method::GET && method != Method::HEAD {
        return not_allowed(path, "GET, HEAD");
    }
    let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
        text.as_bytes(),
    )));
    let headers = response.headers_mut();
    for (name, value) in [
        (hyper::header::CONTENT_TYPE, content_type),
        (hyper::header::CACHE_CONTROL, "no-store"),
        (hyper::header::CONTENT_SECURITY_POLICY, CONSOLE_CSP),
        (hyper::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (hyper::header::X_FRAME_OPTIONS, "DENY"),
        (hyper::header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    response
}

fn not_allowed(path: &str, allow: &'static str) -> Response<Body> {
    let mut r = reply::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{path} takes {allow}"),
    );
    r.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static(allow),
    );
    r
}
