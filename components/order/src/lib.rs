//! The order component: customers' orders.
//!
//! - `api`: HTTP routes under `/orders`; placing an order reserves stock
//!   synchronously through the imported `stock` interface (cafe).
//! - `events`: `production.registered` (→ ORDERED), `cafe.deleted` and its
//!   `order.cafe-sweep` continuations (→ FORCE_CANCELED, in bounded chunks).
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
#[cfg(test)]
mod tests_paging;

pub use events::{CAFE_SWEEP, SUBSCRIPTIONS, SWEEP_CHUNK};

/// Answer one HTTP request (what the `http-handler` export runs), natively
/// callable for tests: `stock` stands for the imported `stock` interface.
pub fn http(
    p: &impl kit::Platform,
    stock: &impl kit::stock::Stock,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> kit::Response {
    api::handle(p, stock, method, path, query, body)
}

/// Apply one event (what the `event-handler` export runs).
pub fn event(p: &impl kit::Platform, topic: &str, payload: &[u8]) -> Result<(), kit::EventError> {
    events::handle(p, topic, payload)
}

/// [`event`] with force-cancel sweeps of `chunk` index entries per
/// invocation instead of [`SWEEP_CHUNK`]: for tests that interleave other
/// events between a sweep's chunks without placing hundreds of orders.
pub fn event_with_sweep_chunk(
    p: &impl kit::Platform,
    topic: &str,
    payload: &[u8],
    chunk: u32,
) -> Result<(), kit::EventError> {
    events::handle_chunked(p, topic, payload, chunk)
}

/// This component's HTTP API as an OpenAPI 3.1 fragment: `paths` under
/// `/orders` and `components.schemas` named `Order*`, error responses
/// referring to the host's `#/components/schemas/Error`. What the
/// `api-description` export returns; the host merges it into
/// `GET /openapi.json`. Kept next to the code in `openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

wit_bindgen::generate!({ world: "order", path: "../../wit" });

use kit::stock::{Reserved, StockFailure};
use sktarbucks::platform::types::StockError;

struct Host;
kit::impl_platform!(Host, sktarbucks::platform);

/// The imported `stock` interface, served by cafe inside this unit of work.
struct StockImport;

impl kit::stock::Stock for StockImport {
    fn reserve(&self, order_id: &str, cafe_id: u64, qty: u32) -> Result<Reserved, StockFailure> {
        sktarbucks::platform::stock::reserve(order_id, cafe_id, qty)
            .map(|r| Reserved {
                order_id: r.order_id,
                cafe_id: r.cafe_id,
                cafe_nm: r.cafe_nm,
                chk_date: r.chk_date,
                qty: r.qty,
                remaining: r.remaining,
            })
            .map_err(|e| match e {
                StockError::NotFound(m) => StockFailure::NotFound(m),
                StockError::SoldOut(n) => StockFailure::SoldOut(n),
                StockError::Invalid(m) => StockFailure::Invalid(m),
                StockError::Unavailable(m) => StockFailure::Unavailable(m),
            })
    }
}

/// The exported component. `export!` is wasm-only: natively (for
/// `cargo test`) the WIT export symbols would not link into a cdylib.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Component;

kit::export_handlers! {
    Component,
    http: |req| http(&Host, &StockImport, &req.method, &req.path, &req.query, &req.body),
    subscriptions: SUBSCRIPTIONS,
    event: |ev| kit::platform::from_owner(&ev.topic, &ev.source)
        .and_then(|()| event(&Host, &ev.topic, &ev.payload)),
    openapi: OPENAPI,
}

#[cfg(target_arch = "wasm32")]
export!(Component);
