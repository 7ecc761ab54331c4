//! The cafe component: menu items and their stock.
//!
//! - `api`: HTTP routes under `/cafes`.
//! - `stock`: the exported `stock` interface (reserve / release).
//! - `events`: `order.canceled` gives stock back.
//! - `model`: stored documents and collection names.
//!
//! This file binds the WIT world to those modules and exposes the same entry
//! points natively ([`http`], [`event`], [`stock_reserve`], [`stock_release`])
//! so tests in other crates can run the logic on a `kit::MemPlatform`; all
//! state lives in the `store` import (the host runs a fresh instance per
//! invocation).

mod api;
mod events;
mod model;
mod stock;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fuzz;
#[cfg(test)]
mod tests_openapi;
#[cfg(test)]
mod tests_stock;

pub use events::SUBSCRIPTIONS;
pub use model::MAX_PCNT;

/// Answer one HTTP request (what the `http-handler` export runs), natively
/// callable for tests over any [`kit::Platform`].
pub fn http(
    p: &impl kit::Platform,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> kit::Response {
    api::handle(p, method, path, query, body)
}

/// Apply one event (what the `event-handler` export runs).
pub fn event(p: &impl kit::Platform, topic: &str, payload: &[u8]) -> Result<(), kit::EventError> {
    events::handle(p, topic, payload)
}

/// `stock.reserve` (what the `stock` export runs).
pub fn stock_reserve(
    p: &impl kit::Platform,
    order_id: &str,
    cafe_id: u64,
    qty: u32,
) -> Result<kit::stock::Reserved, kit::stock::StockFailure> {
    stock::reserve(p, order_id, cafe_id, qty)
}

/// `stock.release` (what the `stock` export runs).
pub fn stock_release(
    p: &impl kit::Platform,
    order_id: &str,
) -> Result<bool, kit::stock::StockFailure> {
    stock::release(p, order_id)
}

/// This component's HTTP API as an OpenAPI 3.1 fragment: `paths` under
/// `/cafes` and `components.schemas` named `Cafe*`, error responses
/// referring to the host's `#/components/schemas/Error`. What the
/// `api-description` export returns; the host merges it into
/// `GET /openapi.json`. Kept next to the code in `openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

wit_bindgen::generate!({ world: "cafe", path: "../../wit" });

use exports::sktarbucks::platform::stock as stock_export;
use sktarbucks::platform::types::{Reservation, StockError};

struct Host;
kit::impl_platform!(Host, sktarbucks::platform);

/// The exported component. `export!` is wasm-only: natively (for
/// `cargo test`) the WIT export symbols would not link into a cdylib.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Component;

kit::export_handlers! {
    Component,
    http: |req| http(&Host, &req.method, &req.path, &req.query, &req.body),
    subscriptions: SUBSCRIPTIONS,
    event: |ev| kit::platform::from_owner(&ev.topic, &ev.source)
        .and_then(|()| event(&Host, &ev.topic, &ev.payload)),
    openapi: OPENAPI,
}

impl stock_export::Guest for Component {
    fn reserve(order_id: String, cafe_id: u64, qty: u32) -> Result<Reservation, StockError> {
        stock_reserve(&Host, &order_id, cafe_id, qty)
            .map(|r| Reservation {
                order_id: r.order_id,
                cafe_id: r.cafe_id,
                cafe_nm: r.cafe_nm,
                chk_date: r.chk_date,
                qty: r.qty,
                remaining: r.remaining,
            })
            .map_err(stock_error)
    }

    fn release(order_id: String) -> Result<bool, StockError> {
        stock_release(&Host, &order_id).map_err(stock_error)
    }
}

fn stock_error(e: stock::StockFailure) -> StockError {
    match e {
        stock::StockFailure::NotFound(m) => StockError::NotFound(m),
        stock::StockFailure::SoldOut(n) => StockError::SoldOut(n),
        stock::StockFailure::Invalid(m) => StockError::Invalid(m),
        stock::StockFailure::Unavailable(m) => StockError::Unavailable(m),
    }
}

#[cfg(target_arch = "wasm32")]
export!(Component);
