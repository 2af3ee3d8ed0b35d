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

/// Midnight UTC of the day `at` falls in: the start of the window `maxCostPerDay` counts.
pub fn utc_day_start(at: Timestamp) -> Timestamp {
    let midnight = at.date_naive().and_hms_opt(0, 0, 0).unwrap_or_default();
    Utc.from_utc_datetime(&midnight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_start_is_utc_midnight() {
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 23, 59, 59).unwrap();
        assert_eq!(
            utc_day_start(at),
            Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn now_has_no_sub_millisecond_part() {
        assert_eq!(now().timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
