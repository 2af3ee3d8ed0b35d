//! Paging through lists with opaque cursors.
//!
//! Every list is read in one fixed order of a unique key (a time and an id, or a
//! number), and a page ends at a key: the next page starts strictly after it. So a
//! row is never given twice nor skipped however many rows are inserted meanwhile
//! (those land before the first page of a newest-first list, or after the last one
//! of an oldest-first list). The cursor is that key, `p1.AT.ID`: clients treat it as
//! opaque (the `p1` lets the encoding change). Any cursor of that shape is a valid
//! place to start, a row's or not, so what the OpenAPI pattern allows is accepted.

use super::RuleError;
use super::time::{self, Timestamp};

/// The shape of a cursor, as the OpenAPI description states it.
pub const CURSOR_PATTERN: &str = r"^p1\.-?[0-9]{1,18}\.[A-Za-z0-9_-]{0,64}$";

/// A page's size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest page one request may ask for.
pub const MAX_LIMIT: u32 = 1000;

/// Where a list's order puts a row: its sort key. `at` is a time in milliseconds or a
/// sequence number; `id` breaks ties (empty where `at` alone is unique).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub at: i64,
    pub id: String,
}

impl Position {
    pub fn new(at: i64, id: impl Into<String>) -> Self {
        Position { at, id: id.into() }
    }

    /// `at` as a time, held within years 1 to 9999: a cursor may name any number, and
    /// the databases keep narrower ranges than an `i64` of milliseconds. Every stored
    /// time lies inside, so the held time orders the rows as `at` itself would.
    pub fn time(&self) -> Timestamp {
        const YEAR_1: i64 = -62_135_596_800_000;
        const YEAR_9999_END: i64 = 253_402_300_799_999;
        time::from_millis(self.at.clamp(YEAR_1, YEAR_9999_END))
    }

    /// The cursor clients send back as `cursor=`.
    pub fn encode(&self) -> String {
        format!("p1.{}.{}", self.at, self.id)
    }

    /// Reads back a cursor of [`CURSOR_PATTERN`]'s shape.
    pub fn decode(cursor: &str) -> Result<Position, RuleError> {
        let invalid = || {
            RuleError::Invalid("cursor is not one this server gives out (use nextCursor)".into())
        };
        let rest = cursor.strip_prefix("p1.").ok_or_else(invalid)?;
        let (at, id) = rest.split_once('.').ok_or_else(invalid)?;
        let digits = at.strip_prefix('-').unwrap_or(at);
        let id_ok = id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if digits.is_empty()
            || digits.len() > 18
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || !id_ok
        {
            return Err(invalid());
        }
        let at = at.parse().map_err(|_| invalid())?;
        Ok(Position::new(at, id))
    }
}

/// What a list request asks for: up to `limit` rows after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<Position>,
    pub limit: u32,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            after: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl PageRequest {
    /// The `limit` and `cursor` query parameters, checked: `limit` 1–[`MAX_LIMIT`],
    /// [`DEFAULT_LIMIT`] unless given.
    pub fn from_query(limit: Option<u32>, cursor: Option<&str>) -> Result<Self, RuleError> {
        Self::with_default(limit, cursor, DEFAULT_LIMIT)
    }

    /// Like [`PageRequest::from_query`] for lists whose pages default to `default`.
    pub fn with_default(
        limit: Option<u32>,
        cursor: Option<&str>,
        default: u32,
    ) -> Result<Self, RuleError> {
        let limit = limit.unwrap_or(default);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(RuleError::Invalid(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )));
        }
        let after = cursor.map(Position::decode).transpose()?;
        Ok(PageRequest { after, limit })
    }

    /// How many rows to read: one more than the page, to learn whether another follows.
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }
}

/// One page of a list, and where the next one starts (`None`: this is the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Position>,
}

impl<T> Page<T> {
    /// The page made of `rows` (read with [`PageRequest::fetch`], in the list's
    /// order, each with its position).
    pub fn of(rows: Vec<(Position, T)>, request: &PageRequest) -> Page<T> {
        let limit = request.limit as usize;
        let more = rows.len() > limit;
        let mut next = None;
        let mut items = Vec::with_capacity(rows.len().min(limit));
        for (position, item) in rows.into_iter().take(limit) {
            next = Some(position);
            items.push(item);
        }
        Page {
            items,
            next: next.filter(|_| more),
        }
    }

    /// The next page's cursor, for `nextCursor`.
    pub fn next_cursor(&self) -> Option<String> {
        self.next.as_ref().map(Position::encode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_the_position_it_encodes() {
        for position in [
            Position::new(1_700_000_000_123, "task-abc"),
            Position::new(-5, ""),
            Position::new(42, "id_with-dashes"),
        ] {
            assert_eq!(Position::decode(&position.encode()).unwrap(), position);
        }
    }

    #[test]
    fn a_cursor_the_server_did_not_make_is_refused() {
        let long = format!("p1.1.{}", "a".repeat(65));
        for bad in [
            "",
            "!!!",
            "p1.x.y",
            "p1.1",
            "p2.1.a",
            "p1.1.a b",
            "p1.1234567890123456789.a",
            &long,
        ] {
            let err = Position::decode(bad).unwrap_err();
            assert!(matches!(err, RuleError::Invalid(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn the_pattern_matches_what_decodes() {
        assert_eq!(CURSOR_PATTERN, r"^p1\.-?[0-9]{1,18}\.[A-Za-z0-9_-]{0,64}$");
        assert!(Position::decode("p1.-42.").is_ok());
        assert!(Position::decode("p1.999999999999999999.x-Y_z").is_ok());
    }

    #[test]
    fn any_cursor_time_stays_in_the_range_databases_keep() {
        use chrono::Datelike;
        assert_eq!(Position::new(-3_007_840_608_283_030, "").time().year(), 1);
        assert_eq!(
            Position::new(999_999_999_999_999_999, "").time().year(),
            9999
        );
        assert_eq!(
            Position::new(1_700_000_000_123, "")
                .time()
                .timestamp_millis(),
            1_700_000_000_123
        );
    }

    #[test]
    fn limits_outside_the_bounds_are_refused() {
        assert_eq!(PageRequest::from_query(None, None).unwrap().limit, 100);
        assert!(PageRequest::from_query(Some(0), None).is_err());
        assert!(PageRequest::from_query(Some(1001), None).is_err());
        assert_eq!(
            PageRequest::from_query(Some(1000), None).unwrap().fetch(),
            1001
        );
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_more_rows_follow() {
        let request = PageRequest {
            after: None,
            limit: 2,
        };
        let rows = |n: i64| (1..=n).map(|i| (Position::new(i, "x"), i)).collect();
        let full = Page::of(rows(3), &request);
        assert_eq!(full.items, vec![1, 2]);
        assert_eq!(
            full.next,
            Some(Position::new(2, "x")),
            "the next page starts after the last row"
        );
        let last = Page::of(rows(2), &request);
        assert_eq!((last.items, last.next), (vec![1, 2], None));
    }
}
