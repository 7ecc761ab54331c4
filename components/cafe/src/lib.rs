//! The cafe component: menu items and their stock.
//!
//! - `api`: HTTP routes under `/cafes`.
//! - `stock`: the exported `stock` interface (reserve / release).
//! - `events`: `order.canceled` gives stock back.
//! - `model`: stored documents and collection names.
//!
//! This file only binds the WIT world to those modules; all state lives in
//! the `store` import (the host runs a fresh instance per invocation).

mod api;
mod events;
mod model;
mod stock;

#[cfg(test)]
mod tests;

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
    http: |req| api::handle(&Host, &req.method, &req.path, &req.body),
    subscriptions: events::SUBSCRIPTIONS,
    event: |ev| events::handle(&Host, &ev.topic, &ev.payload),
}

impl stock_export::Guest for Component {
    fn reserve(order_id: String, cafe_id: u64, qty: u32) -> Result<Reservation, StockError> {
        stock::reserve(&Host, &order_id, cafe_id, qty)
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
        stock::release(&Host, &order_id).map_err(stock_error)
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
