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

use exports::sktarbucks::platform::{event_handler, http_handler};
use sktarbucks::platform::types::{Error, Event, Request, Response};

struct Host;
kit::impl_platform!(Host, sktarbucks::platform);

/// The exported component. `export!` is wasm-only: natively (for
/// `cargo test`) the WIT export symbols would not link into a cdylib.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Component;

impl http_handler::Guest for Component {
    fn handle(req: Request) -> Response {
        let r = api::handle(&Host, &req.method, &req.path, &req.query);
        Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl event_handler::Guest for Component {
    fn subscriptions() -> Vec<String> {
        events::SUBSCRIPTIONS
            .iter()
            .map(|t| (*t).to_owned())
            .collect()
    }

    fn handle(ev: Event) -> Result<(), Error> {
        events::handle(&Host, &ev.topic, &ev.payload).map_err(|e| match e {
            kit::EventError::NotFound(m) => Error::NotFound(m),
            kit::EventError::Invalid(m) => Error::Invalid(m),
            kit::EventError::Conflict(m) => Error::Conflict(m),
            kit::EventError::Unavailable(m) => Error::Unavailable(m),
        })
    }
}

#[cfg(target_arch = "wasm32")]
export!(Component);
