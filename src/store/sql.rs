//! What a database must provide for [`super::queries`] to run on it.
//!
//! buildd's queries and write sequences are written once, in `queries.rs`, against the
//! small interface here: run a statement with [`Arg`]s, read rows through a
//! [`Reader`], insert many rows at once, and run a closure in a read connection or a
//! write transaction. SQLite and Postgres each implement only that (`sqlite.rs`,
//! `postgres.rs`), plus the few words of SQL in which they differ ([`Dialect`]).
//!
//! Statements use Postgres's `$1, $2, …` placeholders; the SQLite backend reads them
//! as its own `?1, ?2, …`. Values travel as [`Arg`]s, so each backend binds a
//! timestamp, a flag or a null of a known type the way its driver wants (SQLite keeps
//! times as milliseconds, Postgres as `TIMESTAMPTZ`).

use std::future::Future;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::watch;

use super::{Result, StoreError, parse_column};
use crate::core::time::Timestamp;

/// One value bound to a placeholder. Nulls carry their type, which Postgres needs.
#[derive(Debug, Clone)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Real(Option<f64>),
    Flag(bool),
    Time(Option<Timestamp>),
    Bytes(Vec<u8>),
}

/// `args![a, b, …]`: the values of a statement's placeholders, in order.
macro_rules! args {
    ($($value:expr),* $(,)?) => { vec![$($crate::store::sql::Arg::from($value)),*] };
}
pub(crate) use args;

/// A list of ids, stored as JSON text.
impl From<&[String]> for Arg {
    fn from(v: &[String]) -> Self {
        Arg::Text(Some(
            serde_json::to_string(v).unwrap_or_else(|_| "[]".into()),
        ))
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(Some(v.clone()))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}
impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Self {
        Arg::Text(v.clone())
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_owned))
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Self {
        Arg::Int(Some(v.into()))
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Self {
        Arg::Int(Some(v.into()))
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}
impl From<f64> for Arg {
    fn from(v: f64) -> Self {
        Arg::Real(Some(v))
    }
}
impl From<Option<f64>> for Arg {
    fn from(v: Option<f64>) -> Self {
        Arg::Real(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Flag(v)
    }
}
impl From<Timestamp> for Arg {
    fn from(v: Timestamp) -> Self {
        Arg::Time(Some(v))
    }
}
impl From<Option<Timestamp>> for Arg {
    fn from(v: Option<Timestamp>) -> Self {
        Arg::Time(v)
    }
}
impl From<&[u8]> for Arg {
    fn from(v: &[u8]) -> Self {
        Arg::Bytes(v.to_vec())
    }
}
/// JSON is stored as the text serde_json wrote, on both databases, so that every value
/// reads back exactly as it was written.
impl From<Option<&Value>> for Arg {
    fn from(v: Option<&Value>) -> Self {
        Arg::Text(v.map(Value::to_string))
    }
}

/// Makes a `T` of each row a query returns.
pub trait RowMap<T>: FnMut(&mut Reader) -> Result<T> + Send {}
impl<T, F: FnMut(&mut Reader) -> Result<T> + Send> RowMap<T> for F {}

/// One column of a result row, as the backend's driver reads it.
pub trait Cells {
    fn text(&self, index: usize) -> Result<Option<String>>;
    fn int(&self, index: usize) -> Result<Option<i64>>;
    fn real(&self, index: usize) -> Result<Option<f64>>;
    fn flag(&self, index: usize) -> Result<bool>;
    fn time(&self, index: usize) -> Result<Option<Timestamp>>;
    fn bytes(&self, index: usize) -> Result<Vec<u8>>;
}

/// Reads a row's columns left to right, so a mapper lists its fields in the order of
/// the column list it selected, without numbering them.
pub struct Reader<'r> {
    cells: &'r dyn Cells,
    next: usize,
}

impl<'r> Reader<'r> {
    pub fn new(cells: &'r dyn Cells) -> Self {
        Reader { cells, next: 0 }
    }

    fn index(&mut self) -> usize {
        self.next += 1;
        self.next - 1
    }

    /// The next column, of whatever type the field it fills has.
    pub fn get<T: FromCell>(&mut self) -> Result<T> {
        let index = self.index();
        T::read(self.cells, index)
    }

    /// The next column, a string that names one of the core's enums.
    pub fn parse<T: std::str::FromStr<Err = String>>(&mut self) -> Result<T> {
        parse_column(&self.get::<String>()?)
    }

    /// The next column, a list of ids kept as JSON text.
    pub fn list(&mut self) -> Result<Vec<String>> {
        let text = self.get::<String>()?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Backend(format!("stored list unreadable: {e}")))
    }

    /// The next column, JSON text.
    pub fn json(&mut self) -> Result<Option<Value>> {
        self.get::<Option<String>>()?
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Backend(format!("stored JSON unreadable: {e}")))
            })
            .transpose()
    }
}

/// A Rust type one column reads into.
pub trait FromCell: Sized {
    fn read(cells: &dyn Cells, index: usize) -> Result<Self>;
}

fn required<T>(value: Option<T>, index: usize) -> Result<T> {
    value.ok_or_else(|| StoreError::Backend(format!("column {index} is unexpectedly NULL")))
}

macro_rules! from_cell {
    ($($ty:ty => $method:ident),* $(,)?) => {$(
        impl FromCell for Option<$ty> {
            fn read(cells: &dyn Cells, index: usize) -> Result<Self> {
                cells.$method(index)
            }
        }
        impl FromCell for $ty {
            fn read(cells: &dyn Cells, index: usize) -> Result<Self> {
                required(cells.$method(index)?, index)
            }
        }
    )*};
}
from_cell!(String => text, i64 => int, f64 => real, Timestamp => time);

impl FromCell for i32 {
    fn read(cells: &dyn Cells, index: usize) -> Result<Self> {
        let wide = required(cells.int(index)?, index)?;
        i32::try_from(wide).map_err(|e| StoreError::Backend(format!("column {index}: {e}")))
    }
}
impl FromCell for bool {
    fn read(cells: &dyn Cells, index: usize) -> Result<Self> {
        cells.flag(index)
    }
}
impl FromCell for Vec<u8> {
    fn read(cells: &dyn Cells, index: usize) -> Result<Self> {
        cells.bytes(index)
    }
}

/// The words of SQL in which the two databases differ.
pub struct Dialect {
    /// Appended to a `SELECT` that locks the rows it reads until commit. SQLite needs
    /// none: its write transactions hold the whole file's write lock.
    pub for_update: &'static str,
    /// Appended to the claim's pick: Postgres passes over tasks another claim holds.
    pub skip_locked: &'static str,
    /// Put after `FROM tasks` in the claim's pick, to walk the `tasks_pending` index.
    pub pending_index: &'static str,
    /// A statement run before the claim's pick, in its transaction, if any.
    pub before_pick: Option<&'static str>,
    /// The function that finds a text in another (`instr` or `strpos`): 1-based
    /// position, 0 when absent.
    pub position: &'static str,
    /// The events column holding the id subscribers see. Postgres stamps it after
    /// commit (the sequencer) so ids follow commit order; SQLite's commits are serial
    /// and its row id does.
    pub event_id: &'static str,
}

/// A connection or transaction that statements run in.
///
/// The futures are `Send` so that one generic program can run on Postgres's async
/// driver; SQLite's never wait, since rusqlite is synchronous and already runs on the
/// blocking pool.
pub trait Tx: Send {
    const DIALECT: Dialect;

    /// Runs a statement; returns how many rows it changed.
    fn execute(&mut self, sql: &str, args: Vec<Arg>) -> impl Future<Output = Result<u64>> + Send;

    /// Runs a query and maps each row it returns.
    fn query<T: Send>(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
        map: impl RowMap<T>,
    ) -> impl Future<Output = Result<Vec<T>>> + Send;

    /// Inserts `rows` into `table (columns)`, each a value per column, in order.
    fn insert_many(
        &mut self,
        table: &str,
        columns: &str,
        rows: Vec<Vec<Arg>>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The first row a query returns, if any.
    fn query_optional<T: Send>(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
        map: impl RowMap<T>,
    ) -> impl Future<Output = Result<Option<T>>> + Send {
        async move { Ok(self.query(sql, args, map).await?.into_iter().next()) }
    }

    /// The first column of the one row a query returns.
    fn scalar<T: FromCell + Send>(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
    ) -> impl Future<Output = Result<T>> + Send {
        async move {
            self.query_optional(sql, args, |r| r.get())
                .await?
                .ok_or_else(|| StoreError::Backend(format!("no row from {sql}")))
        }
    }
}

/// One database: where reads and write transactions run, and how the servers that
/// stream its events learn of new ones.
pub trait Backend: Send + Sync + 'static {
    type Read: Tx;
    type Write: Tx;

    /// Runs `work` on a connection for reads. The future `work` makes may borrow the
    /// connection, hence the box.
    fn read<T, F>(&self, work: F) -> impl Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Self::Read) -> BoxFuture<'c, Result<T>> + Send + 'static;

    /// Runs `work` in one transaction, committed if it succeeds and rolled back if not.
    fn write<T, F>(&self, work: F) -> impl Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Self::Write) -> BoxFuture<'c, Result<T>> + Send + 'static;

    /// Called after a commit that wrote events.
    fn events_written(&self);

    /// See [`super::Store::event_signal`].
    fn event_signal(&self) -> watch::Receiver<u64>;
}
