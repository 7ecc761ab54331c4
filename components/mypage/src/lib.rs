//! The mypage component: customers' order progress, a CQRS read model with
//! its own storage.
//!
//! - `api`: read-only HTTP routes under `/myPages`.
//! - `events`: projects `order.*` and `production.*` events into rows,
//!   version-checked so any delivery order gives the same result.
//! - `model`: the row and the payloads read.
//!
//! This file only binds the WIT world to those modules; all state lives in
//! the `store` import (the host runs a fresh instance per invocation).

mod api;
mod events;
mod model;

#[cfg(test)]
mod tests;

wit_bindgen::generate!({ world: "mypage", path: "../../wit" });

struct Host;
kit::impl_platform!(Host, sktarbucks::platform);

/// The exported component. `export!` is wasm-only: natively (for
/// `cargo test`) the WIT export symbols would not link into a cdylib.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Component;

kit::export_handlers! {
    Component,
    http: |req| api::handle(&Host, &req.method, &req.path, &req.query),
    subscriptions: events::subscriptions(),
    event: |ev| events::handle(&Host, &ev.topic, &ev.payload),
}

#[cfg(target_arch = "wasm32")]
export!(Component);
