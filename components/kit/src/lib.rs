//! Shared helpers for the sktarbucks guest components.
//!
//! A plain library with no `wit-bindgen` in it, so it builds and tests on the
//! native target (`cargo test -p kit`). Each component converts between its
//! own generated types and the small types here.
//!
//! - [`http`]: the response type, JSON builders, the error body
//!   `{"error":..,"message":..}`, path splitting, query parsing, path ids.
//! - [`fields`]: lenient-but-strict parsing of request bodies (ids and
//!   counts as numbers or digit strings, trimmed bounded strings).
//! - [`platform`]: the [`Platform`] trait over a component's `store` and
//!   `events` imports, its typed JSON helpers, [`impl_platform!`] to wire a
//!   component's generated bindings, [`export_handlers!`] for its HTTP,
//!   event and (optional) API-description exports, [`MemPlatform`], an
//!   in-memory double for native tests of component logic, and [`Traced`],
//!   which records what a unit read.
//! - [`keys`]: zero-padded id keys (the store orders keys bytewise) and
//!   hashed names for free-text index collections.
//! - [`page`]: the paging convention of every list route (`limit`,
//!   `after`, `Link: rel="next"`) and a bounded index scan.
//! - [`stock`]: mirrors of the WIT `stock` types and the caller's trait.

pub mod fields;
pub mod http;
pub mod keys;
pub mod page;
pub mod platform;
pub mod stock;

pub use http::{ApiError, ApiResult, Response};
pub use platform::{EventError, MemPlatform, Platform, RangePage, Snapshot, StoreError, Traced};
