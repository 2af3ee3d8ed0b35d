//! Connected agents: what an agent may report about itself, and when it counts as gone.
//!
//! An agent reports itself (`PUT /api/agents/:id`) when it starts, when its event
//! stream reconnects, and when its state or running tasks change. While its stream is
//! open, the server it is connected to refreshes it (one write per server per
//! [`refresh_interval`], for all of its agents at once), so an idle fleet costs the
//! database almost nothing. An agent not seen for a lease is gone: killed, asleep or
//! cut off, it leaves `GET /api/agents` within one lease.

use std::time::Duration;

use super::RuleError;
use super::claim::MAX_TASKS_PER_CLAIM;
use super::model::AgentState;
use super::time::Timestamp;

pub const MAX_ID_LEN: usize = 64;
pub const MAX_HOSTNAME_LEN: usize = 255;
pub const MAX_VERSION_LEN: usize = 100;
pub const MAX_RUNNERS: usize = 16;
pub const MAX_RUNNER_NAME_LEN: usize = 64;

/// An agent id: what the agent chose, letters, digits, `-` and `_`.
pub fn check_id(id: &str) -> Result<(), RuleError> {
    let fits = (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fits {
        Ok(())
    } else {
        Err(RuleError::Invalid(format!(
            "an agent id is 1 to {MAX_ID_LEN} letters, digits, '-' or '_'"
        )))
    }
}

/// A report's fields: bounded, so that one agent cannot fill the table.
pub fn check_report(
    hostname: &str,
    version: &str,
    runners: &[String],
    running: &[String],
) -> Result<(), RuleError> {
    let invalid = |why: String| Err(RuleError::Invalid(why));
    let fits = |text: &str, max: usize| !text.trim().is_empty() && text.chars().count() <= max;
    if !fits(hostname, MAX_HOSTNAME_LEN) {
        return invalid(format!(
            "hostname must be 1 to {MAX_HOSTNAME_LEN} characters"
        ));
    }
    if !fits(version, MAX_VERSION_LEN) {
        return invalid(format!("version must be 1 to {MAX_VERSION_LEN} characters"));
    }
    if runners.len() > MAX_RUNNERS || !runners.iter().all(|r| fits(r, MAX_RUNNER_NAME_LEN)) {
        return invalid(format!(
            "runners are at most {MAX_RUNNERS} names of 1 to {MAX_RUNNER_NAME_LEN} characters"
        ));
    }
    if running.len() > MAX_TASKS_PER_CLAIM as usize || running.iter().any(|t| check_id(t).is_err())
    {
        return invalid(format!(
            "running lists at most {MAX_TASKS_PER_CLAIM} task ids"
        ));
    }
    Ok(())
}

/// What an agent is doing: `blocked` says why it does not claim (outside its hours,
/// its person active), which wins over running tasks it is finishing.
pub fn state_of(blocked: Option<AgentState>, running: usize) -> AgentState {
    match blocked {
        Some(why) => why,
        None if running > 0 => AgentState::Working,
        None => AgentState::Waiting,
    }
}

/// Agents last seen before this are gone.
pub fn seen_after(now: Timestamp, lease_ttl: Duration) -> Timestamp {
    let ttl = chrono::Duration::from_std(lease_ttl).unwrap_or(chrono::Duration::MAX);
    now.checked_sub_signed(ttl).unwrap_or(Timestamp::MIN_UTC)
}

/// How often a server refreshes the agents whose streams it holds: three times a
/// lease, so that one late refresh never lets a connected agent look gone.
pub fn refresh_interval(lease_ttl: Duration) -> Duration {
    (lease_ttl / 3).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::time;

    #[test]
    fn ids_are_short_and_plain() {
        assert!(check_id("agt-0123abc_Z").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reports_are_bounded() {
        let runners = vec!["claude".to_owned()];
        assert!(check_report("laptop", "0.1.0", &runners, &[]).is_ok());
        assert!(check_report(" ", "0.1.0", &runners, &[]).is_err());
        assert!(check_report("laptop", "", &runners, &[]).is_err());
        let many = vec!["r".to_owned(); MAX_RUNNERS + 1];
        assert!(check_report("laptop", "0.1.0", &many, &[]).is_err());
        let tasks = vec!["task-1".to_owned(); MAX_TASKS_PER_CLAIM as usize + 1];
        assert!(check_report("laptop", "0.1.0", &runners, &tasks).is_err());
        assert!(check_report("laptop", "0.1.0", &runners, &["a b".to_owned()]).is_err());
    }

    #[test]
    fn why_it_does_not_claim_wins_over_what_it_finishes() {
        assert_eq!(state_of(None, 0), AgentState::Waiting);
        assert_eq!(state_of(None, 2), AgentState::Working);
        assert_eq!(
            state_of(Some(AgentState::OutsideHours), 2),
            AgentState::OutsideHours
        );
        assert_eq!(
            state_of(Some(AgentState::PersonActive), 0),
            AgentState::PersonActive
        );
    }

    #[test]
    fn an_agent_is_gone_one_lease_after_it_was_last_seen() {
        let now = time::now();
        let lease = Duration::from_secs(60);
        assert_eq!(seen_after(now, lease), now - chrono::Duration::seconds(60));
        assert!(refresh_interval(lease) * 3 <= lease);
    }
}
