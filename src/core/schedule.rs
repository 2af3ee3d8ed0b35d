//! Schedules: a task made on a cron cadence, in a time zone.
//!
//! A cadence is a standard 5-field cron pattern (minute, hour, day of month, month,
//! day of week), or 6 fields with seconds first, read by `croner` in an IANA time zone
//! (`chrono-tz`) with Vixie cron's rules for daylight saving: a fixed time that a
//! spring-forward skips runs at the first instant after the gap, and one that a
//! fall-back repeats runs once; an interval pattern (`*/15 * * * *`) runs on real
//! elapsed time, both passes of a repeated hour included.
//!
//! When a schedule is due, [`run`] does what [`decide`] says: make the task, skip it
//! (the previous run's task has not ended), or pause the schedule (its tasks failed
//! `maxFailures` times in a row). Runs a stopped cluster missed are not made up: one
//! run, then the next occurrence after now.

use std::str::FromStr;

use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use super::RuleError;
use super::ids::{IdKind, new_id};
use super::model::{Schedule, Task, TaskStatus, TaskTemplate};
use super::time::Timestamp;

/// How many failed tasks in a row pause a schedule, unless it says otherwise.
pub const DEFAULT_MAX_FAILURES: i32 = 5;
/// The most a schedule may set.
pub const MAX_FAILURES_LIMIT: i32 = 100;
/// The longest cron pattern read.
pub const MAX_CRON_LEN: usize = 200;

/// A checked cron pattern in its time zone.
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: Cron,
    zone: Tz,
}

impl Cadence {
    /// Reads `pattern` in `timezone` (an IANA name such as `Europe/Paris`), refusing
    /// what cannot be read, and patterns that never come (the 30th of February).
    pub fn parse(pattern: &str, timezone: &str) -> Result<Cadence, RuleError> {
        if pattern.chars().count() > MAX_CRON_LEN {
            return Err(RuleError::Invalid(format!(
                "cron is longer than {MAX_CRON_LEN} characters"
            )));
        }
        let fields = pattern.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(RuleError::Invalid(format!(
                "cron must have 5 fields (minute hour day-of-month month day-of-week), or 6 \
                 with seconds first; {pattern:?} has {fields}"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| RuleError::Invalid(format!("cron {pattern:?} cannot be read: {e}")))?;
        let zone = Tz::from_str(timezone).map_err(|_| {
            RuleError::Invalid(format!(
                "timezone {timezone:?} is not an IANA time zone name (such as UTC or \
                 Europe/Paris)"
            ))
        })?;
        let cadence = Cadence { cron, zone };
        if cadence.next_after(super::time::now()).is_none() {
            return Err(RuleError::Invalid(format!(
                "cron {pattern:?} never comes: no date matches it"
            )));
        }
        Ok(cadence)
    }

    /// The first occurrence strictly after `after`; `None` when there is none.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let local = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.with_timezone(&chrono::Utc))
    }
}

/// What a due run of a schedule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// Make the task.
    Create,
    /// The task of the previous run has not ended: no task this time (counted).
    Skip,
    /// The schedule's tasks failed `maxFailures` times in a row: it pauses itself,
    /// saying why.
    Pause(String),
}

/// What a due run does, given the status of the previous run's task (`None`: no run
/// yet, or its task is gone) and how many of the schedule's tasks had failed in a row
/// before it; and how many have failed in a row now. Each task is judged once: a run
/// that skips leaves the previous task to the next run.
pub fn decide(previous: Option<TaskStatus>, failures_before: i32, max_failures: i32) -> (Run, i32) {
    match previous {
        Some(status) if !status.is_terminal() => (Run::Skip, failures_before),
        Some(TaskStatus::Failed) => {
            let failures = failures_before + 1;
            if failures >= max_failures {
                let why = format!(
                    "paused after {failures} failed tasks in a row; resume it once the cause \
                     is fixed"
                );
                (Run::Pause(why), failures)
            } else {
                (Run::Create, failures)
            }
        }
        // Completed, cancelled, or none yet: the chain of failures is broken.
        _ => (Run::Create, 0),
    }
}

/// One due run of `schedule` at `now`: the task it makes, if it makes one. The
/// schedule's counts, last run and next run move with it.
pub fn run(
    schedule: &mut Schedule,
    previous: Option<TaskStatus>,
    now: Timestamp,
) -> Result<Option<Task>, RuleError> {
    let cadence = Cadence::parse(&schedule.cron, &schedule.timezone)?;
    let (run, failures) = decide(
        previous,
        schedule.consecutive_failures,
        schedule.max_failures,
    );
    schedule.consecutive_failures = failures;
    let task = match run {
        Run::Create => {
            let task = schedule.task.task(schedule.workspace_id.clone(), now)?;
            schedule.runs += 1;
            schedule.last_run_at = Some(now);
            schedule.last_task_id = Some(task.id.clone());
            Some(task)
        }
        Run::Skip => {
            schedule.skipped += 1;
            None
        }
        Run::Pause(why) => {
            schedule.paused = true;
            schedule.paused_reason = Some(why);
            schedule.next_run_at = None;
            return Ok(None);
        }
    };
    schedule.next_run_at = cadence.next_after(now);
    Ok(task)
}

/// A new schedule, its cadence, template and limit checked; its first run is the
/// cadence's first occurrence after `now`.
pub fn new(
    workspace_id: String,
    cron: &str,
    timezone: &str,
    task: TaskTemplate,
    max_failures_asked: Option<i32>,
    created_by: &str,
    now: Timestamp,
) -> Result<Schedule, RuleError> {
    let cadence = Cadence::parse(cron, timezone)?;
    let max_failures = max_failures(max_failures_asked)?;
    // The template must make a task now, not fail at the first run.
    task.task(workspace_id.clone(), now)?;
    Ok(Schedule {
        id: new_id(IdKind::Schedule),
        workspace_id,
        cron: cron.split_whitespace().collect::<Vec<_>>().join(" "),
        timezone: timezone.to_owned(),
        task,
        paused: false,
        paused_reason: None,
        max_failures,
        consecutive_failures: 0,
        next_run_at: cadence.next_after(now),
        last_run_at: None,
        last_task_id: None,
        runs: 0,
        skipped: 0,
        created_by: created_by.to_owned(),
        created_at: now,
    })
}

/// A person pauses the schedule: no run until it is resumed.
pub fn pause(schedule: &mut Schedule) {
    schedule.paused = true;
    schedule.paused_reason = None;
    schedule.next_run_at = None;
}

/// A person resumes the schedule: its next run is the next occurrence after `now`,
/// and the failures that paused it are forgiven.
pub fn resume(schedule: &mut Schedule, now: Timestamp) -> Result<(), RuleError> {
    let cadence = Cadence::parse(&schedule.cron, &schedule.timezone)?;
    schedule.paused = false;
    schedule.paused_reason = None;
    schedule.consecutive_failures = 0;
    schedule.next_run_at = cadence.next_after(now);
    Ok(())
}

/// A schedule's `maxFailures`, checked: 1 to [`MAX_FAILURES_LIMIT`], default
/// [`DEFAULT_MAX_FAILURES`].
pub fn max_failures(asked: Option<i32>) -> Result<i32, RuleError> {
    let max = asked.unwrap_or(DEFAULT_MAX_FAILURES);
    if !(1..=MAX_FAILURES_LIMIT).contains(&max) {
        return Err(RuleError::Invalid(format!(
            "maxFailures must be between 1 and {MAX_FAILURES_LIMIT}"
        )));
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Timestamp {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn patterns_and_zones_are_checked_with_the_reason() {
        let err = |p: &str, tz: &str| Cadence::parse(p, tz).unwrap_err().to_string();
        assert!(err("* * *", "UTC").contains("5 fields"));
        assert!(err("1 2 3 4 5 6 7", "UTC").contains("has 7"));
        assert!(err("61 * * * *", "UTC").contains("cannot be read"));
        assert!(err("0 9 * * MON", "Mars/Olympus").contains("IANA"));
        assert!(err("0 0 30 2 *", "UTC").contains("never comes"));
        assert!(Cadence::parse("0 9 * * 1-5", "Europe/Paris").is_ok());
        assert!(
            Cadence::parse("*/2 * * * * *", "UTC").is_ok(),
            "seconds first"
        );
    }

    #[test]
    fn the_next_run_is_in_the_schedules_zone() {
        let weekdays = Cadence::parse("0 9 * * 1-5", "America/New_York").unwrap();
        // Friday 2026-12-04 15:00 UTC is 10:00 in New York: next is Monday 09:00 EST.
        let next = weekdays.next_after(utc(2026, 12, 4, 15, 0, 0)).unwrap();
        assert_eq!(next, utc(2026, 12, 7, 14, 0, 0));
        let every_two_seconds = Cadence::parse("*/2 * * * * *", "UTC").unwrap();
        let next = every_two_seconds
            .next_after(utc(2026, 1, 1, 0, 0, 0))
            .unwrap();
        assert_eq!(next, utc(2026, 1, 1, 0, 0, 2));
    }

    #[test]
    fn a_fixed_time_skipped_by_spring_forward_runs_right_after_the_gap() {
        // Berlin skips 02:00–03:00 on 2026-03-29 (01:00 UTC).
        let half_past_two = Cadence::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let next = half_past_two
            .next_after(utc(2026, 3, 28, 23, 0, 0))
            .unwrap();
        assert_eq!(
            next,
            utc(2026, 3, 29, 1, 0, 0),
            "03:00 CEST, the first instant after"
        );
        let after = half_past_two.next_after(next).unwrap();
        assert_eq!(
            after,
            utc(2026, 3, 30, 0, 30, 0),
            "then 02:30 CEST as usual"
        );
    }

    #[test]
    fn a_fixed_time_repeated_by_fall_back_runs_once() {
        // Berlin repeats 02:00–03:00 on 2026-10-25: 02:30 CEST (00:30 UTC), then
        // 02:30 CET (01:30 UTC).
        let half_past_two = Cadence::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let first = half_past_two
            .next_after(utc(2026, 10, 24, 22, 0, 0))
            .unwrap();
        assert_eq!(first, utc(2026, 10, 25, 0, 30, 0));
        let next = half_past_two.next_after(first).unwrap();
        assert_eq!(
            next,
            utc(2026, 10, 26, 1, 30, 0),
            "not again at 01:30 UTC that day"
        );
    }

    #[test]
    fn an_interval_runs_on_elapsed_time_through_the_repeated_hour() {
        let hourly = Cadence::parse("0 * * * *", "Europe/Berlin").unwrap();
        let mut at = utc(2026, 10, 24, 23, 30, 0);
        let mut runs = Vec::new();
        for _ in 0..4 {
            at = hourly.next_after(at).unwrap();
            runs.push(at);
        }
        // 02:00 CEST and 02:00 CET are both real hours.
        assert_eq!(
            runs,
            [
                utc(2026, 10, 25, 0, 0, 0),
                utc(2026, 10, 25, 1, 0, 0),
                utc(2026, 10, 25, 2, 0, 0),
                utc(2026, 10, 25, 3, 0, 0),
            ]
        );
    }

    #[test]
    fn a_due_run_skips_an_unfinished_task_and_pauses_after_failures() {
        use TaskStatus::*;
        assert_eq!(decide(None, 0, 5), (Run::Create, 0));
        for unfinished in [Pending, Blocked, Assigned, Running, WaitingInput, Planned] {
            assert_eq!(decide(Some(unfinished), 3, 5), (Run::Skip, 3));
        }
        assert_eq!(decide(Some(Completed), 3, 5), (Run::Create, 0));
        assert_eq!(decide(Some(Cancelled), 3, 5), (Run::Create, 0));
        assert_eq!(decide(Some(Failed), 3, 5), (Run::Create, 4));
        let (run, failures) = decide(Some(Failed), 4, 5);
        assert!(matches!(run, Run::Pause(why) if why.contains("5 failed tasks in a row")));
        assert_eq!(failures, 5);
        assert!(max_failures(Some(0)).is_err());
        assert_eq!(max_failures(None), Ok(DEFAULT_MAX_FAILURES));
    }

    fn schedule(cron: &str) -> Schedule {
        let now = crate::core::time::now();
        Schedule {
            id: "sch-1".into(),
            workspace_id: "ws-1".into(),
            cron: cron.into(),
            timezone: "UTC".into(),
            task: crate::core::model::TaskTemplate {
                title: "Nightly".into(),
                ..Default::default()
            },
            paused: false,
            paused_reason: None,
            max_failures: 2,
            consecutive_failures: 0,
            next_run_at: Some(now),
            last_run_at: None,
            last_task_id: None,
            runs: 0,
            skipped: 0,
            created_by: "admin".into(),
            created_at: now,
        }
    }

    #[test]
    fn a_new_schedule_is_checked_whole_and_runs_next_in_its_zone() {
        let now = utc(2026, 12, 4, 15, 0, 0);
        let template = |title: &str| crate::core::model::TaskTemplate {
            title: title.into(),
            ..Default::default()
        };
        let made = new(
            "ws-1".into(),
            " 0  9 * * 1-5 ",
            "America/New_York",
            template("Standup notes"),
            None,
            "admin",
            now,
        )
        .unwrap();
        assert!(made.id.starts_with("sch-"));
        assert_eq!(made.cron, "0 9 * * 1-5");
        assert_eq!(made.next_run_at, Some(utc(2026, 12, 7, 14, 0, 0)));
        assert_eq!(made.max_failures, DEFAULT_MAX_FAILURES);
        let refused = |cron: &str, title: &str, max: Option<i32>| {
            new(
                "ws-1".into(),
                cron,
                "UTC",
                template(title),
                max,
                "admin",
                now,
            )
            .unwrap_err()
            .to_string()
        };
        assert!(refused("0 9 * *", "t", None).contains("5 fields"));
        assert!(refused("0 9 * * *", "  ", None).contains("title"));
        assert!(refused("0 9 * * *", "t", Some(101)).contains("maxFailures"));
    }

    #[test]
    fn runs_make_tasks_count_skips_and_pause_themselves() {
        let now = utc(2026, 12, 3, 12, 0, 0);
        let mut s = schedule("0 * * * *");
        let task = run(&mut s, None, now).unwrap().unwrap();
        assert_eq!(task.title, "Nightly");
        assert_eq!(task.workspace_id, "ws-1");
        assert_eq!(s.last_task_id.as_deref(), Some(task.id.as_str()));
        assert_eq!((s.runs, s.skipped), (1, 0));
        assert_eq!(s.next_run_at, Some(utc(2026, 12, 3, 13, 0, 0)));
        assert_eq!(run(&mut s, Some(TaskStatus::Running), now).unwrap(), None);
        assert_eq!((s.runs, s.skipped), (1, 1));
        assert!(
            run(&mut s, Some(TaskStatus::Failed), now)
                .unwrap()
                .is_some()
        );
        assert_eq!(s.consecutive_failures, 1);
        assert_eq!(run(&mut s, Some(TaskStatus::Failed), now).unwrap(), None);
        assert!(s.paused);
        assert_eq!(s.next_run_at, None);
        assert!(
            s.paused_reason
                .as_deref()
                .unwrap()
                .contains("2 failed tasks")
        );
        resume(&mut s, now).unwrap();
        assert!(!s.paused && s.paused_reason.is_none());
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!(s.next_run_at, Some(utc(2026, 12, 3, 13, 0, 0)));
        pause(&mut s);
        assert!(s.paused && s.paused_reason.is_none() && s.next_run_at.is_none());
    }
}
