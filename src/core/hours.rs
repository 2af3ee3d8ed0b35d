//! Working hours: when `buildd agent --hours SPEC` may claim.
//!
//! A spec is a comma-separated list of windows in the machine's local time, each a
//! day or day range, a time range, or both: `Mon-Fri 19:00-08:00,Sat-Sun`. A window's
//! days are the days it *starts* on; a time range whose end is not after its start
//! runs past midnight into the next day (so `Fri 19:00-08:00` ends Saturday 08:00, and
//! `Sun 22:00-02:00` ends Monday 02:00). Windows are read against the wall clock, not
//! against a count of hours, so a daylight-saving change moves nothing: `19:00` is
//! 19:00 on the clock whatever the offset that day.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDateTime, Timelike};

const MINUTES_PER_DAY: u16 = 24 * 60;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The windows an agent may claim in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hours {
    windows: Vec<Window>,
    spec: String,
}

/// One window: the days it starts on (Monday first), and its start and end in minutes
/// after midnight; `end <= start` means it ends the next day.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    days: [bool; 7],
    start: u16,
    end: u16,
}

impl Hours {
    /// Whether the local wall-clock time `at` lies inside a window.
    pub fn contains(&self, at: NaiveDateTime) -> bool {
        let day = at.weekday().num_days_from_monday() as usize;
        let minute = (at.hour() * 60 + at.minute()) as u16;
        self.windows.iter().any(|w| w.contains(day, minute))
    }
}

impl Window {
    fn contains(&self, day: usize, minute: u16) -> bool {
        let yesterday = (day + 6) % 7;
        if self.start < self.end {
            self.days[day] && (self.start..self.end).contains(&minute)
        } else {
            (self.days[day] && minute >= self.start) || (self.days[yesterday] && minute < self.end)
        }
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

impl FromStr for Hours {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let windows = spec
            .split(',')
            .map(|part| {
                parse_window(part.trim()).map_err(|why| format!("in '{}': {why}", part.trim()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Hours {
            windows,
            spec: spec.trim().to_owned(),
        })
    }
}

/// `DAYS`, `HH:MM-HH:MM`, or `DAYS HH:MM-HH:MM`.
fn parse_window(text: &str) -> Result<Window, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (days, times) = match words.as_slice() {
        [] => return Err("an empty window (write e.g. 'Mon-Fri 19:00-08:00')".into()),
        [one] if one.contains(':') => (None, Some(*one)),
        [one] => (Some(*one), None),
        [days, times] => (Some(*days), Some(*times)),
        _ => {
            return Err(
                "a window is days, a time range, or days then a time range (e.g. 'Sat-Sun' or 'Mon-Fri 19:00-08:00')"
                    .into(),
            );
        }
    };
    let days = match days {
        Some(days) => parse_days(days)?,
        None => [true; 7],
    };
    let (start, end) = match times {
        Some(times) => {
            let (start, end) = times.split_once('-').ok_or("a time range is HH:MM-HH:MM")?;
            let (start, end) = (parse_time(start)?, parse_time(end)?);
            if start == MINUTES_PER_DAY {
                return Err("a window cannot start at 24:00; start it at 00:00".into());
            }
            if start == end {
                return Err(
                    "the window starts and ends at the same time; leave out the times for a whole day"
                        .into(),
                );
            }
            (start, end)
        }
        None => (0, MINUTES_PER_DAY),
    };
    Ok(Window { days, start, end })
}

/// `Mon`, `monday`, or a range `Fri-Mon` (which wraps over the week's end).
fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (parse_day(first)?, parse_day(last)?),
        None => {
            let day = parse_day(text)?;
            (day, day)
        }
    };
    let mut day = first;
    loop {
        days[day] = true;
        if day == last {
            return Ok(days);
        }
        day = (day + 1) % 7;
    }
}

fn parse_day(text: &str) -> Result<usize, String> {
    let lower = text.to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|d| *d == lower)
        .or_else(|| FULL_DAY_NAMES.iter().position(|d| *d == lower))
        .ok_or_else(|| format!("'{text}' is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

/// `HH:MM` from `00:00` to `24:00`, in minutes after midnight.
fn parse_time(text: &str) -> Result<u16, String> {
    let bad = || format!("'{text}' is not a time of day (HH:MM, 00:00 to 24:00)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone, Utc, Weekday};

    /// A wall-clock time in the week of Monday 2026-11-30.
    fn at(day: Weekday, hh: u32, mm: u32) -> NaiveDateTime {
        let monday = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let date = monday + chrono::Duration::days(i64::from(day.num_days_from_monday()));
        assert_eq!(date.weekday(), day);
        date.and_hms_opt(hh, mm, 0).unwrap()
    }

    fn hours(spec: &str) -> Hours {
        spec.parse().unwrap()
    }

    #[test]
    fn the_issues_example_covers_weeknights_and_weekends() {
        let h = hours("Mon-Fri 19:00-08:00,Sat-Sun");
        assert!(
            !h.contains(at(Weekday::Mon, 7, 59)),
            "the weekend ends at midnight; Monday's night starts at 19:00"
        );
        assert!(h.contains(at(Weekday::Sun, 23, 0)));
        assert!(!h.contains(at(Weekday::Mon, 8, 0)), "the end is not inside");
        assert!(!h.contains(at(Weekday::Wed, 12, 0)));
        assert!(h.contains(at(Weekday::Wed, 19, 0)), "the start is inside");
        assert!(
            h.contains(at(Weekday::Thu, 3, 0)),
            "Wednesday's night runs into Thursday"
        );
        assert!(
            h.contains(at(Weekday::Sat, 7, 59)),
            "Friday's night runs into Saturday"
        );
        assert!(h.contains(at(Weekday::Sat, 12, 0)));
    }

    #[test]
    fn a_window_past_midnight_ends_the_next_day() {
        let h = hours("Fri 22:00-02:00");
        assert!(
            !h.contains(at(Weekday::Fri, 1, 0)),
            "Thursday starts no window"
        );
        assert!(h.contains(at(Weekday::Fri, 22, 0)));
        assert!(h.contains(at(Weekday::Sat, 1, 59)));
        assert!(!h.contains(at(Weekday::Sat, 2, 0)));
    }

    #[test]
    fn the_week_wraps_from_sunday_to_monday() {
        let h = hours("Sun 22:00-02:00");
        assert!(h.contains(at(Weekday::Mon, 1, 0)));
        assert!(!h.contains(at(Weekday::Mon, 22, 30)));
        let h = hours("Fri-Mon");
        for day in [Weekday::Fri, Weekday::Sat, Weekday::Sun, Weekday::Mon] {
            assert!(h.contains(at(day, 12, 0)), "{day}");
        }
        assert!(!h.contains(at(Weekday::Tue, 12, 0)));
    }

    #[test]
    fn times_alone_mean_every_day_and_24_00_is_midnight() {
        let h = hours("09:00-17:30");
        assert!(h.contains(at(Weekday::Sun, 17, 29)));
        assert!(!h.contains(at(Weekday::Sun, 17, 30)));
        let h = hours("sat 18:00-24:00");
        assert!(h.contains(at(Weekday::Sat, 23, 59)));
        assert!(!h.contains(at(Weekday::Sun, 0, 0)));
    }

    #[test]
    fn daylight_saving_changes_move_no_window() {
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let local = |utc: chrono::DateTime<Utc>| utc.with_timezone(&berlin).naive_local();
        // 2026-03-29: at 01:00 UTC Berlin's clocks go from 02:00 to 03:00.
        let h = hours("Sun 01:00-03:00");
        let before = Utc.with_ymd_and_hms(2026, 3, 29, 0, 59, 0).unwrap();
        assert_eq!(local(before).hour(), 1);
        assert!(h.contains(local(before)));
        assert!(
            !h.contains(local(before + chrono::Duration::minutes(1))),
            "one real minute later the clock says 03:00: the window is over"
        );
        // 2026-10-25: at 01:00 UTC the clocks go from 03:00 back to 02:00, so 02:15
        // happens twice, and both are inside a window at 02:00-02:30.
        let h = hours("Sun 02:00-02:30");
        let first = Utc.with_ymd_and_hms(2026, 10, 25, 0, 15, 0).unwrap();
        let second = Utc.with_ymd_and_hms(2026, 10, 25, 1, 15, 0).unwrap();
        assert_eq!(local(first), local(second));
        assert!(h.contains(local(first)) && h.contains(local(second)));
        assert!(!h.contains(local(second + chrono::Duration::minutes(30))));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("", "empty window"),
            ("Mon-Fri 19:00-08:00,", "empty window"),
            ("Funday", "'Funday' is not a day"),
            ("Mon-Fri 25:00-08:00", "'25:00' is not a time"),
            ("Mon 9-17", "'9' is not a time"),
            ("Mon 09:00", "HH:MM-HH:MM"),
            ("Mon 09:00-09:00", "same time"),
            ("Mon 24:00-01:00", "cannot start at 24:00"),
            ("Mon Tue 09:00-10:00", "a window is days"),
            ("Mon 09:60-10:00", "'09:60' is not a time"),
        ] {
            let err = spec.parse::<Hours>().unwrap_err();
            assert!(err.contains(says), "{spec:?}: {err}");
        }
    }
}
