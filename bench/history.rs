//! The whole history at scale: with many tasks in the database, how long the first
//! page of the task list, a page deep in it, the counts per status and a search take,
//! and how long the dashboard takes to paint its task list in Chromium.
//!
//! Tasks are written through the store (much faster than one request each), spread
//! over the statuses as a long-lived queue has them (mostly completed), then the
//! server is started on the same database and asked over HTTP.
//!
//! `cargo bench --bench history` — `BUILDD_BENCH_TASKS` (default 100,000). Needs
//! Chromium and the playwright-core of `tests/browser` (installed by the dashboard
//! test) for the page-load figure; without them it says so and skips it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use buildd::core::model::{Task, TaskStatus, Workspace};
use buildd::core::time;
use common::{Api, Server};

fn main() {
    let tasks: usize = common::env_or("BUILDD_BENCH_TASKS", 100_000);
    common::block_on(async {
        println!("history benchmark: {tasks} tasks in one workspace");
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("buildd.db").display());
        let workspace = seed(&url, tasks).await;
        let server = Server::start(&url, dir.path(), &[]);
        report("sqlite", &server, &workspace).await;
        page_load("sqlite", &server);
        drop(server);
        match common::pg_base_url() {
            None => println!("postgres: skipped (BUILDD_TEST_DATABASE_URL is not set)"),
            Some(base) => {
                let url = common::fresh_pg_database(&base).await;
                let workspace = seed(&url, tasks).await;
                let dir = tempfile::tempdir().unwrap();
                let server = Server::start(&url, dir.path(), &[]);
                report("postgres", &server, &workspace).await;
                page_load("postgres", &server);
            }
        }
    });
}

/// Writes `n` tasks: 90% completed, the rest spread over the other statuses.
async fn seed(url: &str, n: usize) -> String {
    let store = buildd::store::open(url).await.unwrap();
    let workspace = Workspace::new("history", None, time::now());
    store.create_workspace(&workspace).await.unwrap();
    let started = Instant::now();
    let others = [
        TaskStatus::Pending,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];
    let base = time::now() - chrono::Duration::days(30);
    let writes: Vec<_> = (0..n)
        .map(|i| {
            let status = if i % 10 == 0 {
                others[(i / 10) % 3]
            } else {
                TaskStatus::Completed
            };
            Task {
                status,
                description: format!("Task number {i} of the seeded history"),
                ..Task::new(
                    workspace.id.clone(),
                    &format!("Seeded task {i}"),
                    base + chrono::Duration::milliseconds(i as i64 * 7),
                )
            }
        })
        .collect();
    // Eight writers at a time: Postgres takes them in parallel, SQLite in turn.
    for chunk in writes.chunks(8) {
        let done: Vec<_> = chunk
            .iter()
            .map(|task| {
                let store = store.clone();
                let task = task.clone();
                tokio::spawn(async move { store.create_task(&task, None).await.map(drop) })
            })
            .collect();
        for write in done {
            write.await.unwrap().unwrap();
        }
    }
    println!(
        "  seeded {n} tasks in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    workspace.id
}

/// The median of `runs` timings of `GET path`, in milliseconds.
async fn timed(api: &Api, path: &str, runs: usize) -> f64 {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let (status, body) = api.get(path).await;
        assert!(status.is_success(), "{path}: {body}");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

async fn report(label: &str, server: &Server, workspace: &str) {
    let admin = server.admin();
    let first = timed(&admin, "/api/tasks?limit=100", 9).await;
    // The cursor of page 500: as deep as a person would page.
    let mut cursor = String::new();
    for _ in 0..500 {
        let (_, page) = admin.get(&format!("/api/tasks?limit=100{cursor}")).await;
        match page["nextCursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let deep = timed(&admin, &format!("/api/tasks?limit=100{cursor}"), 9).await;
    let counts = timed(&admin, "/api/tasks/counts", 9).await;
    let counts_ws = timed(
        &admin,
        &format!("/api/tasks/counts?workspaceId={workspace}"),
        9,
    )
    .await;
    let status = timed(&admin, "/api/tasks?status=failed&limit=100", 9).await;
    let search = timed(&admin, "/api/tasks?q=seeded%20task%2042&limit=100", 5).await;
    let (_, all) = admin.get("/api/tasks/counts").await;
    println!(
        "{label}: first page {first:.1} ms · page 500 {deep:.1} ms · counts {counts:.1} ms \
         (one workspace {counts_ws:.1} ms) · failed only {status:.1} ms · search {search:.1} ms \
         (median; total counted {})",
        all["total"]
    );
}

/// Chromium's time from navigation to the first row of the task list, over 5 loads.
fn page_load(label: &str, server: &Server) {
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !browser.join("node_modules/playwright-core").exists() || !Path::new(&chromium).exists() {
        println!(
            "{label}: dashboard page load skipped (run the dashboard test first, for Chromium and playwright-core)"
        );
        return;
    }
    let out = Command::new("node")
        .arg(browser.join("first-paint.mjs"))
        .env("SERVER", &server.url)
        .env("TOKEN", common::ADMIN)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs the page-load script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{label}: dashboard {}", text.trim());
}
