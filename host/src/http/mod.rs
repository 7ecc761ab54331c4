//! The public HTTP edge: accept loop, routing by path prefix, health
//! endpoints, and turning every failure into a JSON response.

pub mod admin;
pub mod reply;
pub mod request_log;
pub mod server;

pub use server::serve;
