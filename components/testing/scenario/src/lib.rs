//! Test-only crate: see `tests/interleavings.rs` and README.md. It runs the
//! four business components' logic natively, each on its own
//! `kit::MemPlatform`, wired together the way the host wires them (order
//! reserves stock at cafe inside its own unit of work; events go to every
//! subscriber), and explores every delivery order of one scenario.
