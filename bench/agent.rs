//! The agent's own cost: its memory while idle, and the time it adds to each task.
//!
//! A real `buildd agent` runs against a real `buildd serve` (SQLite) with a runner
//! that only records when it started (`--command`), so what is measured is the agent:
//! - idle RSS, after it has connected and settled with nothing to do;
//! - create → claimed (the server's `createdAt` and `claimedAt`): the event reaching
//!   the idle agent and its claim;
//! - claimed → runner started: worktree creation, the worker's `starting`/`running`
//!   reports and the process spawn;
//! - create → runner started, end to end.
//!
//! `cargo bench --bench agent` — `BUILDD_BENCH_TASKS` (default 100).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::Server;
use common::agent::{Agent, Repo};
use serde_json::json;

fn main() {
    let tasks: usize = common::env_or("BUILDD_BENCH_TASKS", 100);
    common::block_on(run(tasks));
}

async fn run(tasks: usize) {
    println!("agent benchmark: 1 agent, SQLite server, {tasks} tasks created one at a time");
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("bench").await;
    let (_, key) = admin
        .account(
            json!({"type": "service", "name": "bench"}),
            &ws,
            true,
            false,
        )
        .await;
    let repo = Repo::new();
    // A checkout of some size, so that worktree creation costs what it would.
    for i in 0..200 {
        let dir = repo.path().join(format!("src/m{}", i % 20));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.rs")), "fn main() {}\n".repeat(50)).unwrap();
    }
    repo.git(&["add", "-A"]);
    repo.git(&[
        "-c",
        "user.name=b",
        "-c",
        "user.email=b@b",
        "commit",
        "-qm",
        "files",
    ]);

    let marks = tempfile::tempdir().unwrap();
    let command = format!("date +%s%N > {}/$BUILDD_TASK_ID", marks.path().display());
    let agent = Agent::start(
        &server.url,
        &key,
        repo.path(),
        &["--command", &command],
        &[],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "idle RSS                 {:>6.1} MiB",
        common::proc_status_mib(agent.pid() as u32, "VmRSS:")
    );

    let (mut claim, mut start, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..tasks {
        let task = admin.task(&ws, json!({"maxAttempts": 1})).await;
        let id = task["id"].as_str().unwrap().to_owned();
        let mark = marks.path().join(&id);
        let started_ns = loop {
            if let Ok(text) = std::fs::read_to_string(&mark)
                && let Ok(ns) = text.trim().parse::<i64>()
            {
                break ns;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let (_, task) = admin.get(&format!("/api/tasks/{id}")).await;
        let ms = |k: &str| {
            DateTime::parse_from_rfc3339(task[k].as_str().unwrap())
                .unwrap()
                .with_timezone(&Utc)
                .timestamp_micros() as f64
                / 1000.0
        };
        let started = started_ns as f64 / 1e6;
        claim.push(ms("claimedAt") - ms("createdAt"));
        start.push(started - ms("claimedAt"));
        total.push(started - ms("createdAt"));
        // Let the task finish and the agent go idle again.
        loop {
            let (_, t) = admin.get(&format!("/api/tasks/{id}")).await;
            if t["status"] == "completed" || t["status"] == "failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for (label, values) in [
        ("create → claimed", &mut claim),
        ("claimed → runner started", &mut start),
        ("create → runner started", &mut total),
    ] {
        values.sort_by(f64::total_cmp);
        let pct = |p: f64| values[((values.len() - 1) as f64 * p) as usize];
        println!(
            "{label:<25} p50 {:>6.1} ms   p90 {:>6.1} ms   max {:>6.1} ms",
            pct(0.5),
            pct(0.9),
            values.last().unwrap()
        );
    }
    println!(
        "RSS after {tasks} tasks      {:>6.1} MiB",
        common::proc_status_mib(agent.pid() as u32, "VmRSS:")
    );
}
