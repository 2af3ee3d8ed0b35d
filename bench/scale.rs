//! A team's years of history: a million tasks (most completed) and ten million runner
//! messages, on each backend. Does the present stay as fast as on an empty database?
//!
//! For each backend it starts `buildd serve` on a fresh database, queues pending tasks
//! and times claims (the empty database's figure), then writes the history with bulk
//! SQL (far faster than the API, and the same rows the API would leave), and times
//! again: claims, the first page of the task list for each filter the dashboard uses
//! (as the admin and as an account, which sees only its granted workspaces), the
//! counts, and a worker's messages. On Postgres it also counts the sequential scans
//! of tasks, workers and messages the requests caused (`pg_stat_user_tables`): there
//! should be none. Last, the database's size per million messages.
//!
//! `cargo bench --bench scale` — `BUILDD_BENCH_TASKS` (default 1,000,000),
//! `BUILDD_BENCH_MESSAGES` (default 10,000,000); Postgres with
//! `BUILDD_TEST_DATABASE_URL`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Api, Server};
use serde_json::json;
use sqlx::Connection;

/// Pending tasks queued before the history (the empty database's queue).
const QUEUED: usize = 10_000;
/// Claims timed on each database, after as many untimed ones: the server's page cache
/// starts cold after the bulk writes.
const CLAIMS: usize = 300;
/// Timings per request, of which the median is printed.
const RUNS: usize = 15;

/// What the history holds, and where it goes.
struct History {
    tasks: usize,
    messages: usize,
    workspace: String,
    account: String,
}

impl History {
    /// Runner messages per worker: every task that ran has one worker.
    fn per_worker(&self) -> usize {
        let workers = self.tasks - self.tasks / 100 - self.tasks / 100;
        self.messages.div_ceil(workers.max(1))
    }
}

fn main() {
    let tasks: usize = common::env_or("BUILDD_BENCH_TASKS", 1_000_000);
    let messages: usize = common::env_or("BUILDD_BENCH_MESSAGES", 10_000_000);
    common::block_on(async {
        println!("scale benchmark: {tasks} tasks and {messages} runner messages of history");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buildd.db");
        let url = format!("sqlite:{}", path.display());
        run("sqlite", &url, dir.path(), tasks, messages).await;
        match common::pg_base_url() {
            None => println!("postgres: skipped (BUILDD_TEST_DATABASE_URL is not set)"),
            Some(base) => {
                let url = common::fresh_pg_database(&base).await;
                let dir = tempfile::tempdir().unwrap();
                run("postgres", &url, dir.path(), tasks, messages).await;
            }
        }
    });
}

async fn run(label: &str, url: &str, dir: &std::path::Path, tasks: usize, messages: usize) {
    let server = Server::start(url, dir, &[]);
    let admin = server.admin();
    let workspace = admin.workspace("history").await;
    let (account, key) = admin
        .account(
            json!({"type": "service", "name": "fleet", "maxConcurrentWorkers": 100000}),
            &workspace,
            true,
            false,
        )
        .await;
    let agent = server.client(&key);
    let history = History {
        tasks,
        messages,
        workspace,
        account,
    };

    let started = Instant::now();
    queue(url, &history).await;
    println!(
        "{label}: queued {QUEUED} pending tasks in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let empty = claim_p50(&agent).await;

    let started = Instant::now();
    write_history(url, &history).await;
    println!(
        "{label}: wrote {tasks} tasks, their workers and {} messages in {:.0} s",
        history.per_worker() * (tasks - tasks / 50),
        started.elapsed().as_secs_f64()
    );
    let scans_before = seq_scans(url).await;
    let full = claim_p50(&agent).await;
    println!(
        "{label}: claim p50 {empty:.2} ms empty, {full:.2} ms with the history ({:.2}×)",
        full / empty
    );

    let ws = &history.workspace;
    let mut slowest = (0.0, String::new());
    for (who, api) in [("admin", &admin), ("account", &agent)] {
        let mut line = Vec::new();
        for filter in [
            String::new(),
            format!("workspaceId={ws}"),
            "status=pending".into(),
            "status=running".into(),
            "status=failed".into(),
            "status=completed".into(),
            format!("workspaceId={ws}&status=cancelled"),
            format!("workspaceId={ws}&status=waiting_input"),
        ] {
            let path = format!("/api/tasks?limit=100&{filter}");
            let ms = timed(api, &path).await;
            if ms > slowest.0 {
                slowest = (ms, format!("{who} {path}"));
            }
            let name = if filter.is_empty() { "all" } else { &filter };
            line.push(format!("{} {ms:.1}", name.replace(ws.as_str(), "WS")));
        }
        println!("{label}: first page as {who} (ms): {}", line.join(" · "));
    }
    println!(
        "{label}: slowest first page {:.1} ms ({})",
        slowest.0, slowest.1
    );
    // A worker from the middle of the history.
    let worker = format!("wrk-{:016}", tasks / 2 + 3);
    let first = timed(
        &admin,
        &format!("/api/workers/{worker}/messages?limit=1000"),
    )
    .await;
    let later = timed(
        &admin,
        &format!("/api/workers/{worker}/messages?after=5&limit=1000"),
    )
    .await;
    println!("{label}: a worker's messages: first page {first:.1} ms · after seq 5 {later:.1} ms");
    if let (Some(before), Some(after)) = (scans_before, seq_scans(url).await) {
        let caused: Vec<String> = after
            .iter()
            .zip(&before)
            .map(|((table, a), (_, b))| format!("{table} {}", a - b))
            .collect();
        println!(
            "{label}: sequential scans the requests caused: {}",
            caused.join(" · ")
        );
    }
    // Counts read every row of a status, and a substring search cannot use an index:
    // timed apart from the scan count.
    let counts = timed(&admin, &format!("/api/tasks/counts?workspaceId={ws}")).await;
    let search = timed(&admin, "/api/tasks?limit=100&q=seeded%20task%20999").await;
    println!("{label}: counts per status {counts:.1} ms · search (for a title) {search:.1} ms");
    let (bytes, of_messages) = size(url).await;
    let millions = (history.per_worker() * (tasks - tasks / 50)) as f64 / 1e6;
    match of_messages {
        Some(m) => println!(
            "{label}: database {:.0} MiB, {:.0} MiB per million messages (messages and their index {:.0} MiB)",
            mib(bytes),
            mib(bytes) / millions,
            mib(m)
        ),
        None => println!(
            "{label}: database {:.0} MiB, {:.0} MiB per million messages (whole file)",
            mib(bytes),
            mib(bytes) / millions
        ),
    }
    drop(server);
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The median of [`CLAIMS`] claims, one after another, in milliseconds.
async fn claim_p50(agent: &Api) -> f64 {
    for _ in 0..CLAIMS {
        agent.ok("/api/workers/claim", json!({})).await;
    }
    let mut times = Vec::with_capacity(CLAIMS);
    for _ in 0..CLAIMS {
        let started = Instant::now();
        let answer = agent.ok("/api/workers/claim", json!({})).await;
        times.push(started.elapsed());
        assert_eq!(
            answer["workers"].as_array().map(Vec::len),
            Some(1),
            "{answer}"
        );
    }
    median(times)
}

/// The median of [`RUNS`] timings of `GET path`, in milliseconds.
async fn timed(api: &Api, path: &str) -> f64 {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let (status, body) = api.get(path).await;
        times.push(started.elapsed());
        assert!(status.is_success(), "{path}: {body}");
    }
    median(times)
}

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1000.0
}

/// The SQL that writes the history, for each backend: `tasks` tasks from a year ago
/// on, 30 ms apart; 1% pending, 1% cancelled (never ran), 1% failed, the rest
/// completed; a worker for each that ran, with its messages.
struct Seed {
    tasks: &'static str,
    workers: &'static str,
    messages: &'static str,
}

const SQLITE_SEED: Seed = Seed {
    tasks: "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2) \
        INSERT INTO tasks (id, workspace_id, title, description, runner_preference, priority, \
          status, attempts, max_attempts, claimed_by, worker_id, created_at, claimed_at, completed_at) \
        SELECT printf('tsk-%016d', i), ?3, 'Seeded task ' || i, \
          'Task number ' || i || ' of the seeded history', 'any', 0, \
          CASE i % 100 WHEN 0 THEN 'pending' WHEN 1 THEN 'cancelled' WHEN 2 THEN 'failed' ELSE 'completed' END, \
          CASE i % 100 WHEN 0 THEN 0 WHEN 1 THEN 0 ELSE 1 END, 3, \
          CASE WHEN i % 100 < 2 THEN NULL ELSE ?4 END, \
          CASE WHEN i % 100 < 2 THEN NULL ELSE printf('wrk-%016d', i) END, \
          ?5 + i * 30, \
          CASE WHEN i % 100 < 2 THEN NULL ELSE ?5 + i * 30 + 1000 END, \
          CASE WHEN i % 100 = 0 THEN NULL ELSE ?5 + i * 30 + 60000 END \
        FROM n",
    workers: "INSERT INTO workers (id, task_id, workspace_id, account_id, status, cost_usd, turns, \
          branch, started_at, heartbeat_at, finished_at) \
        SELECT worker_id, id, workspace_id, claimed_by, \
          CASE status WHEN 'failed' THEN 'error' ELSE 'completed' END, 0.02, 4, \
          'buildd/' || id, claimed_at, completed_at, completed_at \
        FROM tasks WHERE worker_id IS NOT NULL AND id >= printf('tsk-%016d', ?1) \
          AND id < printf('tsk-%016d', ?2)",
    messages: "WITH RECURSIVE s(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM s WHERE j < ?3) \
        INSERT INTO messages (worker_id, seq, body, created_at) \
        SELECT w.id, s.j, \
          '{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"Step ' || s.j || ' of the run: edited src/lib.rs\"}]}}', \
          w.started_at + s.j * 100 \
        FROM workers w, s WHERE w.id >= printf('wrk-%016d', ?1) AND w.id < printf('wrk-%016d', ?2) \
        ORDER BY w.id, s.j",
};

const POSTGRES_SEED: Seed = Seed {
    tasks: "INSERT INTO tasks (id, workspace_id, title, description, runner_preference, priority, \
          status, attempts, max_attempts, claimed_by, worker_id, created_at, claimed_at, completed_at) \
        SELECT 'tsk-' || lpad(i::text, 16, '0'), $3, 'Seeded task ' || i, \
          'Task number ' || i || ' of the seeded history', 'any', 0, \
          CASE i % 100 WHEN 0 THEN 'pending' WHEN 1 THEN 'cancelled' WHEN 2 THEN 'failed' ELSE 'completed' END, \
          CASE WHEN i % 100 < 2 THEN 0 ELSE 1 END, 3, \
          CASE WHEN i % 100 < 2 THEN NULL ELSE $4 END, \
          CASE WHEN i % 100 < 2 THEN NULL ELSE 'wrk-' || lpad(i::text, 16, '0') END, \
          to_timestamp(($5 + i * 30) / 1000.0), \
          CASE WHEN i % 100 < 2 THEN NULL ELSE to_timestamp(($5 + i * 30 + 1000) / 1000.0) END, \
          CASE WHEN i % 100 = 0 THEN NULL ELSE to_timestamp(($5 + i * 30 + 60000) / 1000.0) END \
        FROM generate_series($1::bigint, $2::bigint - 1) AS i",
    workers: "INSERT INTO workers (id, task_id, workspace_id, account_id, status, cost_usd, turns, \
          branch, started_at, heartbeat_at, finished_at) \
        SELECT worker_id, id, workspace_id, claimed_by, \
          CASE status WHEN 'failed' THEN 'error' ELSE 'completed' END, 0.02, 4, \
          'buildd/' || id, claimed_at, completed_at, completed_at \
        FROM tasks WHERE worker_id IS NOT NULL AND id >= 'tsk-' || lpad($1::text, 16, '0') \
          AND id < 'tsk-' || lpad($2::text, 16, '0')",
    messages: "INSERT INTO messages (worker_id, seq, body, created_at) \
        SELECT w.id, s.j, \
          '{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"Step ' || s.j || ' of the run: edited src/lib.rs\"}]}}', \
          w.started_at + s.j * interval '100 milliseconds' \
        FROM workers w, generate_series(1, $3::bigint) AS s(j) \
        WHERE w.id >= 'wrk-' || lpad($1::text, 16, '0') AND w.id < 'wrk-' || lpad($2::text, 16, '0') \
        ORDER BY w.id, s.j",
};

/// Rows written per transaction.
const CHUNK: usize = 100_000;

/// The [`QUEUED`] pending tasks, numbered after the history's: written as history,
/// then put back in the queue.
async fn queue(url: &str, history: &History) {
    let seed = if url.starts_with("sqlite:") {
        &SQLITE_SEED
    } else {
        &POSTGRES_SEED
    };
    let first = history.tasks as i64;
    write(url, seed, history, (first, first + QUEUED as i64), false).await;
    let first_id = format!("tsk-{first:016}");
    let requeue = "UPDATE tasks SET status = 'pending', attempts = 0, claimed_by = NULL, \
         worker_id = NULL, claimed_at = NULL, completed_at = NULL WHERE id >= ";
    match url.strip_prefix("sqlite:") {
        Some(path) => {
            let db = rusqlite::Connection::open(path).unwrap();
            db.busy_timeout(Duration::from_secs(30)).unwrap();
            db.execute(&format!("{requeue}?1"), [&first_id]).unwrap();
        }
        None => {
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("{requeue}$1")))
                .bind(&first_id)
                .execute(&mut db)
                .await
                .unwrap();
        }
    }
}

async fn write_history(url: &str, history: &History) {
    let seed = if url.starts_with("sqlite:") {
        &SQLITE_SEED
    } else {
        &POSTGRES_SEED
    };
    for from in (0..history.tasks).step_by(CHUNK) {
        let to = (from + CHUNK).min(history.tasks);
        write(url, seed, history, (from as i64, to as i64), true).await;
    }
    if !url.starts_with("sqlite:") {
        let mut db = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query("ANALYZE").execute(&mut db).await.unwrap();
    }
}

/// Writes tasks `range` (and with `ran`, their workers and messages) in one
/// transaction.
async fn write(url: &str, seed: &Seed, history: &History, range: (i64, i64), ran: bool) {
    let base = (chrono::Utc::now() - chrono::Duration::days(365)).timestamp_millis();
    let per_worker = history.per_worker() as i64;
    if let Some(path) = url.strip_prefix("sqlite:") {
        let db = rusqlite::Connection::open(path).unwrap();
        db.busy_timeout(Duration::from_secs(30)).unwrap();
        let tx = db.unchecked_transaction().unwrap();
        tx.execute(
            seed.tasks,
            rusqlite::params![range.0, range.1, history.workspace, history.account, base],
        )
        .unwrap();
        if ran {
            tx.execute(seed.workers, rusqlite::params![range.0, range.1])
                .unwrap();
            tx.execute(
                seed.messages,
                rusqlite::params![range.0, range.1, per_worker],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        return;
    }
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query(seed.tasks)
        .bind(range.0)
        .bind(range.1)
        .bind(&history.workspace)
        .bind(&history.account)
        .bind(base)
        .execute(&mut *tx)
        .await
        .unwrap();
    if ran {
        sqlx::query(seed.workers)
            .bind(range.0)
            .bind(range.1)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(seed.messages)
            .bind(range.0)
            .bind(range.1)
            .bind(per_worker)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

/// Sequential scans so far of tasks, workers and messages (Postgres only).
async fn seq_scans(url: &str) -> Option<Vec<(String, i64)>> {
    if url.starts_with("sqlite:") {
        return None;
    }
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut db)
        .await
        .unwrap();
    // Backends report their counts when idle, within a second or so.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT relname::text, seq_scan FROM pg_stat_user_tables \
         WHERE relname IN ('tasks', 'workers', 'messages') ORDER BY relname",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    Some(rows)
}

/// The database's size, and that of the messages with their index where it can be told.
async fn size(url: &str) -> (u64, Option<u64>) {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let file = |suffix: &str| {
            std::fs::metadata(format!("{path}{suffix}"))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        return (file("") + file("-wal"), None);
    }
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    let (all, messages): (i64, i64) = sqlx::query_as(
        "SELECT pg_database_size(current_database()), pg_total_relation_size('messages')",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    (all as u64, Some(messages as u64))
}
