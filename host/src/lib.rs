//! sktarbucks: a host that runs WebAssembly components as one service.
//!
//! Layout, one concern per module:
//! - `config`     the manifest (`sktarbucks.toml`) and its defaults
//! - `bindings`   the one `bindgen!` of the WIT contracts
//! - `engine`     wasmtime `Engine` (pooling, epochs, compile cache) and the epoch ticker
//! - `state`      per-invocation host state; the `store`, `events` and `stock` imports
//! - `routes`     path prefix → component
//! - `registry`   the live set: manifest, versions (`InstancePre` + exports), routes; swapped atomically
//! - `uow`        the unit of work: buffered reads/writes/events of one invocation
//! - `crash`      named crash points for crash tests (only in `crash-points` builds)
//! - `guard`      per-component concurrency limit and circuit breaker (and per link)
//! - `invoke`     a store per call (fresh or reused), deadline, failure classification (`Env`)
//! - `pool`       opt-in instance reuse: idle instances per version, retirement rules
//! - `metrics`    Prometheus families and the scrape-time readings
//! - `linking`    component → component calls (order's `stock` import → cafe)
//! - `runtime`    HTTP request / event → invocation → atomic commit, with retries
//! - `backend`    the state + event-log trait and its SQLite implementation
//! - `events`     per-subscriber dispatchers: retry, backoff, dead letters
//! - `deploy`     hot swap: validate, activate, record, follow other hosts, roll back, reload
//! - `http`       accept loop, routing, health, errors as JSON
//! - `openapi`    `/openapi.json` assembled from the live components' fragments
//! - `watch`      `serve --watch`: redeploy rebuilt component files
//! - `app`        the one start-up path (`start(config) -> RunningHost`)
//! - `trace`      request ids and W3C trace context carried by invocations and events; log + OTLP set-up

pub mod app;
pub mod backend;
pub mod background;
pub mod bindings;
pub mod config;
pub mod crash;
pub mod data_lock;
pub mod deploy;
pub mod engine;
pub mod events;
pub mod exports;
pub mod guard;
pub mod http;
pub mod invoke;
pub mod linking;
pub mod log_time;
pub mod metrics;
pub mod openapi;
pub mod pool;
pub mod registry;
pub mod routes;
pub mod runtime;
pub mod state;
pub mod trace;
pub mod uow;
pub mod watch;
