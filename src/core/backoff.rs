//! The one pause schedule for trying something again: the agent and the client after
//! a failed request or a dropped stream, the server after a failed GitHub dispatch.

use std::time::Duration;

/// A pause before trying again after `attempt` failures: doubling from 250 ms up to
/// 10 s, with jitter (between half and all of it), so that a fleet that lost its
/// server does not come back in one wave.
pub fn backoff(attempt: u32) -> Duration {
    use rand::RngExt;
    ceiling(attempt).mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The longest pause after `attempt` failures.
fn ceiling(attempt: u32) -> Duration {
    Duration::from_millis(250)
        .saturating_mul(1 << attempt.min(8))
        .min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_ten_seconds_with_jitter() {
        assert_eq!(ceiling(0), Duration::from_millis(250));
        assert_eq!(ceiling(3), Duration::from_secs(2));
        assert_eq!(ceiling(6), Duration::from_secs(10));
        assert_eq!(ceiling(u32::MAX), Duration::from_secs(10));
        for attempt in 0..10 {
            let pause = backoff(attempt);
            assert!(pause >= ceiling(attempt) / 2 && pause <= ceiling(attempt));
        }
    }
}
