//! Dispatch latency: how long a new task waits before an idle agent has it.
//!
//! An idle agent holds a waiting claim (`wait: 30`, re-issued as soon as it returns),
//! and tasks are created one at a time. Latency is `claimedAt - createdAt`, both
//! stamped by the server. On Postgres the agent waits on one server while tasks are
//! created through another, so the wake-up crosses the cluster.
//!
//! Then the same for dependent tasks: each is created blocked on another task, which
//! a second account runs to completion; latency is the dependent's `claimedAt` minus
//! its dependency's `completedAt`, so it counts unblocking in the completing
//! transaction and the waiting claim's wake-up.
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
        report_dependents("sqlite", &server, &server, tasks).await;
        drop(server);
        match common::pg_base_url() {
            None => println!("postgres: skipped (BUILDD_TEST_DATABASE_URL is not set)"),
            Some(base) => {
                let dir = tempfile::tempdir().unwrap();
                let url = common::fresh_pg_database(&base).await;
                let a = Server::start(&url, dir.path(), &[]);
                let b = Server::start(&url, dir.path(), &[]);
                report("postgres, across 2 servers", &a, &b, tasks).await;
                report_dependents("postgres, across 2 servers", &a, &b, tasks).await;
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

/// Dependency completed → dependent claimed, by an idle agent of another account.
async fn report_dependents(label: &str, creating: &Server, waiting: &Server, tasks: usize) {
    let admin = creating.admin();
    let ws = admin.workspace("dependents").await;
    let (_, runner_key) = admin
        .account(
            json!({"type": "service", "name": "runs dependencies"}),
            &ws,
            true,
            false,
        )
        .await;
    let (_, key) = admin
        .account(json!({"type": "user", "name": "waits"}), &ws, true, false)
        .await;
    let runner = creating.client(&runner_key);
    let agent: Api = waiting.client(&key);
    let claimer = tokio::spawn(async move {
        let mut claimed_at = Vec::new();
        while claimed_at.len() < tasks {
            let claimed = agent.ok("/api/workers/claim", json!({"wait": 30})).await;
            for w in claimed["workers"].as_array().unwrap() {
                let at =
                    DateTime::parse_from_rfc3339(w["task"]["claimedAt"].as_str().unwrap()).unwrap();
                let dependency = w["task"]["dependsOn"][0].as_str().unwrap().to_owned();
                claimed_at.push((dependency, at));
                agent
                    .patch(
                        &format!("/api/workers/{}", w["id"].as_str().unwrap()),
                        json!({"status": "error"}),
                    )
                    .await;
            }
        }
        claimed_at
    });
    let mut completed_at = std::collections::HashMap::new();
    for _ in 0..tasks {
        let dependency = admin
            .task(
                &ws,
                json!({"runnerPreference": "service", "maxAttempts": 1}),
            )
            .await;
        let id = dependency["id"].as_str().unwrap().to_owned();
        admin
            .task(
                &ws,
                json!({"runnerPreference": "user", "maxAttempts": 1, "dependsOn": [id]}),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        let claimed = runner.ok("/api/workers", json!({"taskId": id})).await;
        let worker = claimed["workers"][0]["id"].as_str().unwrap().to_owned();
        runner.move_worker(&worker, &["starting", "running"]).await;
        let (_, done) = runner
            .patch(
                &format!("/api/workers/{worker}"),
                json!({"status": "completed"}),
            )
            .await;
        assert_eq!(done["status"], "completed", "{done}");
        let (_, task) = admin.get(&format!("/api/tasks/{id}")).await;
        let at = DateTime::parse_from_rfc3339(task["completedAt"].as_str().unwrap()).unwrap();
        completed_at.insert(id, at);
    }
    let mut latencies: Vec<i64> = claimer
        .await
        .unwrap()
        .into_iter()
        .map(|(dependency, at)| (at - completed_at[&dependency]).num_milliseconds())
        .collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{label:<28} dependency completed → dependent claimed  p50 {:>3} ms   p90 {:>3} ms   max {:>4} ms",
        pct(0.5),
        pct(0.9),
        latencies.last().unwrap()
    );
}
