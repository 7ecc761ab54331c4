//! The production component: the board of drinks to make.
//!
//! - `api`: read-only HTTP routes under `/productions`.
//! - `events`: `order.requested` registers, `order.canceled` cancels,
//!   `cafe.deleted` force-cancels.
//! - `model`: stored documents, statuses, collection names.
//!
//! This file only binds the WIT world to those modules; all state lives in
//! the `store` import (the host runs a fresh instance per invocation).

mod api;
mod events;
mod model;

#[cfg(test)]
mod tests;

wit_bindgen::generate!({ world: "production", path: "../../wit" });

struct Host;
kit::impl_platform!(Host, sktarbucks::platform);

/// The exported component. `export!` is wasm-only: natively (for
/// `cargo test`) the WIT export symbols would not link into a cdylib.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Component;

kit::export_handlers! {
    Component,
    http: |req| api::handle(&Host, &req.method, &req.path, &req.query),
    subscriptions: events::SUBSCRIPTIONS,
    event: |ev| events::handle(&Host, &ev.topic, &ev.payload),
}

#[cfg(target_arch = "wasm32")]
export!(Component);
