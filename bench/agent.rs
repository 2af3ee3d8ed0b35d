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
//! Then, per runner (a command, and the real Claude Code, Codex and Gemini CLIs from
//! npm against their local stand-ins), tasks that write one file: claimed → the
//! runner's process started (a wrapper records it, then runs the CLI), and claimed →
//! completed (the CLI's own start-up, two model round trips to the stand-in, the
//! commit and the report).
//!
//! `cargo bench --bench agent` — `BUILDD_BENCH_TASKS` (default 100),
//! `BUILDD_BENCH_RUNNER_TASKS` (default 10 per runner).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::Server;
use common::agent::{Agent, FakeAnthropic, Repo, claude_code};
use common::models::{FakeGemini, FakeOpenAi, coding_clis};
use serde_json::json;

fn main() {
    let tasks: usize = common::env_or("BUILDD_BENCH_TASKS", 100);
    let per_runner: usize = common::env_or("BUILDD_BENCH_RUNNER_TASKS", 10);
    common::block_on(async {
        run(tasks).await;
        per_runner_figures(per_runner).await;
    });
}

/// Prints p50, p90 and the maximum of `values` (milliseconds), sorted in place.
fn print_percentiles(label: &str, values: &mut [f64]) {
    values.sort_by(f64::total_cmp);
    let pct = |p: f64| values[((values.len() - 1) as f64 * p) as usize];
    println!(
        "{label:<34} p50 {:>7.1} ms   p90 {:>7.1} ms   max {:>7.1} ms",
        pct(0.5),
        pct(0.9),
        values.last().unwrap()
    );
}

/// A SQLite server with a workspace and a service account that claims there:
/// (server, workspace id, the account's key).
async fn bench_server() -> (Server, String, String) {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("bench").await;
    let body = json!({"type": "service", "name": "bench"});
    let (_, key) = admin.account(body, &ws, true, false).await;
    (server, ws, key)
}

/// The task once it has completed or failed.
async fn ended(admin: &common::Api, id: &str) -> serde_json::Value {
    loop {
        let (_, t) = admin.get(&format!("/api/tasks/{id}")).await;
        if t["status"] == "completed" || t["status"] == "failed" {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A timestamp field of a task, in milliseconds since the epoch.
fn millis(task: &serde_json::Value, field: &str) -> f64 {
    DateTime::parse_from_rfc3339(task[field].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
        .timestamp_micros() as f64
        / 1000.0
}

/// Each runner in turn, `tasks` tasks one at a time, each writing one file.
async fn per_runner_figures(tasks: usize) {
    println!("\nper runner: {tasks} tasks each, one at a time, each writing one file");
    let anthropic = FakeAnthropic::start().await;
    let openai = FakeOpenAi::start().await;
    let google = FakeGemini::start().await;
    let (codex, gemini) = coding_clis();
    let home = tempfile::tempdir().unwrap();
    FakeGemini::sign_in(home.path());
    let codex_home = openai.codex_home(home.path());
    let home_dir = home.path().display().to_string();
    let mut env: Vec<(&str, &str)> = anthropic.env();
    env.extend([
        ("CODEX_HOME", codex_home.to_str().unwrap()),
        ("OPENAI_API_KEY", "sk-bench-not-a-real-key"),
        ("GOOGLE_GEMINI_BASE_URL", google.0.url.as_str()),
        ("GEMINI_API_KEY", "bench-not-a-real-key"),
        ("HOME", home_dir.as_str()),
    ]);
    let claude = claude_code();
    let marks = tempfile::tempdir().unwrap();
    for (name, bin) in [
        ("command", None),
        ("claude", Some(claude)),
        ("codex", Some(codex)),
        ("gemini", Some(gemini)),
    ] {
        let (server, ws, key) = bench_server().await;
        let admin = server.admin();
        let repo = Repo::new();
        let mark = format!("date +%s%N > {}/$BUILDD_TASK_ID", marks.path().display());
        let runner = match &bin {
            // A command runner that writes its file itself.
            None => format!("--command={mark}; echo x > file.txt"),
            Some(bin) => {
                let wrapper = marks.path().join(format!("{name}-wrapper"));
                std::fs::write(
                    &wrapper,
                    format!("#!/bin/sh\n{mark}\nexec {} \"$@\"\n", bin.display()),
                )
                .unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
                format!("--runner={name}={}", wrapper.display())
            }
        };
        let agent = Agent::start(&server.url, &key, repo.path(), &[runner.as_str()], &env);
        agent.ready().await;
        let (mut started, mut completed) = (Vec::new(), Vec::new());
        for _ in 0..tasks {
            let mut body = json!({"maxAttempts": 1, "description": "write file.txt x"});
            if bin.is_some() {
                body["runner"] = json!(name);
            }
            let id = admin.task(&ws, body).await["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let task = ended(&admin, &id).await;
            assert_eq!(
                task["status"],
                "completed",
                "{name}: {task}\n{}",
                agent.log()
            );
            let mark_ns: i64 = std::fs::read_to_string(marks.path().join(&id))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            started.push(mark_ns as f64 / 1e6 - millis(&task, "claimedAt"));
            completed.push(millis(&task, "completedAt") - millis(&task, "claimedAt"));
        }
        print_percentiles(&format!("{name}: claimed → runner started"), &mut started);
        print_percentiles(&format!("{name}: claimed → completed"), &mut completed);
    }
}

async fn run(tasks: usize) {
    println!("agent benchmark: 1 agent, SQLite server, {tasks} tasks created one at a time");
    let (server, ws, key) = bench_server().await;
    let admin = server.admin();
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
        let ms = |field: &str| millis(&task, field);
        let started = started_ns as f64 / 1e6;
        claim.push(ms("claimedAt") - ms("createdAt"));
        start.push(started - ms("claimedAt"));
        total.push(started - ms("createdAt"));
        // Let the task finish and the agent go idle again.
        ended(&admin, &id).await;
    }
    for (label, values) in [
        ("create → claimed", &mut claim),
        ("claimed → runner started", &mut start),
        ("create → runner started", &mut total),
    ] {
        print_percentiles(label, values);
    }
    println!(
        "RSS after {tasks} tasks      {:>6.1} MiB",
        common::proc_status_mib(agent.pid() as u32, "VmRSS:")
    );
}
