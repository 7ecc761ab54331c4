//! The one integration-test binary. Every test drives the real components
//! built from `components/` (run `cargo xtask build` first).

mod components;
mod console;
mod counters;
mod crash_points;
mod data_growth;
mod data_lock;
mod e2e;
mod edge;
mod event_log;
mod faults;
mod guards;
mod hostile;
mod hot_swap;
mod metrics;
mod openapi;
mod ranges;
mod redis_hosts;
mod redis_streams;
mod reuse;
mod support;
mod trace_context;
mod unit_of_work;
