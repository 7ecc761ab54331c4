//! The one `bindgen!` of the host: every contract in `wit/`, seen from the host.
//!
//! The `host` world imports everything a component may import and exports
//! everything a component may export; each component provides a subset, which
//! `registry` resolves once at load time through the per-interface
//! `GuestIndices`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sktarbucks:platform/sktarbucks-host",
    // Host imports are async (they talk to SQLite/Redis and to other
    // components) and trappable (a backend failure aborts the invocation).
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::exports::sktarbucks::platform::{
    api_description, event_handler, http_handler, stock as stock_export,
};
pub use self::sktarbucks::platform::types::{
    Error as DomainError, Event, Request, Reservation, Response, StockError,
};
