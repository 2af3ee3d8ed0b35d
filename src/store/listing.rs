//! Lists: the `WHERE` clause of a filtered, paged read, built from what was asked.
//!
//! A condition that was not asked for is left out of the SQL rather than written as
//! `$n IS NULL OR …`: Postgres plans a prepared statement once for every value, and a
//! keyset condition hidden behind an `OR` cannot become an index range, so each page
//! would cost as much as reading every page before it.

use super::sql::Arg;
use crate::core::page::Position;

/// Which way a list runs through its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    OldestFirst,
    NewestFirst,
}

impl Order {
    fn sql(self) -> &'static str {
        match self {
            Order::OldestFirst => "ASC",
            Order::NewestFirst => "DESC",
        }
    }
}

/// How a list's key is stored: a time and an id (`created_at, id`), or one number.
#[derive(Debug, Clone, Copy)]
pub enum Key {
    TimeAndId(&'static str, &'static str),
    Number(&'static str),
}

/// The conditions of one list query and their values, numbered in order.
#[derive(Debug, Default)]
pub struct Conditions {
    clauses: Vec<String>,
    values: Vec<Arg>,
}

impl Conditions {
    /// Adds `clause`, whose `?`s stand for `values` in order.
    pub fn push(&mut self, clause: &str, values: Vec<Arg>) {
        let mut numbered = String::with_capacity(clause.len() + 8);
        let mut values = values.into_iter();
        for c in clause.chars() {
            if c == '?' {
                let value = values.next().expect("a value for each placeholder");
                self.values.push(value);
                numbered.push_str(&format!("${}", self.values.len()));
            } else {
                numbered.push(c);
            }
        }
        assert!(values.next().is_none(), "a placeholder for each value");
        self.clauses.push(numbered);
    }

    /// `column IN (…values)`; with no values, no row.
    pub fn push_in(&mut self, column: &str, values: Vec<String>) {
        if values.is_empty() {
            self.push("0 = 1", Vec::new());
            return;
        }
        let marks = vec!["?"; values.len()].join(", ");
        let values = values.iter().map(|v| Arg::from(v.as_str())).collect();
        self.push(&format!("{column} IN ({marks})"), values);
    }

    /// Rows past `after` in the list's `order` of `key`.
    pub fn after(&mut self, key: Key, order: Order, after: Option<&Position>) {
        let Some(after) = after else { return };
        let op = match order {
            Order::OldestFirst => ">",
            Order::NewestFirst => "<",
        };
        match key {
            Key::TimeAndId(at, id) => self.push(
                &format!("({at}, {id}) {op} (?, ?)"),
                vec![Arg::Time(Some(after.time())), Arg::from(after.id.as_str())],
            ),
            Key::Number(at) => self.push(&format!("{at} {op} ?"), vec![Arg::from(after.at)]),
        }
    }

    /// `… WHERE … ORDER BY … LIMIT n` for `select` (`SELECT … FROM …`), and its values.
    pub fn query(mut self, select: &str, key: Key, order: Order, limit: u32) -> (String, Vec<Arg>) {
        let dir = order.sql();
        let order_by = match key {
            Key::TimeAndId(at, id) => format!("{at} {dir}, {id} {dir}"),
            Key::Number(at) => format!("{at} {dir}"),
        };
        let filter = self.filter();
        self.values.push(Arg::from(i64::from(limit)));
        let sql = format!(
            "{select}{filter} ORDER BY {order_by} LIMIT ${}",
            self.values.len()
        );
        (sql, self.values)
    }

    /// ` WHERE a AND b`, or nothing; for queries that are not lists.
    pub fn filter(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    pub fn into_values(self) -> Vec<Arg> {
        self.values
    }
}

/// The `LIKE` pattern matching text that contains `needle` (lower-cased, for a
/// `LOWER(column) LIKE ? ESCAPE '\'`), with `%`, `_` and `\` in it taken literally.
pub fn contains_pattern(needle: &str) -> String {
    let mut pattern = String::from("%");
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_across_conditions_and_the_limit() {
        let mut w = Conditions::default();
        w.push("a = ?", vec![Arg::from("x")]);
        w.push(
            "(b LIKE ? OR c LIKE ?)",
            vec![Arg::from("p"), Arg::from("p")],
        );
        w.after(
            Key::TimeAndId("created_at", "id"),
            Order::NewestFirst,
            Some(&Position::new(5, "t")),
        );
        let (sql, values) = w.query(
            "SELECT * FROM t",
            Key::TimeAndId("created_at", "id"),
            Order::NewestFirst,
            10,
        );
        assert_eq!(
            sql,
            "SELECT * FROM t WHERE a = $1 AND (b LIKE $2 OR c LIKE $3) AND \
             (created_at, id) < ($4, $5) ORDER BY created_at DESC, id DESC LIMIT $6"
        );
        assert_eq!(values.len(), 6);
    }

    #[test]
    fn no_conditions_leave_no_where() {
        let (sql, _) = Conditions::default().query(
            "SELECT seq FROM m",
            Key::Number("seq"),
            Order::OldestFirst,
            2,
        );
        assert_eq!(sql, "SELECT seq FROM m ORDER BY seq ASC LIMIT $1");
    }

    #[test]
    fn search_patterns_take_wildcards_literally() {
        assert_eq!(
            contains_pattern("Fix 100%_done\\"),
            "%fix 100\\%\\_done\\\\%"
        );
    }
}
