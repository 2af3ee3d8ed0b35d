//! Versions: what this build is, and which agents a server still takes.
//!
//! Clients name themselves `User-Agent: buildd/VERSION`, the server answers with
//! `x-buildd-version`, and a claim from an agent older than [`MIN_AGENT_VERSION`] is
//! refused with the version it needs, rather than handing work to an agent that would
//! misread it.

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this build was made from (`unknown` outside a checkout).
pub const COMMIT: &str = env!("BUILDD_GIT_COMMIT");
/// `buildd --version`: the version and the commit.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("BUILDD_GIT_COMMIT"),
    ")"
);
/// The `User-Agent` of buildd's own client and agent.
pub const USER_AGENT: &str = concat!("buildd/", env!("CARGO_PKG_VERSION"));
/// The oldest agent this server hands work to: the first to number its messages and
/// read the heartbeat's `action`.
pub const MIN_AGENT_VERSION: &str = "0.1.0";

/// `major.minor.patch` as numbers; a pre-release or build suffix is ignored.
fn parse(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

/// Why a client whose `User-Agent` is `user_agent` may not claim, if it may not: a
/// buildd agent older than [`MIN_AGENT_VERSION`]. Other clients (curl, a script, an
/// SDK) are not judged by their name.
pub fn refuse_agent(user_agent: Option<&str>) -> Option<String> {
    let version = user_agent?.strip_prefix("buildd/")?;
    let version = version.split_whitespace().next().unwrap_or(version);
    let too_old = match (parse(version), parse(MIN_AGENT_VERSION)) {
        (Some(theirs), Some(needed)) => theirs < needed,
        _ => false,
    };
    too_old.then(|| {
        format!(
            "buildd {version} is too old for this server ({VERSION}): upgrade the agent to {MIN_AGENT_VERSION} or later"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_buildd_agents_older_than_the_minimum_are_refused() {
        assert!(
            refuse_agent(Some("buildd/0.0.9"))
                .unwrap()
                .contains(MIN_AGENT_VERSION)
        );
        assert_eq!(refuse_agent(Some(USER_AGENT)), None);
        assert_eq!(refuse_agent(Some("buildd/0.1.0-rc.1")), None);
        assert_eq!(refuse_agent(Some("buildd/1.0.0")), None);
        assert_eq!(refuse_agent(Some("curl/8.5.0")), None);
        assert_eq!(refuse_agent(Some("buildd/not-a-version")), None);
        assert_eq!(refuse_agent(None), None);
        assert_eq!(parse("1.2"), None);
        assert_eq!(parse("1.2.3.4"), None);
    }
}
