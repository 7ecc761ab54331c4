//! The production component: the board of drinks to make.
//!
//! - `api`: read-only HTTP routes under `/productions`.
//! - `events`: follows order, the one authority on an order's final state:
//!   `order.requested` registers, `order.canceled` cancels,
//!   `order.force-canceled` force-cancels.
//! - `model`: stored documents, statuses, collection names.
//!
//! This file binds the WIT world to those modules and exposes the same entry
//! points natively ([`http`], [`event`]) for tests in other crates; all
//! state lives in the `store` import (the host runs a fresh instance per
//! invocation).

mod api;
mod events;
mod model;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fuzz;
#[cfg(test)]
mod tests_openapi;

pub use events::SUBSCRIPTIONS;

/// Answer one HTTP request (what the `http-handler` export runs), natively
/// callable for tests over any [`kit::Platform`].
pub fn http(p: &impl kit::Platform, method: &str, path: &str, query: &str) -> kit::Response {
    api::handle(p, method, path, query)
}

/// Apply one event (what the `event-handler` export runs).
pub fn event(p: &impl kit::Platform, topic: &str, payload: &[u8]) -> Result<(), kit::EventError> {
    events::handle(p, topic, payload)
}

/// This component's HTTP API as an OpenAPI 3.1 fragment: `paths` under
/// `/productions` and `components.schemas` named `Production*`, error
/// responses referring to the host's `#/components/schemas/Error`. What the
/// `api-description` export returns; the host merges it into
/// `GET /openapi.json`. Kept next to the code in `openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

wit_bindgen::generate!({ world: "production", path: "../../wit" });

struct Host;
kit::impl_platform!(Host, sktarbucks::platform);

/// The exported component. `export!` is wasm-only: natively (for
/// `cargo test`) the WIT export symbols would not link into a cdylib.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Component;

kit::export_handlers! {
    Component,
    http: |req| http(&Host, &req.method, &req.path, &req.query),
    subscriptions: SUBSCRIPTIONS,
    event: |ev| kit::platform::from_owner(&ev.topic, &ev.source)
        .and_then(|()| event(&Host, &ev.topic, &ev.payload)),
    openapi: OPENAPI,
}

#[cfg(target_arch = "wasm32")]
export!(Component);
