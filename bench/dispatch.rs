//! Dispatch latency: how long a new task waits before an idle agent has it.
//!
//! An idle agent holds a waiting claim (`wait: 30`, re-issued as soon as it returns),
//! and tasks are created one at a time. Latency is `claimedAt - createdAt`, both
//! stamped by the server. On Postgres the agent waits on one server while tasks are
//! created through another, so the wake-up crosses the cluster.
//!
//! `cargo bench --bench dispatch` — `BUILDD_BENCH_TASKS` (default 200).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use chrono::DateTime;
use common::{Api, Server};
use serde_json::json;

fn main() {
    let tasks: usize = common::env_or("BUILDD_BENCH_TASKS", 200);
    common::block_on(async {
        println!(
            "dispatch benchmark: 1 idle agent (waiting claims), {tasks} tasks created one at a time"
        );
        let server = Server::sqlite(&[]);
        report("sqlite", &server, &server, tasks).await;
        drop(server);
        match common::pg_base_url() {
            None => println!("postgres: skipped (BUILDD_TEST_DATABASE_URL is not set)"),
            Some(base) => {
                let dir = tempfile::tempdir().unwrap();
                let url = common::fresh_pg_database(&base).await;
                let a = Server::start(&url, dir.path(), &[]);
                let b = Server::start(&url, dir.path(), &[]);
                report("postgres, across 2 servers", &a, &b, tasks).await;
            }
        }
    });
}

async fn report(label: &str, creating: &Server, waiting: &Server, tasks: usize) {
    let admin = creating.admin();
    let ws = admin.workspace("dispatch").await;
    let (_, key) = admin
        .account(
            json!({"type": "service", "name": "agent"}),
            &ws,
            true,
            false,
        )
        .await;
    let agent: Api = waiting.client(&key);
    let claimer = tokio::spawn(async move {
        let mut latencies = Vec::new();
        while latencies.len() < tasks {
            let claimed = agent.ok("/api/workers/claim", json!({"wait": 30})).await;
            for w in claimed["workers"].as_array().unwrap() {
                let created =
                    DateTime::parse_from_rfc3339(w["task"]["createdAt"].as_str().unwrap()).unwrap();
                let at =
                    DateTime::parse_from_rfc3339(w["task"]["claimedAt"].as_str().unwrap()).unwrap();
                latencies.push((at - created).num_milliseconds());
                // Finish at once so the agent is idle again for the next task.
                agent
                    .patch(
                        &format!("/api/workers/{}", w["id"].as_str().unwrap()),
                        json!({"status": "error"}),
                    )
                    .await;
            }
        }
        latencies
    });
    // Let the agent settle into its waiting claim before each task.
    for _ in 0..tasks {
        tokio::time::sleep(Duration::from_millis(40)).await;
        admin.task(&ws, json!({"maxAttempts": 1})).await;
    }
    let mut latencies = claimer.await.unwrap();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{label:<28} create → claimed  p50 {:>3} ms   p90 {:>3} ms   max {:>4} ms   (10-second polling averages ~5000 ms)",
        pct(0.5),
        pct(0.9),
        latencies.last().unwrap()
    );
}
