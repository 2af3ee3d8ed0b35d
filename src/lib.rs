//! buildd: a task broker for AI coding agents.
//!
//! - [`core`]: the domain, with no I/O.
//! - [`store`]: one storage trait, with SQLite and Postgres behind it.
//! - [`server`]: the HTTP API over a store (`buildd serve`).
//! - [`cli`]: the command line that starts everything.

pub mod cli;
pub mod core;
pub mod server;
pub mod store;
