//! A run that prints a lot: 100 MB of output in lines of 1 byte to 5 MB, through a
//! real `buildd agent` to a real `buildd serve` (SQLite).
//!
//! The runner (`--command`, Python) prints lines of random lengths, each starting with
//! its number, and writes their lengths to a manifest. The benchmark then checks that
//! every line is accounted for, in order (stored whole, or cut with its marker and its
//! original size), and prints the time the run took and the agent's peak RSS
//! (`VmHWM`), which must stay far below the output's size: the agent never holds the
//! whole output.
//!
//! `cargo bench --bench output` — `BUILDD_BENCH_OUTPUT_MB` (default 100),
//! `BUILDD_BENCH_SEED` (default 1).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Server;
use common::agent::{Agent, Repo};
use serde_json::json;

fn main() {
    let megabytes: u64 = common::env_or("BUILDD_BENCH_OUTPUT_MB", 100);
    let seed: u64 = common::env_or("BUILDD_BENCH_SEED", 1);
    common::block_on(run(megabytes, seed));
}

async fn run(megabytes: u64, seed: u64) {
    println!(
        "output benchmark: {megabytes} MB in lines of 1 B to 5 MB (seed {seed}), SQLite server"
    );
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, _, key) = admin.workspace_with_claimer().await;
    let repo = Repo::new();
    let scratch = tempfile::tempdir().unwrap();
    let manifest = scratch.path().join("lengths");
    let script = format!(
        r#"python3 -c '
import random, sys
random.seed({seed})
total, limit, lengths = 0, {megabytes} * 1_000_000, []
out = sys.stdout
while total < limit:
    r = random.random()
    n = random.randint(1, 200) if r < 0.7 else random.randint(1_000, 300_000) if r < 0.95 else random.randint(300_000, 5_000_000)
    head = "%06d " % len(lengths)
    n = max(n, len(head))
    out.write(head + "z" * (n - len(head)) + "\n")
    lengths.append(n)
    total += n
out.flush()
open("{manifest}", "w").write("\n".join(map(str, lengths)))
'"#,
        manifest = manifest.display()
    );
    let agent = Agent::start(&server.url, &key, repo.path(), &["--command", &script], &[]);
    agent.ready().await;
    let started = Instant::now();
    let task = admin.task(&ws, json!({"maxAttempts": 1})).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let task = loop {
        let (_, t) = admin.get(&format!("/api/tasks/{id}")).await;
        if ["completed", "failed", "cancelled"].contains(&t["status"].as_str().unwrap_or("")) {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    let peak = common::proc_status_mib(agent.pid() as u32, "VmHWM:");
    assert_eq!(task["status"], "completed", "{task}");

    let lengths: Vec<usize> = std::fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let (_, workers) = admin.get(&format!("/api/workers?taskId={id}")).await;
    let worker = workers["workers"][0]["id"].as_str().unwrap().to_owned();
    let messages = admin.messages_of(&worker).await;
    assert_eq!(messages.len(), lengths.len(), "every line is a message");
    let (mut whole, mut cut, mut stored) = (0, 0, 0usize);
    for (i, (m, &n)) in messages.iter().zip(&lengths).enumerate() {
        let text = m["text"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("{i:06} ")),
            "line {i} out of order"
        );
        stored += m.to_string().len();
        match m["type"].as_str() {
            Some("buildd_cut") => {
                assert_eq!(m["originalBytes"].as_u64(), Some(n as u64), "line {i}");
                cut += 1;
            }
            _ => {
                assert_eq!(text.len(), n, "line {i} stored whole");
                whole += 1;
            }
        }
    }
    let total: usize = lengths.iter().sum();
    println!(
        "lines                    {:>8} ({whole} stored whole, {cut} cut with their marker)",
        lengths.len()
    );
    println!(
        "output printed           {:>8.1} MB, longest line {:.1} MB",
        total as f64 / 1e6,
        *lengths.iter().max().unwrap() as f64 / 1e6
    );
    println!("stored                   {:>8.1} MB", stored as f64 / 1e6);
    println!(
        "create → completed       {:>8.1} s ({:.1} MB/s)",
        took.as_secs_f64(),
        total as f64 / 1e6 / took.as_secs_f64()
    );
    println!("agent peak RSS (VmHWM)   {peak:>8.1} MiB");
}
