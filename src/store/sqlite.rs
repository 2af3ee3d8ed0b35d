//! The embedded store: one SQLite file in WAL mode.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool, where the
//! shared queries' futures (which never wait) are driven by `block_on`. All writes go
//! through one connection and open with `BEGIN IMMEDIATE`, which takes SQLite's single
//! write lock up front: a claim reads and updates under that lock, so no two claims
//! interleave, even from two processes on the same file (the busy timeout makes the
//! second wait). Reads use a few connections of their own, which WAL lets run beside
//! the writer.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use rusqlite::types::{Null, ToSqlOutput};
use rusqlite::{Connection, Row, ToSql, TransactionBehavior, params_from_iter};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::sql::{Arg, Backend, Cells, Dialect, Reader, RowMap, Tx};
use super::{Result, StoreError};
use crate::core::time::{self, Timestamp};

/// Schema migrations in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_initial.sql"),
    include_str!("../../migrations/sqlite/0002_delivery_and_retention.sql"),
    include_str!("../../migrations/sqlite/0003_workflows.sql"),
    include_str!("../../migrations/sqlite/0004_history.sql"),
    include_str!("../../migrations/sqlite/0005_diffs_and_reviews.sql"),
    include_str!("../../migrations/sqlite/0006_run_tokens.sql"),
    include_str!("../../migrations/sqlite/0007_schedules_and_triggers.sql"),
    include_str!("../../migrations/sqlite/0008_notifications.sql"),
    include_str!("../../migrations/sqlite/0009_github.sql"),
    include_str!("../../migrations/sqlite/0010_agents.sql"),
    include_str!("../../migrations/sqlite/0011_runners.sql"),
    include_str!("../../migrations/sqlite/0012_scale.sql"),
];
const READERS: usize = 4;

pub struct Sqlite {
    writer: Arc<Mutex<Connection>>,
    readers: Vec<Arc<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    /// Bumped after each commit that wrote events. One process owns the file's
    /// events (two servers on one SQLite file are not a cluster), so a local signal
    /// reaches everyone who streams them.
    events_written: watch::Sender<u64>,
}

/// Page cache of the writer and of each reader, in KiB. SQLite's default (2 MiB)
/// holds little more than the top of a big database's indexes: at a million tasks a
/// claim then read a few dozen pages back from the OS for the index entries it
/// changes, and took 1.4 times as long as on an empty database. The cache fills only
/// as far as the database is read, so a small one costs no more.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
const READER_CACHE_KIB: i64 = 16 * 1024;

fn connect(path: &Path, cache_kib: i64) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = -{cache_kib};"
    ))?;
    Ok(conn)
}

/// Makes `path` readable and writable by its owner only, creating it empty if needed:
/// the database holds key digests, prompts and results.
fn keep_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let denied = |e: std::io::Error| StoreError::Backend(format!("{}: {e}", path.display()));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(denied)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(denied)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let done: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for sql in MIGRATIONS.iter().skip(usize::try_from(done).unwrap_or(0)) {
        tx.execute_batch(sql)?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {}", MIGRATIONS.len()))?;
    tx.commit()?;
    Ok(())
}

impl Sqlite {
    /// Opens (creating if needed) the database file and migrates it.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_owned();
        let (writer, readers) = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            keep_private(&path)?;
            let mut writer = connect(&path, WRITER_CACHE_KIB)?;
            migrate(&mut writer)?;
            // SQLite makes the WAL and shared-memory files with the database file's
            // mode; tighten any left from before anyway.
            for suffix in ["-wal", "-shm"] {
                let mut side = path.clone().into_os_string();
                side.push(suffix);
                let side = std::path::PathBuf::from(side);
                if side.exists() {
                    keep_private(&side)?;
                }
            }
            let readers = (0..READERS)
                .map(|_| connect(&path, READER_CACHE_KIB))
                .collect::<Result<Vec<_>>>()?;
            Ok::<_, StoreError>((writer, readers))
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(Sqlite {
            writer: Arc::new(Mutex::new(writer)),
            readers: readers
                .into_iter()
                .map(|c| Arc::new(Mutex::new(c)))
                .collect(),
            next_reader: AtomicUsize::new(0),
            events_written: watch::Sender::new(0),
        })
    }
}

/// Runs `work` on the blocking pool with the connection `conn`. The lock is taken
/// there, so that it is held only while the work runs: taken before, it would also
/// cover the hand-over to a blocking thread, and writes, which take turns, would wait
/// for that too (a third fewer claims per second on SQLite, measured).
async fn run<T, F>(conn: Arc<Mutex<Connection>>, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut SqliteConn) -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || work(&mut SqliteConn(conn.blocking_lock_owned())))
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
}

impl Backend for Sqlite {
    type Read = SqliteConn;
    type Write = SqliteConn;

    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConn) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let index = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        run(self.readers[index].clone(), |c| {
            futures::executor::block_on(work(c))
        })
        .await
    }

    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConn) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        run(self.writer.clone(), |c| {
            // A transaction left open by work that panicked is abandoned here.
            if !c.0.is_autocommit() {
                c.0.execute_batch("ROLLBACK")?;
            }
            c.0.execute_batch("BEGIN IMMEDIATE")?;
            let result = futures::executor::block_on(work(c));
            let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
            match c.0.execute_batch(end) {
                Ok(()) => result,
                Err(e) => {
                    // A failed COMMIT leaves the transaction open; end it.
                    let _ = c.0.execute_batch("ROLLBACK");
                    Err(e.into())
                }
            }
        })
        .await
    }

    fn events_written(&self) {
        self.events_written.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn event_signal(&self) -> watch::Receiver<u64> {
        self.events_written.subscribe()
    }
}

/// A connection, in a transaction or not.
pub struct SqliteConn(OwnedMutexGuard<Connection>);

/// The shared statements use `$1`; SQLite reads `?1` as the same numbered parameter.
/// No statement has a `$` anywhere else.
fn native(sql: &str) -> String {
    sql.replace('$', "?")
}

impl Tx for SqliteConn {
    const DIALECT: Dialect = Dialect {
        for_update: "",
        skip_locked: "",
        pending_index: "INDEXED BY tasks_pending",
        before_pick: None,
        position: "instr",
        event_id: "id",
    };

    async fn execute(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64> {
        let mut stmt = self.0.prepare_cached(&native(sql))?;
        Ok(stmt.execute(params_from_iter(&args))? as u64)
    }

    async fn query<T: Send>(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
        mut map: impl RowMap<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.0.prepare_cached(&native(sql))?;
        let mut rows = stmt.query(params_from_iter(&args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(map(&mut Reader::new(row))?);
        }
        Ok(out)
    }

    /// One prepared insert, run per row: in-process, that is as fast as one statement.
    async fn insert_many(&mut self, table: &str, columns: &str, rows: Vec<Vec<Arg>>) -> Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let places: Vec<String> = (1..=first.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO {table} ({columns}) VALUES ({})",
            places.join(", ")
        );
        let mut stmt = self.0.prepare_cached(&sql)?;
        for row in &rows {
            stmt.execute(params_from_iter(row))?;
        }
        Ok(())
    }
}

/// Times are stored as milliseconds since the epoch.
impl ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Arg::Text(v) => v.to_sql(),
            Arg::Int(v) => v.to_sql(),
            Arg::Real(v) => v.to_sql(),
            Arg::Flag(v) => v.to_sql(),
            Arg::Time(Some(t)) => Ok(ToSqlOutput::from(t.timestamp_millis())),
            Arg::Time(None) => Ok(ToSqlOutput::from(Null)),
            Arg::Bytes(v) => v.to_sql(),
        }
    }
}

impl Cells for Row<'_> {
    fn text(&self, index: usize) -> Result<Option<String>> {
        Ok(self.get(index)?)
    }
    fn int(&self, index: usize) -> Result<Option<i64>> {
        Ok(self.get(index)?)
    }
    fn real(&self, index: usize) -> Result<Option<f64>> {
        Ok(self.get(index)?)
    }
    fn flag(&self, index: usize) -> Result<bool> {
        Ok(self.get(index)?)
    }
    fn time(&self, index: usize) -> Result<Option<Timestamp>> {
        Ok(self.get::<_, Option<i64>>(index)?.map(time::from_millis))
    }
    fn bytes(&self, index: usize) -> Result<Vec<u8>> {
        Ok(self.get(index)?)
    }
}
