//! The team store: Postgres, shared by any number of `buildd serve` processes.
//!
//! Correctness across processes comes from row locks:
//! - a claim locks its account row, which serialises the claims of one account so its
//!   worker and cost limits hold, and takes tasks with `FOR UPDATE SKIP LOCKED`, so
//!   claims pass each other instead of queueing or colliding;
//! - every later change locks the task, then its worker, then (to move the usage
//!   counters) the account, before applying the core's rules, so the sweeper of one
//!   server and an agent's update through another cannot both act on one worker.
//!
//! A claim waits only for the account lock, before it holds anything, and never for a
//! task (`SKIP LOCKED`); other changes take their locks in one order. So no two
//! transactions can wait for each other in a cycle.

use std::ops::DerefMut;
use std::str::FromStr;

use futures::future::BoxFuture;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Column as _, PgConnection, Row, Transaction, TypeInfo};
use tokio::sync::watch;

use super::sql::{Arg, Backend, Cells, Dialect, Reader, RowMap, Tx};
use super::{Result, StoreError};
use crate::core::time::Timestamp;

const MAX_CONNECTIONS: u32 = 16;
/// The `NOTIFY` channel that tells every server's hub new events have their public ids.
const EVENTS_CHANNEL: &str = "buildd_events";
/// How often a sequencer passes without being woken, for events a server committed
/// but could not sequence before it died.
const SEQUENCER_BACKSTOP: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a woken sequencer waits for more commits before its pass, when busy.
const SEQUENCER_GATHER: std::time::Duration = std::time::Duration::from_millis(3);
/// A sequencer woken within this of its last pass is busy, and gathers; one woken
/// after a quiet spell stamps at once.
const SEQUENCER_BUSY: std::time::Duration = std::time::Duration::from_millis(20);
/// The advisory lock that lets one sequencer pass run at a time.
const SEQUENCER_LOCK: i64 = 0x6275_696c_6464; // "buildd"
/// Events one sequencer pass stamps at most; a full pass is followed by another.
const SEQUENCER_BATCH: i64 = 10_000;
/// How often the events table is looked at for a vacuum it needs, when Postgres's own
/// autovacuum is off (autovacuum's default nap).
const VACUUM_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Postgres {
    pool: PgPool,
    /// Bumped after this server commits events: wakes its sequencer.
    written: watch::Sender<u64>,
    /// Bumped when any server sequenced events: wakes this server's hub.
    events_seen: watch::Sender<u64>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

impl Postgres {
    /// Connects and runs pending migrations (sqlx holds an advisory lock while it does,
    /// so several servers starting together migrate once), then starts listening for
    /// the cluster's events and sequencing them.
    pub async fn connect(url: &str) -> Result<Self> {
        // No JIT: every statement here is short, and on tables without statistics
        // the planner's estimates can pass JIT's cost threshold, which then compiles
        // each run of a millisecond's query (the sequencer's pass, a retention batch)
        // for tens of milliseconds.
        let options = PgConnectOptions::from_str(url)?.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        let written = watch::Sender::new(0);
        let events_seen = watch::Sender::new(0);
        let background = vec![
            tokio::spawn(listen(listener, events_seen.clone())),
            tokio::spawn(run_sequencer(pool.clone(), written.subscribe())),
            tokio::spawn(vacuum_events(pool.clone())),
        ];
        Ok(Postgres {
            pool,
            written,
            events_seen,
            background,
        })
    }
}

/// Turns each notification that events were sequenced into a bump of `sequenced`.
/// When the listening connection was lost, notifications may have been missed: the
/// bump after it comes back makes the hub look anyway.
async fn listen(mut listener: PgListener, sequenced: watch::Sender<u64>) {
    let bump = |n: &mut u64| *n = n.wrapping_add(1);
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => sequenced.send_modify(bump),
            Ok(None) => {
                tracing::warn!("event listener connection lost; reconnecting");
                sequenced.send_modify(bump);
            }
            Err(e) => {
                tracing::warn!(error = %e, "event listener failed; retrying in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                sequenced.send_modify(bump);
            }
        }
    }
}

/// One sequencer pass: stamps every committed, unstamped event with the next public
/// ids, in insert order, and tells every server's hub. Passes are serialised by an
/// advisory lock, and a pass only sees committed rows, so an event committed after
/// a pass gets a higher id than everything that pass stamped: ids follow commit
/// order, and a subscriber resuming "after N" never misses one. Returns how many
/// events were stamped.
async fn sequence_events(pool: &PgPool) -> Result<u64> {
    let mut stamped = 0;
    loop {
        let pass = sequence_batch(pool).await?;
        stamped += pass;
        if pass < SEQUENCER_BATCH as u64 {
            return Ok(stamped);
        }
    }
}

/// Stamps the first [`SEQUENCER_BATCH`] unstamped events in insert order. They are
/// found by walking `events_unsequenced` in order, which stops after the batch: a
/// plain index scan, which also marks the entries of rows stamped earlier as dead so
/// later walks step over them.
async fn sequence_batch(pool: &PgPool) -> Result<u64> {
    let mut tx = pool.begin().await?;
    let result = async {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SEQUENCER_LOCK)
            .execute(&mut *tx)
            .await?;
        let stamped = sqlx::query(
            "UPDATE events e SET seq = base.last + fresh.n \
             FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM \
                   (SELECT id FROM events WHERE seq IS NULL ORDER BY id LIMIT $1) batch) fresh, \
                  (SELECT COALESCE(MAX(seq), 0) AS last FROM events) base \
             WHERE e.id = fresh.id",
        )
        .bind(SEQUENCER_BATCH)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if stamped > 0 {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(EVENTS_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        Ok(stamped)
    }
    .await;
    finish(tx, result).await
}

/// Runs a sequencer pass whenever this server has committed events, at start, and
/// every few seconds as a backstop for events another server committed but died
/// before sequencing. Passes coalesce: many commits during one pass need one more.
async fn run_sequencer(pool: PgPool, mut written: watch::Receiver<u64>) {
    loop {
        if let Err(e) = sequence_events(&pool).await {
            tracing::warn!(error = %e, "event sequencer pass failed; retrying in 1 s");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        let passed = std::time::Instant::now();
        tokio::select! {
            changed = written.changed() => {
                if changed.is_err() {
                    return;
                }
                // Under load, let commits that land meanwhile join this pass: one
                // pass (one fsync) then stamps many transactions' events. After a
                // quiet spell the one commit is stamped at once: a new task reaches
                // the agent waiting for it without the wait.
                if passed.elapsed() < SEQUENCER_BUSY {
                    tokio::time::sleep(SEQUENCER_GATHER).await;
                }
            }
            _ = tokio::time::sleep(SEQUENCER_BACKSTOP) => {}
        }
    }
}

/// Vacuums and analyses the events table when it needs it and Postgres's autovacuum is
/// off (as on some CI machines; with it on, this does nothing). Every event leaves dead
/// rows, the insert's once the sequencer stamps it and the stamped one once retention
/// deletes it; unvacuumed, they stay in the table and its indexes, the sequencer's and
/// retention's walks grow with them, and the planner never gets statistics. The rule
/// is autovacuum's own default: more dead rows than 50 plus a fifth of the live ones.
async fn vacuum_events(pool: PgPool) {
    loop {
        tokio::time::sleep(VACUUM_CHECK).await;
        if let Err(e) = vacuum_events_if_due(&pool).await {
            tracing::warn!(error = %e, "vacuum of the events table failed; retrying later");
        }
    }
}

async fn vacuum_events_if_due(pool: &PgPool) -> Result<()> {
    let due: bool = sqlx::query_scalar(
        "SELECT current_setting('autovacuum') = 'off' AND n_dead_tup > 50 + 0.2 * n_live_tup \
         FROM pg_stat_user_tables WHERE relid = 'events'::regclass",
    )
    .fetch_optional(pool)
    .await?
    .unwrap_or(false);
    if due {
        let started = std::time::Instant::now();
        // Another server vacuuming it already is enough.
        sqlx::query("VACUUM (ANALYZE, SKIP_LOCKED) events")
            .execute(pool)
            .await?;
        tracing::info!(took = ?started.elapsed(), "vacuumed the events table (autovacuum is off)");
    }
    Ok(())
}

/// Ends a transaction: committed if `result` is a success, rolled back otherwise.
///
/// The explicit rollback matters. A dropped sqlx transaction only queues its
/// `ROLLBACK` until the connection is next used, and its row locks stay held until
/// then: a refused update would leave its task locked, and the next claim's
/// `SKIP LOCKED` would pass over a task that is in fact free.
async fn finish<T>(tx: Transaction<'_, sqlx::Postgres>, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rollback failed; the connection is discarded");
            }
            Err(e)
        }
    }
}

impl Backend for Postgres {
    type Read = PgConn<sqlx::pool::PoolConnection<sqlx::Postgres>>;
    type Write = PgConn<Transaction<'static, sqlx::Postgres>>;

    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Self::Read) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        work(&mut PgConn(self.pool.acquire().await?)).await
    }

    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Self::Write) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let mut tx = PgConn(self.pool.begin().await?);
        let result = work(&mut tx).await;
        finish(tx.0, result).await
    }

    /// Wakes this server's sequencer. Writers send no `NOTIFY` themselves: Postgres
    /// serialises the commits of all notifying transactions, fsync included, which
    /// would cap the whole cluster's claims and updates at one commit at a time.
    fn events_written(&self) {
        self.written.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn event_signal(&self) -> watch::Receiver<u64> {
        self.events_seen.subscribe()
    }
}

/// A pooled connection, or a transaction on one.
pub struct PgConn<C>(C);

/// Binds each value with the Postgres type of its kind; times are `TIMESTAMPTZ`.
fn bind(
    mut query: Query<'_, sqlx::Postgres, PgArguments>,
    args: Vec<Arg>,
) -> Query<'_, sqlx::Postgres, PgArguments> {
    for arg in args {
        query = match arg {
            Arg::Text(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::Real(v) => query.bind(v),
            Arg::Flag(v) => query.bind(v),
            Arg::Time(v) => query.bind(v),
            Arg::Bytes(v) => query.bind(v),
        };
    }
    query
}

/// Every statement is one of the shared queries: pieces spliced in by `format!` are
/// constant column, status or dialect lists, never input; values are always bound.
fn statement(sql: &str) -> Query<'_, sqlx::Postgres, PgArguments> {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
}

impl<C: DerefMut<Target = PgConnection> + Send> Tx for PgConn<C> {
    const DIALECT: Dialect = Dialect {
        for_update: " FOR UPDATE",
        skip_locked: " FOR UPDATE SKIP LOCKED",
        pending_index: "",
        // On a young table with no statistics yet the planner would rather read every
        // pending task and sort them; ruling out the sort keeps the pick O(1).
        before_pick: Some("SET LOCAL enable_sort = off"),
        position: "strpos",
        event_id: "seq",
    };

    async fn execute(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64> {
        let done = bind(statement(sql), args).execute(&mut *self.0).await?;
        Ok(done.rows_affected())
    }

    async fn query<T: Send>(
        &mut self,
        sql: &str,
        args: Vec<Arg>,
        mut map: impl RowMap<T>,
    ) -> Result<Vec<T>> {
        let rows = bind(statement(sql), args).fetch_all(&mut *self.0).await?;
        rows.iter().map(|row| map(&mut Reader::new(row))).collect()
    }

    /// One `INSERT … SELECT FROM UNNEST(…)` with an array per column: one round trip
    /// and one prepared statement per table, whatever the number of rows.
    async fn insert_many(&mut self, table: &str, columns: &str, rows: Vec<Vec<Arg>>) -> Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let mut arrays: Vec<Array> = first.iter().map(Array::for_arg).collect();
        for row in rows {
            for (array, arg) in arrays.iter_mut().zip(row) {
                array.push(arg)?;
            }
        }
        let names: Vec<String> = (1..=arrays.len()).map(|i| format!("c{i}")).collect();
        let unnest: Vec<String> = arrays
            .iter()
            .enumerate()
            .map(|(i, a)| format!("${}::{}[]", i + 1, a.sql_type()))
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({columns}) SELECT {} FROM UNNEST({}) \
             WITH ORDINALITY AS r ({}, ord) ORDER BY ord",
            names.join(", "),
            unnest.join(", "),
            names.join(", ")
        );
        let mut query = statement(&sql);
        for array in arrays {
            query = array.bind(query);
        }
        query.execute(&mut *self.0).await?;
        Ok(())
    }
}

/// One column of a multi-row insert, as the array Postgres unnests.
enum Array {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Real(Vec<Option<f64>>),
    Flag(Vec<bool>),
    Time(Vec<Option<Timestamp>>),
    Bytes(Vec<Vec<u8>>),
}

impl Array {
    fn for_arg(arg: &Arg) -> Array {
        match arg {
            Arg::Text(_) => Array::Text(Vec::new()),
            Arg::Int(_) => Array::Int(Vec::new()),
            Arg::Real(_) => Array::Real(Vec::new()),
            Arg::Flag(_) => Array::Flag(Vec::new()),
            Arg::Time(_) => Array::Time(Vec::new()),
            Arg::Bytes(_) => Array::Bytes(Vec::new()),
        }
    }

    fn push(&mut self, arg: Arg) -> Result<()> {
        match (self, arg) {
            (Array::Text(v), Arg::Text(a)) => v.push(a),
            (Array::Int(v), Arg::Int(a)) => v.push(a),
            (Array::Real(v), Arg::Real(a)) => v.push(a),
            (Array::Flag(v), Arg::Flag(a)) => v.push(a),
            (Array::Time(v), Arg::Time(a)) => v.push(a),
            (Array::Bytes(v), Arg::Bytes(a)) => v.push(a),
            (_, arg) => {
                return Err(StoreError::Backend(format!(
                    "rows of one insert disagree on a column's type ({arg:?})"
                )));
            }
        }
        Ok(())
    }

    fn sql_type(&self) -> &'static str {
        match self {
            Array::Text(_) => "text",
            Array::Int(_) => "int8",
            Array::Real(_) => "float8",
            Array::Flag(_) => "bool",
            Array::Time(_) => "timestamptz",
            Array::Bytes(_) => "bytea",
        }
    }

    fn bind(
        self,
        query: Query<'_, sqlx::Postgres, PgArguments>,
    ) -> Query<'_, sqlx::Postgres, PgArguments> {
        match self {
            Array::Text(v) => query.bind(v),
            Array::Int(v) => query.bind(v),
            Array::Real(v) => query.bind(v),
            Array::Flag(v) => query.bind(v),
            Array::Time(v) => query.bind(v),
            Array::Bytes(v) => query.bind(v),
        }
    }
}

impl Cells for PgRow {
    fn text(&self, index: usize) -> Result<Option<String>> {
        Ok(self.try_get(index)?)
    }
    /// Counters are `BIGINT`, a few small columns `INTEGER`; both read as `i64`.
    fn int(&self, index: usize) -> Result<Option<i64>> {
        match self.column(index).type_info().name() {
            "INT4" => Ok(self.try_get::<Option<i32>, _>(index)?.map(i64::from)),
            "INT2" => Ok(self.try_get::<Option<i16>, _>(index)?.map(i64::from)),
            _ => Ok(self.try_get(index)?),
        }
    }
    fn real(&self, index: usize) -> Result<Option<f64>> {
        Ok(self.try_get(index)?)
    }
    fn flag(&self, index: usize) -> Result<bool> {
        Ok(self.try_get(index)?)
    }
    fn time(&self, index: usize) -> Result<Option<Timestamp>> {
        Ok(self.try_get(index)?)
    }
    fn bytes(&self, index: usize) -> Result<Vec<u8>> {
        Ok(self.try_get(index)?)
    }
}
