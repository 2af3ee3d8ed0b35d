//! Why a rule refused something.

/// A request that the domain rules refuse. The HTTP layer maps each kind to its status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// Well-formed but not acceptable (a bad value): 400.
    #[error("{0}")]
    Invalid(String),
    /// Not possible in the resource's current state (a bad transition): 409.
    #[error("{0}")]
    Conflict(String),
    /// Not for this caller, whatever the state (an account the task does not route
    /// to): 403.
    #[error("{0}")]
    Forbidden(String),
}
