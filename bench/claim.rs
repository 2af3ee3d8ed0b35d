//! Claim throughput: 32 concurrent claimers over HTTP against the real release binary,
//! on SQLite and (when `BUILDD_TEST_DATABASE_URL` is set) on Postgres, with one server
//! and with two sharing the database.
//!
//! `cargo bench --bench claim` — prints claims per second and claim latency
//! percentiles. `BUILDD_BENCH_TASKS` sets the number of tasks (default 6000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Api, Server};
use serde_json::json;

const CLAIMERS: usize = 32;
const ACCOUNTS: usize = 8;

fn main() {
    let tasks: usize = common::env_or("BUILDD_BENCH_TASKS", 6000);
    common::block_on(async {
        println!(
            "claim benchmark: {CLAIMERS} concurrent claimers ({ACCOUNTS} accounts), {tasks} tasks, maxTasks 1"
        );
        let server = Server::sqlite(&[]);
        report("sqlite, 1 server", &[&server], tasks).await;
        drop(server);

        match common::pg_base_url() {
            None => println!("postgres: skipped (BUILDD_TEST_DATABASE_URL is not set)"),
            Some(base) => {
                let dir = tempfile::tempdir().unwrap();
                let url = common::fresh_pg_database(&base).await;
                let server = Server::start(&url, dir.path(), &[]);
                report("postgres, 1 server", &[&server], tasks).await;
                drop(server);

                let url = common::fresh_pg_database(&base).await;
                let first = Server::start(&url, dir.path(), &[]);
                let second = Server::start(&url, dir.path(), &[]);
                report("postgres, 2 servers", &[&first, &second], tasks).await;
            }
        }
    });
}

async fn report(label: &str, servers: &[&Server], tasks: usize) {
    let admin = servers[0].admin();
    let ws = admin.workspace("bench").await;
    let mut keys = Vec::new();
    for n in 0..ACCOUNTS {
        let body = json!({"type": "service", "name": format!("bench {n}"), "maxConcurrentWorkers": 1_000_000});
        keys.push(admin.account(body, &ws, true, false).await.1);
    }

    let next = Arc::new(AtomicUsize::new(0));
    let created = Instant::now();
    let mut creators = Vec::new();
    for c in 0..16 {
        let api = servers[c % servers.len()].admin();
        let (ws, next) = (ws.clone(), next.clone());
        creators.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < tasks {
                api.task(&ws, json!({})).await;
            }
        }));
    }
    for c in creators {
        c.await.unwrap();
    }
    let create_rate = tasks as f64 / created.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut claimers = Vec::new();
    for c in 0..CLAIMERS {
        let api: Api = servers[c % servers.len()].client(&keys[c % ACCOUNTS]);
        claimers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let t = Instant::now();
                let got = api.ok("/api/workers/claim", json!({})).await;
                latencies.push(t.elapsed());
                if got["workers"].as_array().unwrap().is_empty() {
                    return latencies;
                }
            }
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for c in claimers {
        latencies.extend(c.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct =
        |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    let (_, workers) = admin.get("/api/workers?limit=1").await;
    assert!(!workers["workers"].as_array().unwrap().is_empty());
    println!(
        "{label:<20} {:>7.0} claims/s   p50 {:>5.1} ms   p99 {:>5.1} ms   ({tasks} claims in {:.2} s; task creation {:.0}/s)",
        tasks as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        elapsed.as_secs_f64(),
        create_rate,
    );
}
