//! The embedded store: one SQLite file in WAL mode.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool. All writes go
//! through one connection and open with `BEGIN IMMEDIATE`, which takes SQLite's single
//! write lock up front: a claim reads and updates under that lock, so no two claims
//! interleave, even from two processes on the same file (the busy timeout makes the
//! second wait). Reads use a few connections of their own, which WAL lets run beside
//! the writer.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde_json::Value;
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

/// Schema migrations in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_initial.sql"),
    include_str!("../../migrations/sqlite/0002_delivery_and_retention.sql"),
];
const READERS: usize = 4;

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    /// Bumped after each commit that wrote events. One process owns the file's
    /// events (two servers on one SQLite file are not a cluster), so a local signal
    /// reaches everyone who streams them.
    events_written: watch::Sender<u64>,
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )?;
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

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            keep_private(&path)?;
            let mut writer = connect(&path)?;
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
                .map(|_| connect(&path).map(Mutex::new))
                .collect::<Result<Vec<_>>>()?;
            Ok(SqliteStore {
                writer: Arc::new(Mutex::new(writer)),
                readers: Arc::new(readers),
                next_reader: AtomicUsize::new(0),
                events_written: watch::Sender::new(0),
            })
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed if `f` succeeds.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    fn signal_events(&self) {
        self.events_written.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Runs `f` on one of the read connections, taking turns.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = self.readers.clone();
        let index = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        tokio::task::spawn_blocking(move || {
            let conn = readers[index].lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

fn millis(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

fn opt_millis(t: Option<Timestamp>) -> Option<i64> {
    t.map(millis)
}

/// Reads a column that holds one of the core's string enums.
fn enum_col<T: std::str::FromStr<Err = String>>(row: &Row, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    parse_column(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn time_col(row: &Row, idx: usize) -> rusqlite::Result<Timestamp> {
    Ok(time::from_millis(row.get(idx)?))
}

fn opt_time_col(row: &Row, idx: usize) -> rusqlite::Result<Option<Timestamp>> {
    Ok(row.get::<_, Option<i64>>(idx)?.map(time::from_millis))
}

fn json_col(row: &Row, idx: usize) -> rusqlite::Result<Option<Value>> {
    row.get::<_, Option<String>>(idx)?
        .map(|text| {
            serde_json::from_str(&text).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    idx,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })
        })
        .transpose()
}

fn account_from_row(row: &Row) -> rusqlite::Result<Account> {
    Ok(Account {
        id: row.get(0)?,
        account_type: enum_col(row, 1)?,
        name: row.get(2)?,
        auth_type: enum_col(row, 3)?,
        max_concurrent_workers: row.get(4)?,
        max_concurrent_sessions: row.get(5)?,
        max_cost_per_day: row.get(6)?,
        github_repo: row.get(7)?,
        created_at: time_col(row, 8)?,
    })
}

fn workspace_from_row(row: &Row) -> rusqlite::Result<Workspace> {
    Ok(Workspace {
        id: row.get(0)?,
        name: row.get(1)?,
        repo_url: row.get(2)?,
        default_branch: row.get(3)?,
        created_at: time_col(row, 4)?,
    })
}

fn task_from_row(row: &Row) -> rusqlite::Result<Task> {
    Ok(Task {
        id: row.get(0)?,
        workspace_id: row.get(1)?,
        title: row.get(2)?,
        description: row.get(3)?,
        runner_preference: enum_col(row, 4)?,
        priority: row.get(5)?,
        status: enum_col(row, 6)?,
        attempts: row.get(7)?,
        max_attempts: row.get(8)?,
        max_cost_usd: row.get(9)?,
        claimed_by: row.get(10)?,
        worker_id: row.get(11)?,
        created_at: time_col(row, 12)?,
        claimed_at: opt_time_col(row, 13)?,
        completed_at: opt_time_col(row, 14)?,
        result: json_col(row, 15)?,
        source_id: row.get(16)?,
    })
}

fn worker_from_row(row: &Row) -> rusqlite::Result<Worker> {
    Ok(Worker {
        id: row.get(0)?,
        task_id: row.get(1)?,
        workspace_id: row.get(2)?,
        account_id: row.get(3)?,
        status: enum_col(row, 4)?,
        cost_usd: row.get(5)?,
        turns: row.get(6)?,
        session_id: row.get(7)?,
        branch: row.get(8)?,
        commit_sha: row.get(9)?,
        pr_url: row.get(10)?,
        question: row.get(11)?,
        error: row.get(12)?,
        pending_reply: row.get(13)?,
        started_at: time_col(row, 14)?,
        heartbeat_at: time_col(row, 15)?,
        finished_at: opt_time_col(row, 16)?,
    })
}

fn attachment_from_row(row: &Row) -> rusqlite::Result<Attachment> {
    Ok(Attachment {
        id: row.get(0)?,
        worker_id: row.get(1)?,
        task_id: row.get(2)?,
        message_seq: row.get(3)?,
        name: row.get(4)?,
        content_type: row.get(5)?,
        size: row.get(6)?,
        created_at: time_col(row, 7)?,
    })
}

fn load_task(conn: &Connection, id: &str) -> Result<Option<Task>> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
    Ok(conn.query_row(&sql, [id], task_from_row).optional()?)
}

fn load_worker(conn: &Connection, id: &str) -> Result<Option<Worker>> {
    let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE id = ?1");
    Ok(conn.query_row(&sql, [id], worker_from_row).optional()?)
}

fn insert_worker(tx: &Transaction, w: &Worker) -> Result<()> {
    tx.prepare_cached(&format!(
        "INSERT INTO workers ({WORKER_COLUMNS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
    ))?
    .execute(params![
        w.id,
        w.task_id,
        w.workspace_id,
        w.account_id,
        w.status.as_str(),
        w.cost_usd,
        w.turns,
        w.session_id,
        w.branch,
        w.commit_sha,
        w.pr_url,
        w.question,
        w.error,
        w.pending_reply,
        millis(w.started_at),
        millis(w.heartbeat_at),
        opt_millis(w.finished_at),
    ])?;
    Ok(())
}

/// Writes back every field of a worker that can change after it was created.
fn save_worker(tx: &Transaction, w: &Worker) -> Result<()> {
    tx.prepare_cached(
        "UPDATE workers SET status = ?2, cost_usd = ?3, turns = ?4, session_id = ?5, \
         branch = ?6, commit_sha = ?7, pr_url = ?8, question = ?9, error = ?10, \
         pending_reply = ?11, heartbeat_at = ?12, finished_at = ?13 WHERE id = ?1",
    )?
    .execute(params![
        w.id,
        w.status.as_str(),
        w.cost_usd,
        w.turns,
        w.session_id,
        w.branch,
        w.commit_sha,
        w.pr_url,
        w.question,
        w.error,
        w.pending_reply,
        millis(w.heartbeat_at),
        opt_millis(w.finished_at),
    ])?;
    Ok(())
}

/// Writes back every field of a task that can change after it was created.
fn save_task(tx: &Transaction, t: &Task) -> Result<()> {
    tx.prepare_cached(
        "UPDATE tasks SET status = ?2, attempts = ?3, claimed_by = ?4, worker_id = ?5, \
         claimed_at = ?6, completed_at = ?7, result = ?8 WHERE id = ?1",
    )?
    .execute(params![
        t.id,
        t.status.as_str(),
        t.attempts,
        t.claimed_by,
        t.worker_id,
        opt_millis(t.claimed_at),
        opt_millis(t.completed_at),
        t.result.as_ref().map(Value::to_string),
    ])?;
    Ok(())
}

/// Moves an account's usage counters by `change`.
fn record_usage(tx: &Transaction, account_id: &str, change: &UsageChange) -> Result<()> {
    if change.active_workers != 0 {
        tx.prepare_cached(
            "UPDATE accounts SET active_workers = active_workers + ?2 WHERE id = ?1",
        )?
        .execute(params![account_id, change.active_workers])?;
    }
    if change.cost_usd != 0.0 {
        tx.prepare_cached(
            "INSERT INTO account_usage (account_id, day, cost_usd) VALUES (?1, ?2, ?3) \
             ON CONFLICT (account_id, day) DO UPDATE SET cost_usd = cost_usd + excluded.cost_usd",
        )?
        .execute(params![account_id, change.day, change.cost_usd])?;
    }
    Ok(())
}

/// The id of the workspace's source with `src`'s type and external id, made from
/// `src` if there is none. A source without an external id is always new.
fn upsert_source(tx: &Transaction, src: &Source) -> Result<String> {
    tx.prepare_cached(&format!(
        "INSERT INTO sources ({SOURCE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (workspace_id, type, external_id) DO NOTHING"
    ))?
    .execute(params![
        src.id,
        src.workspace_id,
        src.source_type,
        src.external_id,
        src.url,
        millis(src.created_at),
    ])?;
    match &src.external_id {
        None => Ok(src.id.clone()),
        Some(external) => Ok(tx
            .prepare_cached(
                "SELECT id FROM sources WHERE workspace_id = ?1 AND type = ?2 AND external_id = ?3",
            )?
            .query_row(params![src.workspace_id, src.source_type, external], |r| {
                r.get(0)
            })?),
    }
}

fn insert_artifacts(
    tx: &Transaction,
    worker: &Worker,
    artifacts: &[Artifact],
    now: Timestamp,
) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO artifacts (task_id, worker_id, kind, value, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for a in artifacts {
        stmt.execute(params![
            worker.task_id,
            worker.id,
            a.kind.as_str(),
            a.value,
            millis(now)
        ])?;
    }
    Ok(())
}

fn insert_events(tx: &Transaction, events: &[Event], now: Timestamp) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO events (name, workspace_id, data, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for e in events {
        stmt.execute(params![
            e.name,
            e.workspace_id,
            e.data.to_string(),
            millis(now)
        ])?;
    }
    Ok(())
}

/// Appends to a worker's stream inside `tx`; returns the last sequence number.
fn insert_messages(
    tx: &Transaction,
    worker: &Worker,
    messages: &[Value],
    now: Timestamp,
) -> Result<i64> {
    let mut seq: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE worker_id = ?1")?
        .query_row([&worker.id], |r| r.get(0))?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO messages (worker_id, seq, body, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut events = Vec::with_capacity(messages.len());
    for m in messages {
        seq += 1;
        stmt.execute(params![worker.id, seq, m.to_string(), millis(now)])?;
        events.push(Event::worker_message(worker, m));
    }
    insert_events(tx, &events, now)?;
    Ok(seq)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(&self, a: &Account, key_hash: &str) -> Result<()> {
        let a = a.clone();
        let key_hash = key_hash.to_owned();
        self.write(move |tx| {
            tx.execute(
                &format!("INSERT INTO accounts ({ACCOUNT_COLUMNS}, key_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![
                    a.id,
                    a.account_type.as_str(),
                    a.name,
                    a.auth_type.as_str(),
                    a.max_concurrent_workers,
                    a.max_concurrent_sessions,
                    a.max_cost_per_day,
                    a.github_repo,
                    millis(a.created_at),
                    key_hash,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn account_by_key_hash(&self, key_hash: &str) -> Result<Option<Account>> {
        let key_hash = key_hash.to_owned();
        self.read(move |c| {
            let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE key_hash = ?1");
            Ok(c.prepare_cached(&sql)?
                .query_row([key_hash], account_from_row)
                .optional()?)
        })
        .await
    }

    async fn get_account(&self, id: &str) -> Result<Option<Account>> {
        let id = id.to_owned();
        self.read(move |c| {
            let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1");
            Ok(c.prepare_cached(&sql)?
                .query_row([id], account_from_row)
                .optional()?)
        })
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        self.read(|c| {
            let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at, id");
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([], account_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn create_workspace(&self, w: &Workspace) -> Result<()> {
        let w = w.clone();
        self.write(move |tx| {
            tx.execute(
                &format!(
                    "INSERT INTO workspaces ({WORKSPACE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
                ),
                params![
                    w.id,
                    w.name,
                    w.repo_url,
                    w.default_branch,
                    millis(w.created_at)
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>> {
        let id = id.to_owned();
        self.read(move |c| {
            let sql = format!("SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = ?1");
            Ok(c.prepare_cached(&sql)?
                .query_row([id], workspace_from_row)
                .optional()?)
        })
        .await
    }

    async fn list_workspaces(&self, visible_to: Option<&str>) -> Result<Vec<Workspace>> {
        let visible_to = visible_to.map(str::to_owned);
        self.read(move |c| {
            let sql = format!(
                "SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE ?1 IS NULL OR id IN \
                 (SELECT workspace_id FROM account_workspaces WHERE account_id = ?1) \
                 ORDER BY created_at, id"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([visible_to], workspace_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn put_grant(&self, g: &Grant) -> Result<()> {
        let g = g.clone();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO account_workspaces (account_id, workspace_id, can_claim, can_create) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (account_id, workspace_id) \
                 DO UPDATE SET can_claim = excluded.can_claim, can_create = excluded.can_create",
                params![g.account_id, g.workspace_id, g.can_claim, g.can_create],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_grant(&self, account_id: &str, workspace_id: &str) -> Result<bool> {
        let (a, w) = (account_id.to_owned(), workspace_id.to_owned());
        self.write(move |tx| {
            let n = tx.execute(
                "DELETE FROM account_workspaces WHERE account_id = ?1 AND workspace_id = ?2",
                params![a, w],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn set_account_key(&self, id: &str, key_hash: &str) -> Result<bool> {
        let (id, hash) = (id.to_owned(), key_hash.to_owned());
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE accounts SET key_hash = ?2 WHERE id = ?1",
                params![id, hash],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn get_grant(&self, account_id: &str, workspace_id: &str) -> Result<Option<Grant>> {
        let (a, w) = (account_id.to_owned(), workspace_id.to_owned());
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT account_id, workspace_id, can_claim, can_create FROM account_workspaces \
                 WHERE account_id = ?1 AND workspace_id = ?2",
            )?
            .query_row(params![a, w], |r| {
                Ok(Grant {
                    account_id: r.get(0)?,
                    workspace_id: r.get(1)?,
                    can_claim: r.get(2)?,
                    can_create: r.get(3)?,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn create_task(&self, t: &Task, source: Option<&Source>) -> Result<Task> {
        let mut t = t.clone();
        let source = source.cloned();
        let created = self
            .write(move |tx| {
                if let Some(src) = &source {
                    t.source_id = Some(upsert_source(tx, src)?);
                }
                tx.prepare_cached(&format!(
                    "INSERT INTO tasks ({TASK_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
                ))?
                .execute(params![
                    t.id,
                    t.workspace_id,
                    t.title,
                    t.description,
                    t.runner_preference.as_str(),
                    t.priority,
                    t.status.as_str(),
                    t.attempts,
                    t.max_attempts,
                    t.max_cost_usd,
                    t.claimed_by,
                    t.worker_id,
                    millis(t.created_at),
                    opt_millis(t.claimed_at),
                    opt_millis(t.completed_at),
                    t.result.as_ref().map(Value::to_string),
                    t.source_id,
                ])?;
                insert_events(tx, &[Event::task_created(&t)], t.created_at)?;
                Ok(t)
            })
            .await?;
        self.signal_events();
        Ok(created)
    }

    async fn get_source(&self, id: &str) -> Result<Option<Source>> {
        let id = id.to_owned();
        self.read(move |c| {
            let sql = format!("SELECT {SOURCE_COLUMNS} FROM sources WHERE id = ?1");
            Ok(c.prepare_cached(&sql)?
                .query_row([id], |r| {
                    Ok(Source {
                        id: r.get(0)?,
                        workspace_id: r.get(1)?,
                        source_type: r.get(2)?,
                        external_id: r.get(3)?,
                        url: r.get(4)?,
                        created_at: time_col(r, 5)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>> {
        let id = id.to_owned();
        self.read(move |c| load_task(c, &id)).await
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        let f = f.clone();
        self.read(move |c| {
            let sql = format!(
                "SELECT {TASK_COLUMNS} FROM tasks \
                 WHERE (?1 IS NULL OR workspace_id = ?1) AND (?2 IS NULL OR status = ?2) \
                 AND (?3 IS NULL OR workspace_id IN \
                      (SELECT workspace_id FROM account_workspaces WHERE account_id = ?3)) \
                 AND (?5 IS NULL OR source_id = ?5) \
                 ORDER BY created_at DESC, id DESC LIMIT ?4"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![
                    f.workspace_id,
                    f.status.map(|s| s.as_str()),
                    f.visible_to,
                    f.limit,
                    f.source_id
                ],
                task_from_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn claim(
        &self,
        account: &Account,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<Vec<(Worker, Task)>> {
        let account_id = account.id.clone();
        let request = request.clone();
        let claimed = self.write(move |tx| {
            // Re-read the account under the write lock: its limits may have changed.
            let sql =
                format!("SELECT {ACCOUNT_COLUMNS}, active_workers FROM accounts WHERE id = ?1");
            let found = tx
                .prepare_cached(&sql)?
                .query_row([&account_id], |r| {
                    Ok((account_from_row(r)?, r.get::<_, i64>(9)?))
                })
                .optional()?;
            let Some((account, active)) = found else {
                return Err(StoreError::NotFound(format!("account {account_id}")));
            };
            let cost_today: f64 = tx
                .prepare_cached(
                    "SELECT cost_usd FROM account_usage WHERE account_id = ?1 AND day = ?2",
                )?
                .query_row(params![account.id, time::utc_day(now)], |r| r.get(0))
                .optional()?
                .unwrap_or(0.0);
            let slots = claim::free_slots(&account, active, cost_today, request.max_tasks);
            if slots == 0 {
                return Ok(Vec::new());
            }
            // Walk `tasks_pending` in dispatch order and stop at the first task that fits: left
            // to itself the planner may pick the workspace index and sort the whole
            // workspace, which makes each claim cost O(tasks).
            let [any, own] = claim::preferences_for(account.account_type);
            let sql = format!(
                "SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_pending WHERE status = 'pending' \
                 AND runner_preference IN (?2, ?3) \
                 AND workspace_id IN (SELECT workspace_id FROM account_workspaces \
                                      WHERE account_id = ?1 AND can_claim) \
                 AND (?4 IS NULL OR workspace_id = ?4) \
                 ORDER BY priority DESC, created_at, id LIMIT ?5"
            );
            let mut tasks: Vec<Task> = tx
                .prepare_cached(&sql)?
                .query_map(
                    params![
                        account.id,
                        any.as_str(),
                        own.as_str(),
                        request.workspace_id,
                        slots
                    ],
                    task_from_row,
                )?
                .collect::<rusqlite::Result<_>>()?;
            let mut claimed = Vec::with_capacity(tasks.len());
            for mut task in tasks.drain(..) {
                let (worker, events) = claim::assign(&mut task, &account, now);
                save_task(tx, &task)?;
                insert_worker(tx, &worker)?;
                insert_events(tx, &events, now)?;
                claimed.push((worker, task));
            }
            let taken = UsageChange {
                active_workers: claimed.len() as i64,
                ..UsageChange::default()
            };
            record_usage(tx, &account.id, &taken)?;
            Ok(claimed)
        })
        .await?;
        if !claimed.is_empty() {
            self.signal_events();
        }
        Ok(claimed)
    }

    async fn get_worker(&self, id: &str) -> Result<Option<Worker>> {
        let id = id.to_owned();
        self.read(move |c| load_worker(c, &id)).await
    }

    async fn list_workers(&self, f: &WorkerFilter) -> Result<Vec<Worker>> {
        let f = f.clone();
        self.read(move |c| {
            let sql = format!(
                "SELECT {WORKER_COLUMNS} FROM workers \
                 WHERE (?1 IS NULL OR task_id = ?1) AND (?2 IS NULL OR status = ?2) \
                 AND (?3 IS NULL OR workspace_id IN \
                      (SELECT workspace_id FROM account_workspaces WHERE account_id = ?3)) \
                 ORDER BY started_at DESC, id DESC LIMIT ?4"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![
                    f.task_id,
                    f.status.map(|s| s.as_str()),
                    f.visible_to,
                    f.limit
                ],
                worker_from_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn apply(&self, id: &str, action: Action, now: Timestamp) -> Result<Applied> {
        let id = id.to_owned();
        let applied = self
            .write(move |tx| {
                let (mut task, mut worker) = if action.targets_worker() {
                    let worker = load_worker(tx, &id)?
                        .ok_or_else(|| StoreError::NotFound(format!("worker {id}")))?;
                    let task = load_task(tx, &worker.task_id)?
                        .ok_or_else(|| StoreError::NotFound(format!("task {}", worker.task_id)))?;
                    (task, Some(worker))
                } else {
                    let task = load_task(tx, &id)?
                        .ok_or_else(|| StoreError::NotFound(format!("task {id}")))?;
                    let worker = match &task.worker_id {
                        Some(w) => load_worker(tx, w)?,
                        None => None,
                    };
                    (task, worker)
                };
                let outcome = actions::apply(action, &mut task, worker.as_mut(), now)?;
                if outcome.changed {
                    save_task(tx, &task)?;
                    if let Some(w) = &worker {
                        save_worker(tx, w)?;
                        record_usage(tx, &w.account_id, &outcome.usage)?;
                        insert_artifacts(tx, w, &outcome.artifacts, now)?;
                        if !outcome.messages.is_empty() {
                            insert_messages(tx, w, &outcome.messages, now)?;
                        }
                    }
                    insert_events(tx, &outcome.events, now)?;
                }
                Ok(Applied {
                    task,
                    worker,
                    outcome,
                })
            })
            .await?;
        if applied.outcome.writes_events() {
            self.signal_events();
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
        let id = worker_id.to_owned();
        let messages = messages.to_vec();
        let appended = self
            .write(move |tx| {
                let mut worker = load_worker(tx, &id)?
                    .ok_or_else(|| StoreError::NotFound(format!("worker {id}")))?;
                // Only numbered batches need to know, and move, how far the agent got.
                let taken: i64 = match from {
                    Some(_) => tx
                        .prepare_cached("SELECT messages_taken FROM workers WHERE id = ?1")?
                        .query_row([&id], |r| r.get(0))?,
                    None => 0,
                };
                let fresh = messages::fresh(taken, from, messages.len());
                let new = &messages[fresh.skip..];
                let last_seq = insert_messages(tx, &worker, new, now)?;
                worker.heartbeat_at = now;
                save_worker(tx, &worker)?;
                if from.is_some() {
                    tx.prepare_cached("UPDATE workers SET messages_taken = ?2 WHERE id = ?1")?
                        .execute(params![id, fresh.taken])?;
                }
                Ok(Appended {
                    appended: new.len(),
                    last_seq,
                })
            })
            .await?;
        if appended.appended > 0 {
            self.signal_events();
        }
        Ok(appended)
    }

    async fn list_messages(&self, worker_id: &str, after: i64, limit: u32) -> Result<Vec<Message>> {
        let id = worker_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, body, created_at FROM messages WHERE worker_id = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![id, after, limit], |r| {
                Ok(Message {
                    seq: r.get(0)?,
                    message: json_col(r, 1)?.unwrap_or(Value::Null),
                    created_at: time_col(r, 2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn list_artifacts(&self, task_id: &str) -> Result<Vec<RecordedArtifact>> {
        let id = task_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT worker_id, kind, value, created_at FROM artifacts WHERE task_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok(RecordedArtifact {
                    worker_id: r.get(0)?,
                    artifact: Artifact { kind: enum_col(r, 1)?, value: r.get(2)? },
                    created_at: time_col(r, 3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn add_comment(
        &self,
        task_id: &str,
        author: &str,
        body: &str,
        now: Timestamp,
    ) -> Result<Comment> {
        let (task_id, author, body) = (task_id.to_owned(), author.to_owned(), body.to_owned());
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO comments (task_id, author, body, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![task_id, author, body, millis(now)])?;
            Ok(Comment {
                id: tx.last_insert_rowid(),
                task_id,
                author,
                body,
                created_at: now,
            })
        })
        .await
    }

    async fn list_comments(&self, task_id: &str) -> Result<Vec<Comment>> {
        let id = task_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, task_id, author, body, created_at FROM comments WHERE task_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok(Comment {
                    id: r.get(0)?,
                    task_id: r.get(1)?,
                    author: r.get(2)?,
                    body: r.get(3)?,
                    created_at: time_col(r, 4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn add_attachment(&self, a: &Attachment, data: &[u8]) -> Result<()> {
        let (a, data) = (a.clone(), data.to_vec());
        self.write(move |tx| {
            tx.prepare_cached(&format!(
                "INSERT INTO attachments ({ATTACHMENT_COLUMNS}, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                a.id,
                a.worker_id,
                a.task_id,
                a.message_seq,
                a.name,
                a.content_type,
                a.size,
                millis(a.created_at),
                data,
            ])?;
            Ok(())
        })
        .await
    }

    async fn list_attachments(&self, worker_id: &str) -> Result<Vec<Attachment>> {
        let id = worker_id.to_owned();
        self.read(move |c| {
            let sql = format!(
                "SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE worker_id = ?1 ORDER BY created_at, id"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([id], attachment_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn get_attachment(&self, id: &str) -> Result<Option<(Attachment, Vec<u8>)>> {
        let id = id.to_owned();
        self.read(move |c| {
            let sql = format!("SELECT {ATTACHMENT_COLUMNS}, data FROM attachments WHERE id = ?1");
            Ok(c.prepare_cached(&sql)?
                .query_row([id], |r| Ok((attachment_from_row(r)?, r.get(8)?)))
                .optional()?)
        })
        .await
    }

    async fn purge_events(&self, before: Timestamp, limit: u32) -> Result<u64> {
        self.write(move |tx| {
            let through: Option<i64> = tx
                .prepare_cached(
                    "SELECT MAX(id) FROM (SELECT id FROM events WHERE created_at < ?1 \
                     AND id < (SELECT MAX(id) FROM events) ORDER BY id LIMIT ?2)",
                )?
                .query_row(params![millis(before), limit], |r| r.get(0))?;
            let Some(through) = through else {
                return Ok(0);
            };
            let deleted = tx
                .prepare_cached("DELETE FROM events WHERE id <= ?1")?
                .execute([through])?;
            tx.prepare_cached(
                "UPDATE event_retention SET purged_through = MAX(purged_through, ?1)",
            )?
            .execute([through])?;
            Ok(deleted as u64)
        })
        .await
    }

    async fn events_purged_through(&self) -> Result<i64> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT purged_through FROM event_retention")?
                    .query_row([], |r| r.get(0))?,
            )
        })
        .await
    }

    async fn purge_worker_output(&self, before: Timestamp, limit: u32) -> Result<u64> {
        self.write(move |tx| {
            let workers: Vec<String> = tx
                .prepare_cached(
                    "SELECT id FROM workers WHERE output_purged_at IS NULL AND finished_at < ?1 \
                     ORDER BY finished_at LIMIT ?2",
                )?
                .query_map(params![millis(before), limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut left = i64::from(limit);
            for id in workers {
                for sql in [
                    "DELETE FROM messages WHERE worker_id = ?1 AND seq IN \
                     (SELECT seq FROM messages WHERE worker_id = ?1 ORDER BY seq LIMIT ?2)",
                    "DELETE FROM attachments WHERE id IN \
                     (SELECT id FROM attachments WHERE worker_id = ?1 LIMIT ?2)",
                ] {
                    left -= tx.prepare_cached(sql)?.execute(params![id, left])? as i64;
                    if left <= 0 {
                        return Ok(u64::from(limit));
                    }
                }
                tx.prepare_cached("UPDATE workers SET output_purged_at = ?2 WHERE id = ?1")?
                    .execute(params![id, millis(time::now())])?;
            }
            Ok((i64::from(limit) - left) as u64)
        })
        .await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, name, workspace_id, data FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], |r| {
                Ok(StoredEvent {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    workspace_id: r.get(2)?,
                    data: r.get::<_, String>(3)?.into(),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn last_event_id(&self) -> Result<i64> {
        self.read(|c| Ok(c.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?))
            .await
    }

    fn event_signal(&self) -> watch::Receiver<u64> {
        self.events_written.subscribe()
    }

    async fn usage(&self, account_id: &str, day: &str) -> Result<Usage> {
        let (id, day) = (account_id.to_owned(), day.to_owned());
        self.read(move |c| {
            let active: i64 = c
                .prepare_cached("SELECT active_workers FROM accounts WHERE id = ?1")?
                .query_row([&id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
            let cost: f64 = c
                .prepare_cached(
                    "SELECT cost_usd FROM account_usage WHERE account_id = ?1 AND day = ?2",
                )?
                .query_row(params![id, day], |r| r.get(0))
                .optional()?
                .unwrap_or(0.0);
            Ok(Usage {
                active_workers: active,
                cost_usd: cost,
            })
        })
        .await
    }

    async fn counts(&self) -> Result<Counts> {
        self.read(|c| {
            let rows = c
                .prepare_cached("SELECT status, COUNT(*) FROM tasks GROUP BY status")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(String, i64)>>>()?;
            let sql = format!(
                "SELECT COUNT(*) FROM workers WHERE status IN ({})",
                status_list(WorkerStatus::ACTIVE)
            );
            let active: i64 = c.query_row(&sql, [], |r| r.get(0))?;
            Counts::from_rows(rows, active)
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| {
            Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())?)
        })
        .await
    }

    async fn stale_workers(&self, cutoffs: Cutoffs) -> Result<Vec<String>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT id FROM workers WHERE (status IN ({}) AND heartbeat_at < ?1) \
                 OR (status = 'paused' AND heartbeat_at < ?2)",
                status_list(WorkerStatus::LEASED)
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![millis(cutoffs.leased), millis(cutoffs.paused)],
                |r| r.get(0),
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
}
