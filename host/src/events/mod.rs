//! Event delivery: one dispatcher task per subscribing component.

pub mod dispatcher;
