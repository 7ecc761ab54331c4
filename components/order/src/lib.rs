//! The order component: customers' orders.
//!
//! - `api`: HTTP routes under `/orders`; placing an order reserves stock
//!   synchronously through the imported `stock` interface (cafe).
//! - `events`: `production.registered` (→ ORDERED) and `cafe.deleted`
//!   (→ FORCE_CANCELED).
//! - `model`: stored documents, statuses, collection names.
//!
//! This file only binds the WIT world to those modules; all state lives in
//! the `store` import (the host runs a fresh instance per invocation).

mod api;
mod events;
mod model;

#[cfg(test)]
mod tests;

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
    http: |req| api::handle(&Host, &StockImport, &req.method, &req.path, &req.query, &req.body),
    subscriptions: events::SUBSCRIPTIONS,
    event: |ev| events::handle(&Host, &ev.topic, &ev.payload),
}

#[cfg(target_arch = "wasm32")]
export!(Component);
