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

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row, Transaction};
use tokio::sync::watch;

use super::{
    ACCOUNT_COLUMNS, ATTACHMENT_COLUMNS, Appended, Applied, ClaimRequest, Counts, Result,
    SOURCE_COLUMNS, Store, StoreError, TASK_COLUMNS, TaskFilter, Usage, WORKER_COLUMNS,
    WORKSPACE_COLUMNS, WorkerFilter, parse_column, status_list,
};
use crate::core::actions::{self, Action, UsageChange};
use crate::core::claim;
use crate::core::events::{Event, StoredEvent};
use crate::core::lease::Cutoffs;
use crate::core::messages;
use crate::core::model::{
    Account, Artifact, Attachment, Comment, Grant, Message, RecordedArtifact, Source, Task, Worker,
    WorkerStatus, Workspace,
};
use crate::core::time::{self, Timestamp};

const MAX_CONNECTIONS: u32 = 16;
/// The `NOTIFY` channel that tells every server's hub new events have their public ids.
const EVENTS_CHANNEL: &str = "buildd_events";
/// How often a sequencer passes without being woken, for events a server committed
/// but could not sequence before it died.
const SEQUENCER_BACKSTOP: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a woken sequencer waits for more commits before its pass.
const SEQUENCER_GATHER: std::time::Duration = std::time::Duration::from_millis(3);
/// The advisory lock that lets one sequencer pass run at a time.
const SEQUENCER_LOCK: i64 = 0x6275_696c_6464; // "buildd"

/// Marks SQL assembled with `format!` as reviewed: every piece spliced in is one of the
/// constant column or status lists, never input; values always go through `bind`.
fn built(sql: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(sql)
}

pub struct PostgresStore {
    pool: PgPool,
    /// Bumped after this server commits events: wakes its sequencer.
    written: watch::Sender<u64>,
    /// Bumped when any server sequenced events: wakes this server's hub.
    events_seen: watch::Sender<u64>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

impl PostgresStore {
    /// Connects and runs pending migrations (sqlx holds an advisory lock while it does,
    /// so several servers starting together migrate once), then starts listening for
    /// the cluster's events and sequencing them.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
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
        ];
        Ok(PostgresStore {
            pool,
            written,
            events_seen,
            background,
        })
    }

    /// Wakes this server's sequencer after a commit that wrote events.
    fn events_written(&self) {
        self.written.send_modify(|n| *n = n.wrapping_add(1));
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

fn enum_col<T: std::str::FromStr<Err = String>>(row: &PgRow, col: &str) -> Result<T> {
    parse_column(row.try_get::<&str, _>(col)?)
}

fn account_from_row(row: &PgRow) -> Result<Account> {
    Ok(Account {
        id: row.try_get("id")?,
        account_type: enum_col(row, "type")?,
        name: row.try_get("name")?,
        auth_type: enum_col(row, "auth_type")?,
        max_concurrent_workers: row.try_get("max_concurrent_workers")?,
        max_concurrent_sessions: row.try_get("max_concurrent_sessions")?,
        max_cost_per_day: row.try_get("max_cost_per_day")?,
        github_repo: row.try_get("github_repo")?,
        created_at: row.try_get("created_at")?,
    })
}

fn workspace_from_row(row: &PgRow) -> Result<Workspace> {
    Ok(Workspace {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        repo_url: row.try_get("repo_url")?,
        default_branch: row.try_get("default_branch")?,
        created_at: row.try_get("created_at")?,
    })
}

fn task_from_row(row: &PgRow) -> Result<Task> {
    Ok(Task {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        runner_preference: enum_col(row, "runner_preference")?,
        priority: row.try_get("priority")?,
        status: enum_col(row, "status")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        max_cost_usd: row.try_get("max_cost_usd")?,
        claimed_by: row.try_get("claimed_by")?,
        worker_id: row.try_get("worker_id")?,
        created_at: row.try_get("created_at")?,
        claimed_at: row.try_get("claimed_at")?,
        completed_at: row.try_get("completed_at")?,
        result: row
            .try_get::<Option<String>, _>("result")?
            .map(|text| json_text(&text))
            .transpose()?,
        source_id: row.try_get("source_id")?,
    })
}

/// Reads a JSON column. JSON is stored as the text serde_json wrote (see migration
/// 0002), so it always reads back.
fn json_text(text: &str) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Backend(format!("stored JSON unreadable: {e}")))
}

fn worker_from_row(row: &PgRow) -> Result<Worker> {
    Ok(Worker {
        id: row.try_get("id")?,
        task_id: row.try_get("task_id")?,
        workspace_id: row.try_get("workspace_id")?,
        account_id: row.try_get("account_id")?,
        status: enum_col(row, "status")?,
        cost_usd: row.try_get("cost_usd")?,
        turns: row.try_get("turns")?,
        session_id: row.try_get("session_id")?,
        branch: row.try_get("branch")?,
        commit_sha: row.try_get("commit_sha")?,
        pr_url: row.try_get("pr_url")?,
        question: row.try_get("question")?,
        error: row.try_get("error")?,
        pending_reply: row.try_get("pending_reply")?,
        started_at: row.try_get("started_at")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn attachment_from_row(row: &PgRow) -> Result<Attachment> {
    Ok(Attachment {
        id: row.try_get("id")?,
        worker_id: row.try_get("worker_id")?,
        task_id: row.try_get("task_id")?,
        message_seq: row.try_get("message_seq")?,
        name: row.try_get("name")?,
        content_type: row.try_get("content_type")?,
        size: row.try_get("size")?,
        created_at: row.try_get("created_at")?,
    })
}

/// `SELECT … FOR UPDATE` of one task.
async fn lock_task(conn: &mut PgConnection, id: &str) -> Result<Option<Task>> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 FOR UPDATE");
    sqlx::query(built(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .map(|r| task_from_row(&r))
        .transpose()
}

/// `SELECT … FOR UPDATE` of one worker.
async fn lock_worker(conn: &mut PgConnection, id: &str) -> Result<Option<Worker>> {
    let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE id = $1 FOR UPDATE");
    sqlx::query(built(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .map(|r| worker_from_row(&r))
        .transpose()
}

async fn insert_worker(conn: &mut PgConnection, w: &Worker) -> Result<()> {
    sqlx::query(built(format!(
        "INSERT INTO workers ({WORKER_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
    )))
    .bind(&w.id)
    .bind(&w.task_id)
    .bind(&w.workspace_id)
    .bind(&w.account_id)
    .bind(w.status.as_str())
    .bind(w.cost_usd)
    .bind(w.turns)
    .bind(&w.session_id)
    .bind(&w.branch)
    .bind(&w.commit_sha)
    .bind(&w.pr_url)
    .bind(&w.question)
    .bind(&w.error)
    .bind(&w.pending_reply)
    .bind(w.started_at)
    .bind(w.heartbeat_at)
    .bind(w.finished_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes back every field of a worker that can change after it was created.
async fn save_worker(conn: &mut PgConnection, w: &Worker) -> Result<()> {
    sqlx::query(
        "UPDATE workers SET status = $2, cost_usd = $3, turns = $4, session_id = $5, \
         branch = $6, commit_sha = $7, pr_url = $8, question = $9, error = $10, \
         pending_reply = $11, heartbeat_at = $12, finished_at = $13 WHERE id = $1",
    )
    .bind(&w.id)
    .bind(w.status.as_str())
    .bind(w.cost_usd)
    .bind(w.turns)
    .bind(&w.session_id)
    .bind(&w.branch)
    .bind(&w.commit_sha)
    .bind(&w.pr_url)
    .bind(&w.question)
    .bind(&w.error)
    .bind(&w.pending_reply)
    .bind(w.heartbeat_at)
    .bind(w.finished_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes back every field of a task that can change after it was created.
async fn save_task(conn: &mut PgConnection, t: &Task) -> Result<()> {
    sqlx::query(
        "UPDATE tasks SET status = $2, attempts = $3, claimed_by = $4, worker_id = $5, \
         claimed_at = $6, completed_at = $7, result = $8 WHERE id = $1",
    )
    .bind(&t.id)
    .bind(t.status.as_str())
    .bind(t.attempts)
    .bind(&t.claimed_by)
    .bind(&t.worker_id)
    .bind(t.claimed_at)
    .bind(t.completed_at)
    .bind(t.result.as_ref().map(Value::to_string))
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves an account's usage counters by `change`. Taking the account's row lock here
/// comes last in the lock order (after task and worker), and claims, which lock the
/// account first, never wait for a task lock (`SKIP LOCKED`), so the two cannot deadlock.
async fn record_usage(
    conn: &mut PgConnection,
    account_id: &str,
    change: &UsageChange,
) -> Result<()> {
    if change.active_workers != 0 {
        sqlx::query("UPDATE accounts SET active_workers = active_workers + $2 WHERE id = $1")
            .bind(account_id)
            .bind(change.active_workers)
            .execute(&mut *conn)
            .await?;
    }
    if change.cost_usd != 0.0 {
        sqlx::query(
            "INSERT INTO account_usage (account_id, day, cost_usd) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id, day) DO UPDATE SET cost_usd = account_usage.cost_usd + excluded.cost_usd",
        )
        .bind(account_id)
        .bind(&change.day)
        .bind(change.cost_usd)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The id of the workspace's source with `src`'s type and external id, made from
/// `src` if there is none. A source without an external id is always new.
async fn upsert_source(conn: &mut PgConnection, src: &Source) -> Result<String> {
    let sql = format!(
        "INSERT INTO sources ({SOURCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (workspace_id, type, external_id) DO NOTHING"
    );
    sqlx::query(built(sql))
        .bind(&src.id)
        .bind(&src.workspace_id)
        .bind(&src.source_type)
        .bind(&src.external_id)
        .bind(&src.url)
        .bind(src.created_at)
        .execute(&mut *conn)
        .await?;
    match &src.external_id {
        None => Ok(src.id.clone()),
        Some(external) => Ok(sqlx::query_scalar(
            "SELECT id FROM sources WHERE workspace_id = $1 AND type = $2 AND external_id = $3",
        )
        .bind(&src.workspace_id)
        .bind(&src.source_type)
        .bind(external)
        .fetch_one(conn)
        .await?),
    }
}

async fn insert_artifacts(
    conn: &mut PgConnection,
    worker: &Worker,
    artifacts: &[Artifact],
    now: Timestamp,
) -> Result<()> {
    if artifacts.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = artifacts.iter().map(|a| a.kind.as_str()).collect();
    let values: Vec<&str> = artifacts.iter().map(|a| a.value.as_str()).collect();
    sqlx::query(
        "INSERT INTO artifacts (task_id, worker_id, kind, value, created_at) \
         SELECT $1, $2, k, v, $5 FROM UNNEST($3::text[], $4::text[]) WITH ORDINALITY AS a (k, v, ord) ORDER BY ord",
    )
    .bind(&worker.task_id)
    .bind(&worker.id)
    .bind(kinds)
    .bind(values)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts all `events` in one statement. They get their public ids from the
/// sequencer after commit. Writers send no `NOTIFY` themselves: Postgres serialises
/// the commits of all notifying transactions, fsync included, which would cap the
/// whole cluster's claims and updates at one commit at a time.
async fn insert_events(conn: &mut PgConnection, events: &[Event], now: Timestamp) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = events.iter().map(|e| e.name).collect();
    let workspaces: Vec<&str> = events.iter().map(|e| e.workspace_id.as_str()).collect();
    let data: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
    sqlx::query(
        "INSERT INTO events (name, workspace_id, data, created_at) \
         SELECT n, w, d, $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) \
         WITH ORDINALITY AS e (n, w, d, ord) ORDER BY ord",
    )
    .bind(names)
    .bind(workspaces)
    .bind(data)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// One sequencer pass: stamps every committed, unstamped event with the next public
/// ids, in insert order, and tells every server's hub. Passes are serialised by an
/// advisory lock, and a pass only sees committed rows, so an event committed after
/// a pass gets a higher id than everything that pass stamped: ids follow commit
/// order, and a subscriber resuming "after N" never misses one. Returns how many
/// events were stamped.
async fn sequence_events(pool: &PgPool) -> Result<u64> {
    let mut tx = pool.begin().await?;
    let result = async {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SEQUENCER_LOCK)
            .execute(&mut *tx)
            .await?;
        let stamped = sqlx::query(
            "UPDATE events e SET seq = base.last + fresh.n \
             FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM events WHERE seq IS NULL) fresh, \
                  (SELECT COALESCE(MAX(seq), 0) AS last FROM events) base \
             WHERE e.id = fresh.id",
        )
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
        tokio::select! {
            changed = written.changed() => {
                if changed.is_err() {
                    return;
                }
                // Let commits that land meanwhile join this pass: under load one
                // pass (one fsync) then stamps many transactions' events.
                tokio::time::sleep(SEQUENCER_GATHER).await;
            }
            _ = tokio::time::sleep(SEQUENCER_BACKSTOP) => {}
        }
    }
}

/// Appends to a worker's stream; the caller holds the worker's row lock, which keeps
/// sequence numbers unique. Returns the last sequence number.
async fn insert_messages(
    conn: &mut PgConnection,
    worker: &Worker,
    messages: &[Value],
    now: Timestamp,
) -> Result<i64> {
    let last: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE worker_id = $1")
            .bind(&worker.id)
            .fetch_one(&mut *conn)
            .await?;
    let bodies: Vec<String> = messages.iter().map(Value::to_string).collect();
    sqlx::query(
        "INSERT INTO messages (worker_id, seq, body, created_at) \
         SELECT $1, $2 + ord, body, $4 FROM UNNEST($3::text[]) WITH ORDINALITY AS m (body, ord)",
    )
    .bind(&worker.id)
    .bind(last)
    .bind(bodies)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let events: Vec<Event> = messages
        .iter()
        .map(|m| Event::worker_message(worker, m))
        .collect();
    insert_events(conn, &events, now).await?;
    Ok(last + messages.len() as i64)
}

/// Ends a transaction: committed if `result` is a success, rolled back otherwise.
///
/// The explicit rollback matters. A dropped sqlx transaction only queues its
/// `ROLLBACK` until the connection is next used, and its row locks stay held until
/// then: a refused update would leave its task locked, and the next claim's
/// `SKIP LOCKED` would pass over a task that is in fact free.
async fn finish<T>(tx: Transaction<'_, Postgres>, result: Result<T>) -> Result<T> {
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

async fn create_task_in(
    conn: &mut PgConnection,
    t: &Task,
    source: Option<&Source>,
) -> Result<Task> {
    let mut t = t.clone();
    if let Some(src) = source {
        t.source_id = Some(upsert_source(&mut *conn, src).await?);
    }
    sqlx::query(built(format!(
        "INSERT INTO tasks ({TASK_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
    )))
    .bind(&t.id)
    .bind(&t.workspace_id)
    .bind(&t.title)
    .bind(&t.description)
    .bind(t.runner_preference.as_str())
    .bind(t.priority)
    .bind(t.status.as_str())
    .bind(t.attempts)
    .bind(t.max_attempts)
    .bind(t.max_cost_usd)
    .bind(&t.claimed_by)
    .bind(&t.worker_id)
    .bind(t.created_at)
    .bind(t.claimed_at)
    .bind(t.completed_at)
    .bind(t.result.as_ref().map(Value::to_string))
    .bind(&t.source_id)
    .execute(&mut *conn)
    .await?;
    insert_events(&mut *conn, &[Event::task_created(&t)], t.created_at).await?;
    Ok(t)
}

async fn claim_in(
    conn: &mut PgConnection,
    account: &Account,
    request: &ClaimRequest,
    now: Timestamp,
) -> Result<Vec<(Worker, Task)>> {
    // Locking the account row serialises this account's claims, so the counts
    // below stay true until commit; its limits are re-read as they are now.
    let sql =
        format!("SELECT {ACCOUNT_COLUMNS}, active_workers FROM accounts WHERE id = $1 FOR UPDATE");
    let (account, active) = match sqlx::query(built(sql))
        .bind(&account.id)
        .fetch_optional(&mut *conn)
        .await?
    {
        Some(row) => (
            account_from_row(&row)?,
            row.try_get::<i64, _>("active_workers")?,
        ),
        None => return Err(StoreError::NotFound(format!("account {}", account.id))),
    };
    let cost_today: f64 =
        sqlx::query_scalar("SELECT cost_usd FROM account_usage WHERE account_id = $1 AND day = $2")
            .bind(&account.id)
            .bind(time::utc_day(now))
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or(0.0);
    let slots = claim::free_slots(&account, active, cost_today, request.max_tasks);
    if slots == 0 {
        return Ok(Vec::new());
    }
    // The pick must walk `tasks_pending` in dispatch order and stop at the first
    // task it may lock. On a young table with no statistics yet the planner would
    // rather read every pending task and sort them, which makes each claim cost
    // O(queue length); ruling out the sort for this transaction keeps it O(1).
    sqlx::query("SET LOCAL enable_sort = off")
        .execute(&mut *conn)
        .await?;
    let [any, own] = claim::preferences_for(account.account_type);
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE status = 'pending' \
             AND runner_preference IN ($2, $3) \
             AND workspace_id IN (SELECT workspace_id FROM account_workspaces \
                                  WHERE account_id = $1 AND can_claim) \
             AND ($4::text IS NULL OR workspace_id = $4) \
             ORDER BY priority DESC, created_at, id LIMIT $5 FOR UPDATE SKIP LOCKED"
    );
    let rows = sqlx::query(built(sql))
        .bind(&account.id)
        .bind(any.as_str())
        .bind(own.as_str())
        .bind(&request.workspace_id)
        .bind(i64::from(slots))
        .fetch_all(&mut *conn)
        .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    let mut events = Vec::new();
    for row in &rows {
        let mut task = task_from_row(row)?;
        let (worker, task_events) = claim::assign(&mut task, &account, now);
        save_task(&mut *conn, &task).await?;
        insert_worker(&mut *conn, &worker).await?;
        events.extend(task_events);
        claimed.push((worker, task));
    }
    insert_events(&mut *conn, &events, now).await?;
    let taken = UsageChange {
        active_workers: claimed.len() as i64,
        ..UsageChange::default()
    };
    record_usage(&mut *conn, &account.id, &taken).await?;
    Ok(claimed)
}

async fn apply_in(
    conn: &mut PgConnection,
    id: &str,
    action: Action,
    now: Timestamp,
) -> Result<Applied> {
    let (mut task, mut worker) = if action.targets_worker() {
        // A worker's task never changes, so it can be read before locking: the
        // locks are then taken task first, like everywhere else.
        let task_id: Option<String> =
            sqlx::query_scalar("SELECT task_id FROM workers WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
        let task_id = task_id.ok_or_else(|| StoreError::NotFound(format!("worker {id}")))?;
        let task = lock_task(&mut *conn, &task_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("task {task_id}")))?;
        let worker = lock_worker(&mut *conn, id).await?;
        (task, worker)
    } else {
        let task = lock_task(&mut *conn, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("task {id}")))?;
        let worker = match &task.worker_id {
            Some(w) => lock_worker(&mut *conn, w).await?,
            None => None,
        };
        (task, worker)
    };
    let outcome = actions::apply(action, &mut task, worker.as_mut(), now)?;
    if outcome.changed {
        save_task(&mut *conn, &task).await?;
        if let Some(w) = &worker {
            save_worker(&mut *conn, w).await?;
            record_usage(&mut *conn, &w.account_id, &outcome.usage).await?;
            insert_artifacts(&mut *conn, w, &outcome.artifacts, now).await?;
            if !outcome.messages.is_empty() {
                insert_messages(&mut *conn, w, &outcome.messages, now).await?;
            }
        }
        insert_events(&mut *conn, &outcome.events, now).await?;
    }
    Ok(Applied {
        task,
        worker,
        outcome,
    })
}

async fn append_messages_in(
    conn: &mut PgConnection,
    worker_id: &str,
    messages: &[Value],
    from: Option<i64>,
    now: Timestamp,
) -> Result<Appended> {
    let mut worker = lock_worker(&mut *conn, worker_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("worker {worker_id}")))?;
    // Only numbered batches need to know, and move, how far the agent got.
    let taken: i64 = match from {
        Some(_) => {
            sqlx::query_scalar("SELECT messages_taken FROM workers WHERE id = $1")
                .bind(worker_id)
                .fetch_one(&mut *conn)
                .await?
        }
        None => 0,
    };
    let fresh = messages::fresh(taken, from, messages.len());
    let new = &messages[fresh.skip..];
    let last_seq = insert_messages(&mut *conn, &worker, new, now).await?;
    worker.heartbeat_at = now;
    save_worker(&mut *conn, &worker).await?;
    if from.is_some() {
        sqlx::query("UPDATE workers SET messages_taken = $2 WHERE id = $1")
            .bind(worker_id)
            .bind(fresh.taken)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Appended {
        appended: new.len(),
        last_seq,
    })
}

/// See [`Store::purge_events`]. Works on `seq`, the id subscribers see; events not
/// sequenced yet are never deleted.
async fn purge_events_in(conn: &mut PgConnection, before: Timestamp, limit: u32) -> Result<u64> {
    let through: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(seq) FROM (SELECT seq FROM events WHERE seq IS NOT NULL AND created_at < $1 \
         AND seq < (SELECT MAX(seq) FROM events) ORDER BY seq LIMIT $2) oldest",
    )
    .bind(before)
    .bind(i64::from(limit))
    .fetch_one(&mut *conn)
    .await?;
    let Some(through) = through else {
        return Ok(0);
    };
    let deleted = sqlx::query("DELETE FROM events WHERE seq <= $1")
        .bind(through)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query("UPDATE event_retention SET purged_through = GREATEST(purged_through, $1)")
        .bind(through)
        .execute(&mut *conn)
        .await?;
    Ok(deleted)
}

/// See [`Store::purge_worker_output`].
async fn purge_worker_output_in(
    conn: &mut PgConnection,
    before: Timestamp,
    limit: u32,
) -> Result<u64> {
    let workers: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM workers WHERE output_purged_at IS NULL AND finished_at < $1 \
         ORDER BY finished_at LIMIT $2",
    )
    .bind(before)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut left = i64::from(limit);
    for id in workers {
        for sql in [
            "DELETE FROM messages WHERE worker_id = $1 AND seq IN \
             (SELECT seq FROM messages WHERE worker_id = $1 ORDER BY seq LIMIT $2)",
            "DELETE FROM attachments WHERE id IN \
             (SELECT id FROM attachments WHERE worker_id = $1 LIMIT $2)",
        ] {
            left -= sqlx::query(sql)
                .bind(&id)
                .bind(left)
                .execute(&mut *conn)
                .await?
                .rows_affected() as i64;
            if left <= 0 {
                return Ok(u64::from(limit));
            }
        }
        sqlx::query("UPDATE workers SET output_purged_at = $2 WHERE id = $1")
            .bind(&id)
            .bind(time::now())
            .execute(&mut *conn)
            .await?;
    }
    Ok((i64::from(limit) - left) as u64)
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_account(&self, a: &Account, key_hash: &str) -> Result<()> {
        sqlx::query(built(format!(
            "INSERT INTO accounts ({ACCOUNT_COLUMNS}, key_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )))
        .bind(&a.id)
        .bind(a.account_type.as_str())
        .bind(&a.name)
        .bind(a.auth_type.as_str())
        .bind(a.max_concurrent_workers)
        .bind(a.max_concurrent_sessions)
        .bind(a.max_cost_per_day)
        .bind(&a.github_repo)
        .bind(a.created_at)
        .bind(key_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn account_by_key_hash(&self, key_hash: &str) -> Result<Option<Account>> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE key_hash = $1");
        sqlx::query(built(sql))
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| account_from_row(&r))
            .transpose()
    }

    async fn get_account(&self, id: &str) -> Result<Option<Account>> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1");
        sqlx::query(built(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| account_from_row(&r))
            .transpose()
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at, id");
        sqlx::query(built(sql))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(account_from_row)
            .collect()
    }

    async fn create_workspace(&self, w: &Workspace) -> Result<()> {
        sqlx::query(built(format!(
            "INSERT INTO workspaces ({WORKSPACE_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
        )))
        .bind(&w.id)
        .bind(&w.name)
        .bind(&w.repo_url)
        .bind(&w.default_branch)
        .bind(w.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>> {
        let sql = format!("SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1");
        sqlx::query(built(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| workspace_from_row(&r))
            .transpose()
    }

    async fn list_workspaces(&self, visible_to: Option<&str>) -> Result<Vec<Workspace>> {
        let sql = format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE $1::text IS NULL OR id IN \
             (SELECT workspace_id FROM account_workspaces WHERE account_id = $1) \
             ORDER BY created_at, id"
        );
        sqlx::query(built(sql))
            .bind(visible_to)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(workspace_from_row)
            .collect()
    }

    async fn put_grant(&self, g: &Grant) -> Result<()> {
        sqlx::query(
            "INSERT INTO account_workspaces (account_id, workspace_id, can_claim, can_create) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, workspace_id) \
             DO UPDATE SET can_claim = excluded.can_claim, can_create = excluded.can_create",
        )
        .bind(&g.account_id)
        .bind(&g.workspace_id)
        .bind(g.can_claim)
        .bind(g.can_create)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_grant(&self, account_id: &str, workspace_id: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM account_workspaces WHERE account_id = $1 AND workspace_id = $2",
        )
        .bind(account_id)
        .bind(workspace_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_account_key(&self, id: &str, key_hash: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE accounts SET key_hash = $2 WHERE id = $1")
            .bind(id)
            .bind(key_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn get_grant(&self, account_id: &str, workspace_id: &str) -> Result<Option<Grant>> {
        let row = sqlx::query(
            "SELECT account_id, workspace_id, can_claim, can_create FROM account_workspaces \
             WHERE account_id = $1 AND workspace_id = $2",
        )
        .bind(account_id)
        .bind(workspace_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Grant {
                account_id: r.try_get("account_id")?,
                workspace_id: r.try_get("workspace_id")?,
                can_claim: r.try_get("can_claim")?,
                can_create: r.try_get("can_create")?,
            })
        })
        .transpose()
    }

    async fn create_task(&self, t: &Task, source: Option<&Source>) -> Result<Task> {
        let mut tx = self.pool.begin().await?;
        let result = create_task_in(&mut tx, t, source).await;
        let created = finish(tx, result).await?;
        self.events_written();
        Ok(created)
    }

    async fn get_source(&self, id: &str) -> Result<Option<Source>> {
        let sql = format!("SELECT {SOURCE_COLUMNS} FROM sources WHERE id = $1");
        let row = sqlx::query(built(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Source {
                id: r.try_get("id")?,
                workspace_id: r.try_get("workspace_id")?,
                source_type: r.try_get("type")?,
                external_id: r.try_get("external_id")?,
                url: r.try_get("url")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
        sqlx::query(built(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| task_from_row(&r))
            .transpose()
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks \
             WHERE ($1::text IS NULL OR workspace_id = $1) AND ($2::text IS NULL OR status = $2) \
             AND ($3::text IS NULL OR workspace_id IN \
                  (SELECT workspace_id FROM account_workspaces WHERE account_id = $3)) \
             AND ($5::text IS NULL OR source_id = $5) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        );
        sqlx::query(built(sql))
            .bind(&f.workspace_id)
            .bind(f.status.map(|s| s.as_str()))
            .bind(&f.visible_to)
            .bind(i64::from(f.limit))
            .bind(&f.source_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(task_from_row)
            .collect()
    }

    async fn claim(
        &self,
        account: &Account,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<Vec<(Worker, Task)>> {
        let mut tx = self.pool.begin().await?;
        let result = claim_in(&mut tx, account, request, now).await;
        let claimed = finish(tx, result).await?;
        if !claimed.is_empty() {
            self.events_written();
        }
        Ok(claimed)
    }

    async fn get_worker(&self, id: &str) -> Result<Option<Worker>> {
        let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE id = $1");
        sqlx::query(built(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| worker_from_row(&r))
            .transpose()
    }

    async fn list_workers(&self, f: &WorkerFilter) -> Result<Vec<Worker>> {
        let sql = format!(
            "SELECT {WORKER_COLUMNS} FROM workers \
             WHERE ($1::text IS NULL OR task_id = $1) AND ($2::text IS NULL OR status = $2) \
             AND ($3::text IS NULL OR workspace_id IN \
                  (SELECT workspace_id FROM account_workspaces WHERE account_id = $3)) \
             ORDER BY started_at DESC, id DESC LIMIT $4"
        );
        sqlx::query(built(sql))
            .bind(&f.task_id)
            .bind(f.status.map(|s| s.as_str()))
            .bind(&f.visible_to)
            .bind(i64::from(f.limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(worker_from_row)
            .collect()
    }

    async fn apply(&self, id: &str, action: Action, now: Timestamp) -> Result<Applied> {
        let mut tx = self.pool.begin().await?;
        let result = apply_in(&mut tx, id, action, now).await;
        let applied = finish(tx, result).await?;
        if applied.outcome.writes_events() {
            self.events_written();
        }
        Ok(applied)
    }

    async fn append_messages(
        &self,
        worker_id: &str,
        messages: &[Value],
        from: Option<i64>,
        now: Timestamp,
    ) -> Result<Appended> {
        let mut tx = self.pool.begin().await?;
        let result = append_messages_in(&mut tx, worker_id, messages, from, now).await;
        let appended = finish(tx, result).await?;
        if appended.appended > 0 {
            self.events_written();
        }
        Ok(appended)
    }

    async fn purge_events(&self, before: Timestamp, limit: u32) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let result = purge_events_in(&mut tx, before, limit).await;
        finish(tx, result).await
    }

    async fn events_purged_through(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT purged_through FROM event_retention")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn purge_worker_output(&self, before: Timestamp, limit: u32) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let result = purge_worker_output_in(&mut tx, before, limit).await;
        finish(tx, result).await
    }

    async fn list_messages(&self, worker_id: &str, after: i64, limit: u32) -> Result<Vec<Message>> {
        let rows = sqlx::query(
            "SELECT seq, body, created_at FROM messages WHERE worker_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(worker_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Message {
                    seq: r.try_get("seq")?,
                    message: json_text(r.try_get("body")?)?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn list_artifacts(&self, task_id: &str) -> Result<Vec<RecordedArtifact>> {
        let rows = sqlx::query(
            "SELECT worker_id, kind, value, created_at FROM artifacts WHERE task_id = $1 ORDER BY id",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RecordedArtifact {
                    worker_id: r.try_get("worker_id")?,
                    artifact: Artifact {
                        kind: enum_col(r, "kind")?,
                        value: r.try_get("value")?,
                    },
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn add_comment(
        &self,
        task_id: &str,
        author: &str,
        body: &str,
        now: Timestamp,
    ) -> Result<Comment> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO comments (task_id, author, body, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(task_id)
        .bind(author)
        .bind(body)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(Comment {
            id,
            task_id: task_id.to_owned(),
            author: author.to_owned(),
            body: body.to_owned(),
            created_at: now,
        })
    }

    async fn list_comments(&self, task_id: &str) -> Result<Vec<Comment>> {
        let rows = sqlx::query(
            "SELECT id, task_id, author, body, created_at FROM comments WHERE task_id = $1 ORDER BY id",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Comment {
                    id: r.try_get("id")?,
                    task_id: r.try_get("task_id")?,
                    author: r.try_get("author")?,
                    body: r.try_get("body")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn add_attachment(&self, a: &Attachment, data: &[u8]) -> Result<()> {
        let sql = format!(
            "INSERT INTO attachments ({ATTACHMENT_COLUMNS}, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        sqlx::query(built(sql))
            .bind(&a.id)
            .bind(&a.worker_id)
            .bind(&a.task_id)
            .bind(a.message_seq)
            .bind(&a.name)
            .bind(&a.content_type)
            .bind(a.size)
            .bind(a.created_at)
            .bind(data)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_attachments(&self, worker_id: &str) -> Result<Vec<Attachment>> {
        let sql = format!(
            "SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE worker_id = $1 ORDER BY created_at, id"
        );
        sqlx::query(built(sql))
            .bind(worker_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(attachment_from_row)
            .collect()
    }

    async fn get_attachment(&self, id: &str) -> Result<Option<(Attachment, Vec<u8>)>> {
        let sql = format!("SELECT {ATTACHMENT_COLUMNS}, data FROM attachments WHERE id = $1");
        let row = sqlx::query(built(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((attachment_from_row(&r)?, r.try_get("data")?)))
            .transpose()
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT seq, name, workspace_id, data FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    id: r.try_get("seq")?,
                    name: r.try_get("name")?,
                    workspace_id: r.try_get("workspace_id")?,
                    data: r.try_get::<String, _>("data")?.into(),
                })
            })
            .collect()
    }

    async fn last_event_id(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    fn event_signal(&self) -> watch::Receiver<u64> {
        self.events_seen.subscribe()
    }

    async fn usage(&self, account_id: &str, day: &str) -> Result<Usage> {
        let active: i64 = sqlx::query_scalar("SELECT active_workers FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {account_id}")))?;
        let cost: Option<f64> = sqlx::query_scalar(
            "SELECT cost_usd FROM account_usage WHERE account_id = $1 AND day = $2",
        )
        .bind(account_id)
        .bind(day)
        .fetch_optional(&self.pool)
        .await?;
        Ok(Usage {
            active_workers: active,
            cost_usd: cost.unwrap_or(0.0),
        })
    }

    async fn counts(&self) -> Result<Counts> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM tasks GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        let sql = format!(
            "SELECT COUNT(*) FROM workers WHERE status IN ({})",
            status_list(WorkerStatus::ACTIVE)
        );
        let active: i64 = sqlx::query_scalar(built(sql)).fetch_one(&self.pool).await?;
        Counts::from_rows(rows, active)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn stale_workers(&self, cutoffs: Cutoffs) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT id FROM workers WHERE (status IN ({}) AND heartbeat_at < $1) \
             OR (status = 'paused' AND heartbeat_at < $2)",
            status_list(WorkerStatus::LEASED)
        );
        Ok(sqlx::query_scalar(built(sql))
            .bind(cutoffs.leased)
            .bind(cutoffs.paused)
            .fetch_all(&self.pool)
            .await?)
    }
}
