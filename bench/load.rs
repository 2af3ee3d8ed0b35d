//! Sustained mixed load on one `buildd serve`, from this second process over loopback.
//!
//! For `BUILDD_LOAD_SECS` (default 60) seconds: 16 agent loops each claim a task, report
//! `starting` and `running`, append 5 batches of 100 runner messages with a heartbeat
//! after each, and report `completed`; a producer keeps 64 tasks queued; 20 admin
//! subscribers follow `/api/events`. Retention is on and short (events and finished
//! workers' output kept `BUILDD_LOAD_RETENTION_DAYS`, default 0.002: about 3 minutes),
//! so a long run deletes as it writes, as a server kept for years does. Printed each
//! minute: the server's RSS, requests per second and their p99; then per operation:
//! count, rate, p50 and p99 latency; messages appended per second; events delivered;
//! the server's RSS every 10 s; and any non-2xx answer (there should be none).
//!
//! SQLite, then Postgres when `BUILDD_TEST_DATABASE_URL` is set.
//! `cargo bench --bench load` — `BUILDD_LOAD_SUBSCRIBERS` (default 20);
//! `BUILDD_LOAD_SECS=600` for the ten-minute run; `BUILDD_LOAD_BACKENDS=postgres` (or
//! `sqlite`) for one backend.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Api, Next, Server};
use reqwest::Method;
use serde_json::{Value, json};

const AGENTS: usize = 16;
const BATCHES_PER_TASK: usize = 5;
const MESSAGES_PER_BATCH: usize = 100;
const QUEUED: u64 = 64;

fn main() {
    let secs: u64 = common::env_or("BUILDD_LOAD_SECS", 60);
    let subscribers: usize = common::env_or("BUILDD_LOAD_SUBSCRIBERS", 20);
    let backends: String = common::env_or("BUILDD_LOAD_BACKENDS", "sqlite,postgres".to_owned());
    common::block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        if backends.contains("sqlite") {
            let sqlite = format!("sqlite:{}", tmp.path().join("buildd.db").display());
            run("SQLite", &sqlite, secs, subscribers).await;
        }
        if !backends.contains("postgres") {
            return;
        }
        if let Some(url) = common::pg_database().await {
            run("Postgres", &url, secs, subscribers).await;
        }
    });
}

/// Latencies per operation and per minute, and the answers that were not 2xx.
struct Record {
    started: Instant,
    latencies: Mutex<BTreeMap<&'static str, Vec<Duration>>>,
    per_minute: Mutex<Vec<Vec<Duration>>>,
    failures: Mutex<Vec<String>>,
}

impl Record {
    async fn call(
        &self,
        api: &Api,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let started = Instant::now();
        let (status, answer) = api.call(method, path, body).await;
        let took = started.elapsed();
        self.latencies
            .lock()
            .unwrap()
            .entry(op)
            .or_default()
            .push(took);
        let minute = (started - self.started).as_secs() as usize / 60;
        let mut per_minute = self.per_minute.lock().unwrap();
        if per_minute.len() <= minute {
            per_minute.resize_with(minute + 1, Vec::new);
        }
        per_minute[minute].push(took);
        if !status.is_success() {
            self.failures
                .lock()
                .unwrap()
                .push(format!("{op} {path}: {status} {answer}"));
        }
        answer
    }
}

impl Record {
    fn new() -> Record {
        Record {
            started: Instant::now(),
            latencies: Mutex::default(),
            per_minute: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// Requests per second and their p99 in minute `minute` of the run.
    fn minute(&self, minute: usize) -> (f64, Duration) {
        let mut times = self
            .per_minute
            .lock()
            .unwrap()
            .get(minute)
            .cloned()
            .unwrap_or_default();
        times.sort();
        let p99 = times
            .get((times.len() * 99 / 100).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default();
        (times.len() as f64 / 60.0, p99)
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn run(label: &str, database: &str, secs: u64, subscribers: usize) {
    println!(
        "\n== load: {label}, {secs} s, {AGENTS} agent loops, {subscribers} subscribers, {BATCHES_PER_TASK}×{MESSAGES_PER_BATCH} messages per task"
    );
    let home = tempfile::tempdir().unwrap();
    let keep = format!("{}", common::env_or("BUILDD_LOAD_RETENTION_DAYS", 0.002));
    let server = Server::start(
        database,
        home.path(),
        &["--retention", &keep, "--message-retention", &keep],
    );
    let admin = server.admin();
    let ws = admin.workspace("load").await;
    let mut keys = Vec::new();
    for i in 0..AGENTS {
        let (_, key) = admin
            .account(
                json!({"type": "service", "name": format!("load-{i}"), "maxConcurrentWorkers": 1000}),
                &ws,
                true,
                false,
            )
            .await;
        keys.push(key);
    }

    let record = Arc::new(Record::new());
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicU64::new(0));
    let claimed = Arc::new(AtomicU64::new(0));
    let messages = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();

    for _ in 0..subscribers {
        let (admin, stop, delivered) = (admin.clone(), stop.clone(), delivered.clone());
        handles.push(tokio::spawn(async move {
            let (_, mut stream) = admin.events("", None).await;
            while !stop.load(Ordering::Relaxed) {
                match stream.next_event(Duration::from_millis(500)).await {
                    Next::Event(_) => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Next::Quiet => {}
                    Next::Ended => break,
                }
            }
        }));
    }

    {
        let (admin, stop, record, created, claimed, ws) = (
            admin.clone(),
            stop.clone(),
            record.clone(),
            created.clone(),
            claimed.clone(),
            ws.clone(),
        );
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if created.load(Ordering::Relaxed) - claimed.load(Ordering::Relaxed) >= QUEUED {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let body =
                    json!({"workspaceId": ws, "title": "load", "description": "run under load"});
                record
                    .call(
                        &admin,
                        "create task",
                        Method::POST,
                        "/api/tasks",
                        Some(body),
                    )
                    .await;
                created.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let batch: Vec<Value> = (0..MESSAGES_PER_BATCH)
        .map(|i| json!({"type": "assistant", "message": {"content": [{"type": "text", "text": format!("line {i} of what the runner printed while it worked on the task")}]}}))
        .collect();
    for key in &keys {
        let agent = server.client(key);
        let (stop, record, claimed, messages) = (
            stop.clone(),
            record.clone(),
            claimed.clone(),
            messages.clone(),
        );
        let batch = json!({ "messages": batch });
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = record
                    .call(
                        &agent,
                        "claim",
                        Method::POST,
                        "/api/workers/claim",
                        Some(json!({"maxTasks": 1})),
                    )
                    .await;
                let Some(worker) = answer["workers"][0]["id"].as_str().map(str::to_owned) else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                claimed.fetch_add(1, Ordering::Relaxed);
                let path = format!("/api/workers/{worker}");
                for status in ["starting", "running"] {
                    record
                        .call(
                            &agent,
                            "update",
                            Method::PATCH,
                            &path,
                            Some(json!({"status": status})),
                        )
                        .await;
                }
                for _ in 0..BATCHES_PER_TASK {
                    record
                        .call(
                            &agent,
                            "append 100 messages",
                            Method::POST,
                            &format!("{path}/messages"),
                            Some(batch.clone()),
                        )
                        .await;
                    messages.fetch_add(MESSAGES_PER_BATCH as u64, Ordering::Relaxed);
                    record
                        .call(
                            &agent,
                            "heartbeat",
                            Method::POST,
                            &format!("{path}/heartbeat"),
                            None,
                        )
                        .await;
                }
                let done = json!({"status": "completed", "costUsd": 0.01, "turns": 3});
                record
                    .call(&agent, "update", Method::PATCH, &path, Some(done))
                    .await;
            }
        }));
    }

    let pid = server.pid();
    let started = record.started;
    let mut rss = vec![(0u64, rss_mib(pid))];
    for tick in 1..=secs.div_ceil(10) {
        let until = Duration::from_secs((tick * 10).min(secs));
        tokio::time::sleep(until.saturating_sub(started.elapsed())).await;
        rss.push((until.as_secs(), rss_mib(pid)));
        if until.as_secs().is_multiple_of(60) {
            let minute = until.as_secs() / 60;
            let (rate, p99) = record.minute(minute as usize - 1);
            println!(
                "minute {minute:>2}: server RSS {:>6.1} MiB · {rate:>5.0} requests/s · p99 {:>6.1} ms",
                rss_mib(pid),
                p99.as_secs_f64() * 1000.0
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for handle in handles {
        let _ = handle.await;
    }

    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9}",
        "operation", "count", "per s", "p50 ms", "p99 ms"
    );
    let mut requests = 0;
    for (op, mut times) in std::mem::take(&mut *record.latencies.lock().unwrap()) {
        times.sort();
        requests += times.len();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "{op:<22} {:>9} {:>9.0} {:>9.1} {:>9.1}",
            times.len(),
            times.len() as f64 / elapsed,
            at(0.50).as_secs_f64() * 1000.0,
            at(0.99).as_secs_f64() * 1000.0,
        );
    }
    let messages = messages.load(Ordering::Relaxed);
    println!(
        "requests:              {requests} ({:.0}/s)",
        requests as f64 / elapsed
    );
    println!(
        "messages appended:     {messages} ({:.0}/s)",
        messages as f64 / elapsed
    );
    println!("tasks claimed:         {}", claimed.load(Ordering::Relaxed));
    let delivered = delivered.load(Ordering::Relaxed);
    println!(
        "events delivered:      {delivered} to {subscribers} subscribers ({:.0}/s)",
        delivered as f64 / elapsed
    );
    let series: Vec<String> = rss.iter().map(|(t, m)| format!("{t} s {m:.1}")).collect();
    println!("server RSS (MiB):      {}", series.join(", "));
    let failures = record.failures.lock().unwrap();
    println!("non-2xx answers:       {}", failures.len());
    for failure in failures.iter().take(5) {
        println!("  {failure}");
    }
}
