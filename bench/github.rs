//! From a GitHub delivery to work in an agent's hands: a labelled issue's signed
//! `issues` delivery posted to `/api/github/webhook` while an agent waits in a claim
//! (`POST /api/workers/claim {wait}`), on the real release binary (SQLite, and
//! Postgres when `BUILDD_TEST_DATABASE_URL` is set).
//!
//! `cargo bench --bench github` — prints p50 and p99 of: the webhook's answer (the
//! task is stored and claimable when it comes), and the delivery's start to the
//! waiting claim's answer with the new task. `BUILDD_BENCH_CALLS` sets the deliveries
//! per backend (default 300).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use serde_json::json;

use common::Server;
use common::github::{SECRET, Sender, payload};

fn main() {
    let calls: usize = common::env_or("BUILDD_BENCH_CALLS", 300);
    common::block_on(async {
        println!(
            "GitHub webhook → claimable → claimed: {calls} deliveries per backend, one at a time"
        );
        let server = Server::sqlite(&["--github-webhook-secret", SECRET]);
        report("sqlite", &server, calls).await;
        drop(server);
        match common::pg_database().await {
            None => println!("postgres: skipped (BUILDD_TEST_DATABASE_URL is not set)"),
            Some(url) => {
                let dir = tempfile::tempdir().unwrap();
                let server = Server::start(&url, dir.path(), &["--github-webhook-secret", SECRET]);
                report("postgres", &server, calls).await;
            }
        }
    });
}

async fn report(backend: &str, server: &Server, calls: usize) {
    let admin = server.admin();
    let ws = admin
        .ok(
            "/api/workspaces",
            json!({"name": "bench", "repoUrl": "https://github.com/Codertocat/Hello-World"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, key) = admin
        .account(
            json!({"type": "service", "name": "fleet", "maxConcurrentWorkers": 1_000_000}),
            &ws,
            true,
            false,
        )
        .await;
    let agent = server.client(&key);
    let hooks = Sender::to(server);
    let mut answered = Vec::with_capacity(calls);
    let mut claimed = Vec::with_capacity(calls);
    for issue in 1..=calls {
        let waiting = {
            let agent = agent.clone();
            tokio::spawn(async move { agent.ok("/api/workers/claim", json!({"wait": 30})).await })
        };
        // Let the claim reach the server and wait there.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let delivery = payload("issues.labeled", |v| {
            v["label"]["name"] = "buildd".into();
            v["issue"]["number"] = issue.into();
        });
        let started = Instant::now();
        let answer = hooks
            .deliver("issues", &format!("bench-{issue}"), &delivery)
            .await;
        answered.push(started.elapsed());
        let got = waiting.await.unwrap();
        claimed.push(started.elapsed());
        assert_eq!(
            got["workers"][0]["taskId"], answer["reactions"][0]["taskId"],
            "the waiting claim got the issue's task: {got}"
        );
    }
    for (label, mut latencies) in [
        ("webhook answered (claimable)", answered),
        ("webhook → claimed by a waiting agent", claimed),
    ] {
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "{backend:<9} {label:<38} p50 {:>6.2} ms   p99 {:>6.2} ms",
            ms(pct(0.50)),
            ms(pct(0.99)),
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
