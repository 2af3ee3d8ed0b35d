//! When the agent may claim: inside its `--hours`, and (with `--when-idle`) once the
//! person at the machine has been away long enough.

use std::time::Duration;

use chrono::{Local, NaiveDateTime, Timelike};

use super::idle::IdleClock;
use crate::api::AgentState;
use crate::core::hours::Hours;

/// How often the person's idle time is read: coming back stops claims within this.
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Availability {
    pub hours: Option<Hours>,
    /// Claim only after the person has been idle this long, as `clock` tells.
    pub when_idle: Option<(Duration, Box<dyn IdleClock>)>,
}

impl Availability {
    /// Why the agent may not claim now, or `None` when it may.
    pub fn blocked(&self) -> Option<AgentState> {
        self.blocked_at(Local::now().naive_local())
    }

    fn blocked_at(&self, local: NaiveDateTime) -> Option<AgentState> {
        if self.hours.as_ref().is_some_and(|h| !h.contains(local)) {
            return Some(AgentState::OutsideHours);
        }
        if let Some((wanted, clock)) = &self.when_idle {
            match clock.idle_for() {
                Ok(idle) if idle >= *wanted => {}
                Ok(_) => return Some(AgentState::PersonActive),
                // Unreadable now (it was readable at start): assume someone is there.
                Err(why) => {
                    tracing::warn!(error = %why, "cannot read the idle time; not claiming");
                    return Some(AgentState::PersonActive);
                }
            }
        }
        None
    }

    /// How long until the answer of [`Self::blocked`] may change; `None` if never.
    pub fn next_check(&self) -> Option<Duration> {
        let minute = self.hours.as_ref().map(|_| {
            // Windows change on the minute: look just after the next one.
            let second = u64::from(Local::now().second());
            Duration::from_secs(60 - second.min(59)) + Duration::from_millis(100)
        });
        let idle = self.when_idle.as_ref().map(|_| IDLE_CHECK_EVERY);
        match (minute, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use std::sync::Mutex;

    struct FakeClock(Mutex<Result<Duration, String>>);

    impl IdleClock for FakeClock {
        fn idle_for(&self) -> Result<Duration, String> {
            self.0.lock().unwrap().clone()
        }
    }

    fn wednesday(hh: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 12, 2)
            .unwrap()
            .and_hms_opt(hh, 0, 0)
            .unwrap()
    }

    #[test]
    fn hours_come_first_then_the_person() {
        let clock = FakeClock(Mutex::new(Ok(Duration::from_secs(60))));
        let a = Availability {
            hours: Some("Mon-Fri 19:00-08:00".parse().unwrap()),
            when_idle: Some((Duration::from_secs(300), Box::new(clock))),
        };
        assert_eq!(a.blocked_at(wednesday(12)), Some(AgentState::OutsideHours));
        assert_eq!(a.blocked_at(wednesday(20)), Some(AgentState::PersonActive));
    }

    #[test]
    fn an_away_person_lets_it_work_and_an_unreadable_clock_does_not() {
        let make = |idle: Result<Duration, String>| Availability {
            hours: None,
            when_idle: Some((
                Duration::from_secs(300),
                Box::new(FakeClock(Mutex::new(idle))),
            )),
        };
        assert_eq!(
            make(Ok(Duration::from_secs(300))).blocked_at(wednesday(12)),
            None
        );
        assert_eq!(
            make(Ok(Duration::from_secs(299))).blocked_at(wednesday(12)),
            Some(AgentState::PersonActive)
        );
        assert_eq!(
            make(Err("gone".into())).blocked_at(wednesday(12)),
            Some(AgentState::PersonActive)
        );
        assert_eq!(Availability::default().blocked_at(wednesday(12)), None);
        assert_eq!(Availability::default().next_check(), None);
        assert!(make(Ok(Duration::ZERO)).next_check() <= Some(IDLE_CHECK_EVERY));
    }
}
