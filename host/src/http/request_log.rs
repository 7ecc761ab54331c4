//! What a request's log lines say about it, and the span they go in.
//!
//! A `request` span per request (with its fields formatted into the
//! registry, entered and left on every poll, formatted again on each line)
//! cost 8–15 % of the host's CPU for a `GET /cafes/{id}`. So a request has
//! its span only when it is going somewhere: spans are exported, or
//! `sktarbucks` lines at `debug` are on (they nest the invocation spans
//! under it; see [`crate::invoke::own_spans`]). Otherwise the one routine
//! line, `request finished`, carries the request's fields itself, and a
//! rare line (a failure) gets a span made for it with the same fields, so
//! every line of a request still names its `request_id`.

use std::sync::{Arc, OnceLock};

use hyper::Method;

use crate::registry::Loaded;

/// The lines and span keep the server's target (`RUST_LOG` filters name it).
const TARGET: &str = "sktarbucks::http::server";

/// One request's identity in the logs.
pub struct RequestLog {
    /// The effective `x-request-id`.
    pub id: String,
    method: Method,
    path: String,
    /// Set once routed: the component that answers (its name is shown).
    component: OnceLock<Arc<Loaded>>,
    /// The `request` span when requests have spans, else none.
    span: tracing::Span,
}

impl RequestLog {
    /// The request's log identity; its span is made here when requests
    /// have spans (export continues the client's `traceparent`).
    pub fn new(id: String, method: &Method, path: &str, traceparent: Option<&str>) -> Self {
        let span = if crate::invoke::own_spans() {
            let span = Self::make_span(&id, method, path);
            crate::trace::continue_client_trace(&span, traceparent);
            span
        } else {
            tracing::Span::none()
        };
        Self {
            id,
            method: method.clone(),
            path: path.to_owned(),
            component: OnceLock::new(),
            span,
        }
    }

    fn make_span(id: &str, method: &Method, path: &str) -> tracing::Span {
        tracing::info_span!(
            target: TARGET,
            "request",
            request_id = %id,
            method = %method,
            path = %path,
            component = tracing::field::Empty,
        )
    }

    /// The request's span (none when requests have no spans): what its
    /// work is instrumented with, and the parent of its invocations'.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Routed to `component`.
    pub fn routed(&self, component: &Arc<Loaded>) {
        self.span
            .record("component", tracing::field::display(&component.name));
        let _ = self.component.set(Arc::clone(component));
    }

    /// The span for a line that is not routine (a failure): the request's
    /// own when it has one, else one made now with the same fields.
    pub fn span_for_line(&self) -> tracing::Span {
        if !self.span.is_none() {
            return self.span.clone();
        }
        let span = Self::make_span(&self.id, &self.method, &self.path);
        if let Some(component) = self.component.get() {
            span.record("component", tracing::field::display(&component.name));
        }
        span
    }

    /// The request's one routine line (`debug` for health probes).
    pub fn finished(&self, status: u16, us: u64, probe: bool) {
        if !self.span.is_none() {
            crate::trace::info_or_debug!(
                !probe,
                target: TARGET,
                parent: &self.span,
                status,
                us,
                "request finished"
            );
            return;
        }
        let component = self
            .component
            .get()
            .map(|c| tracing::field::display(&c.name));
        crate::trace::info_or_debug!(
            !probe,
            target: TARGET,
            request_id = %self.id,
            method = %self.method,
            path = %self.path,
            component,
            status,
            us,
            "request finished"
        );
    }
}
