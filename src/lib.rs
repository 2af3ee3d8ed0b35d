//! buildd: a task broker for AI coding agents.
//!
//! - [`core`]: the domain, with no I/O.
//! - [`store`]: one storage trait, with SQLite and Postgres behind it.
//! - [`server`]: the HTTP API over a store (`buildd serve`).
//! - [`client`]: the typed HTTP client the terminal commands (and the agent) use.
//! - [`agent`]: `buildd agent`, which claims tasks and runs them in git worktrees.
//! - [`cli`]: the command line that starts everything.

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod core;
pub mod server;
pub mod store;
