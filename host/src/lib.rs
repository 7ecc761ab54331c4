//! sktarbucks: a host that runs WebAssembly components as one service.
//!
//! Layout, one concern per module:
//! - `config`     the manifest (`sktarbucks.toml`) and its defaults
//! - `bindings`   the one `bindgen!` of the WIT contracts
//! - `engine`     wasmtime `Engine` (pooling, epochs, compile cache) and the epoch ticker
//! - `registry`   name → live component version (`InstancePre` + resolved exports)
//! - `state`      per-invocation host state; the `store` and `events` imports
//! - `uow`        the unit of work: buffered reads/writes/events of one invocation
//! - `invoke`     fresh store per call, deadline, failure classification
//! - `linking`    component → component calls (order's `stock` import → cafe)
//! - `runtime`    HTTP request / event → invocation → atomic commit, with retries
//! - `backend`    the state + event-log trait and its SQLite implementation
//! - `events`     per-subscriber dispatchers: retry, backoff, dead letters
//! - `http`       accept loop, routing, health, errors as JSON
//! - `app`        wiring it all together for `sktarbucks serve`

pub mod app;
pub mod backend;
pub mod bindings;
pub mod config;
pub mod engine;
pub mod events;
pub mod http;
pub mod invoke;
pub mod linking;
pub mod registry;
pub mod runtime;
pub mod state;
pub mod uow;
