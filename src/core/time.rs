//! Timestamps.
//!
//! Every timestamp is cut to whole milliseconds when it is made, so that it reads back
//! identically from SQLite (integer milliseconds) and Postgres (microsecond
//! `timestamptz`), and sorts the same in both.

use chrono::{DateTime, TimeZone, Utc};

pub type Timestamp = DateTime<Utc>;

/// The current time, cut to milliseconds.
pub fn now() -> Timestamp {
    from_millis(Utc::now().timestamp_millis())
}

pub fn from_millis(ms: i64) -> Timestamp {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The UTC day `at` falls in, as `YYYY-MM-DD`: the window `maxCostPerDay` counts in.
pub fn utc_day(at: Timestamp) -> String {
    at.format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_dates() {
        let late = Utc.with_ymd_and_hms(2026, 11, 22, 23, 59, 59).unwrap();
        assert_eq!(utc_day(late), "2026-11-22");
        assert_eq!(utc_day(late + chrono::Duration::seconds(1)), "2026-11-23");
    }

    #[test]
    fn now_has_no_sub_millisecond_part() {
        assert_eq!(now().timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
