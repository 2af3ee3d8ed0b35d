//! The domain: what buildd's resources are and the rules they live by.
//!
//! Nothing in here does I/O. The stores and the HTTP layer call these functions so
//! that a rule (who may claim what, which status may follow which, what happens to a
//! task whose worker is lost) is written exactly once, whichever database is behind it.

pub mod actions;
pub mod agents;
pub mod backoff;
pub mod claim;
pub mod diff;
pub mod error;
pub mod events;
pub mod github;
pub mod hours;
pub mod ids;
pub mod keys;
pub mod lease;
pub mod messages;
pub mod model;
pub mod notify;
pub mod page;
pub mod plan;
pub mod policy;
pub mod runners;
pub mod schedule;
pub mod time;
pub mod transcript;
pub mod trigger;
pub mod validate;
pub mod version;
pub mod workflow;

pub use error::RuleError;
