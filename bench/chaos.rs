//! Chaos: tasks flow through real agents while agents and servers are killed with
//! SIGKILL and restarted, and at the end nothing was lost or done twice.
//!
//! Twice: one server on SQLite, then two servers sharing Postgres (when
//! `BUILDD_TEST_DATABASE_URL` is set). Each run queues the tasks, starts 8 agents
//! (each its own account, checkout and state directory, two tasks at a time, a scripted
//! runner that takes 1–2 s), and until the queue is nearly drained kills something
//! every 0.3–0.9 s: a random agent three times in four (restarted on its state
//! directory, as a rebooted machine would), else a random server (restarted on the
//! same address and database). An admin subscriber follows
//! `/api/events` throughout, resuming with `Last-Event-ID` after every drop.
//!
//! Checked, and the run fails otherwise:
//! - every task is completed, with exactly one completed worker;
//! - every other worker ended in `error` by losing its lease, and was either held by an
//!   agent when it was killed or never started (a claim whose answer died with a
//!   server); attempts = workers for every task;
//! - the resuming subscriber saw exactly the events a full replay shows, in order: no
//!   id skipped, none repeated.
//!
//! Printed: tasks, kills, requeues, and the longest time from a lost worker's last
//! heartbeat to its requeue, against the lease TTL.
//!
//! `cargo bench --bench chaos` — `BUILDD_CHAOS_TASKS` (default 200),
//! `BUILDD_CHAOS_SEED` (default: random, printed).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::agent::{Agent, Repo};
use common::{Api, Next, Received, Server};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

const AGENTS: usize = 8;
const LEASE_TTL_SECS: u64 = 3;

fn main() {
    let tasks: usize = common::env_or("BUILDD_CHAOS_TASKS", 200);
    let seed: u64 = common::env_or("BUILDD_CHAOS_SEED", rand::random());
    common::block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite:{}", tmp.path().join("buildd.db").display());
        run("SQLite, 1 server", &sqlite, 1, tasks, seed).await;
        if let Some(url) = common::pg_database().await {
            run("Postgres, 2 servers", &url, 2, tasks, seed).await;
        }
    });
}

/// One server of the run, restartable where it was.
struct Node {
    server: Option<Server>,
    listen: String,
    database: String,
    home: tempfile::TempDir,
}

impl Node {
    fn start(database: &str) -> Node {
        let home = tempfile::tempdir().unwrap();
        let server = start_server("127.0.0.1:0", database, home.path());
        let listen = server.url.trim_start_matches("http://").to_owned();
        Node {
            server: Some(server),
            listen,
            database: database.to_owned(),
            home,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// SIGKILL, then a new process on the same address and database.
    fn kill_and_restart(&mut self) {
        drop(self.server.take()); // `Server` is killed with SIGKILL when dropped.
        self.server = Some(start_server(&self.listen, &self.database, self.home.path()));
    }
}

fn start_server(listen: &str, database: &str, home: &Path) -> Server {
    let ttl = LEASE_TTL_SECS.to_string();
    Server::start_on(listen, database, home, &["--lease-ttl", &ttl])
}

/// One agent of the run, restartable on its state directory.
struct Machine {
    agent: Option<Agent>,
    account: String,
    key: String,
    server: String,
    repo: Repo,
    state_dir: PathBuf,
}

/// A run of 1.0–1.9 s, so that kills find work in flight.
const RUNNER: &str = "sleep 1.$(($(od -An -N1 -tu1 /dev/urandom) % 10)); echo done";

impl Machine {
    fn start(account: String, key: String, server: String) -> Machine {
        let repo = Repo::new();
        let agent = Agent::start(&server, &key, repo.path(), &agent_args(), &credentials());
        let state_dir = agent.state_dir.clone();
        Machine {
            agent: Some(agent),
            account,
            key,
            server,
            repo,
            state_dir,
        }
    }

    fn kill(&mut self) {
        drop(self.agent.take()); // `Agent` is killed with SIGKILL when dropped.
    }

    fn restart(&mut self) {
        self.agent = Some(Agent::restart_from(
            &self.state_dir,
            &self.server,
            &self.key,
            self.repo.path(),
            &agent_args(),
            &credentials(),
        ));
    }
}

fn agent_args() -> Vec<&'static str> {
    vec!["--max-tasks", "2", "--command", RUNNER]
}

fn credentials() -> Vec<(&'static str, &'static str)> {
    vec![("ANTHROPIC_API_KEY", "sk-ant-chaos-not-a-real-key")]
}

/// Follows the event stream as a client would: on every drop it reconnects (to the
/// next server) with `Last-Event-ID`.
async fn subscribe(urls: Vec<String>, seen: Arc<Mutex<Vec<i64>>>, stop: Arc<tokio::sync::Notify>) {
    let mut last = 0;
    for url in urls.iter().cycle() {
        let api = Api {
            base: url.clone(),
            token: common::ADMIN.into(),
            http: reqwest::Client::new(),
        };
        let connect = tokio::time::timeout(Duration::from_secs(2), api.events("", Some(last)));
        let Ok((status, mut stream)) = connect.await else {
            continue;
        };
        if !status.is_success() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        loop {
            tokio::select! {
                _ = stop.notified() => return,
                next = stream.next_event(Duration::from_secs(30)) => match next {
                    Next::Event(Received { id, .. }) => {
                        seen.lock().unwrap().push(id);
                        last = id;
                    }
                    Next::Quiet | Next::Ended => break,
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(label: &str, database: &str, servers: usize, tasks: usize, seed: u64) {
    println!(
        "\n== chaos: {label}, {AGENTS} agents, {tasks} tasks, lease {LEASE_TTL_SECS} s, seed {seed}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut nodes: Vec<Node> = (0..servers).map(|_| Node::start(database)).collect();
    let admin = nodes[0].server.as_ref().unwrap().admin();
    let ws = admin.workspace("chaos").await;

    let mut machines = Vec::new();
    for i in 0..AGENTS {
        let (account, key) = admin
            .account(
                json!({"type": "service", "name": format!("agent-{i}"), "maxConcurrentWorkers": 2}),
                &ws,
                true,
                false,
            )
            .await;
        machines.push(Machine::start(account, key, nodes[i % servers].url()));
    }

    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let subscriber = tokio::spawn(subscribe(
        nodes.iter().map(Node::url).collect(),
        seen.clone(),
        stop.clone(),
    ));

    let started = Instant::now();
    let mut task_ids = Vec::new();
    for i in 0..tasks {
        let task = admin
            .task(
                &ws,
                json!({"title": format!("chaos {i}"), "maxAttempts": 100}),
            )
            .await;
        task_ids.push(task["id"].as_str().unwrap().to_owned());
    }

    // Kill until the queue is nearly drained, then let it finish.
    let (mut agent_kills, mut server_kills) = (0, 0);
    let mut held_when_killed: HashSet<String> = HashSet::new();
    loop {
        let remaining = unfinished(&nodes, &ws).await;
        if remaining == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{remaining} tasks still unfinished after 10 minutes"
        );
        if remaining > tasks / 10 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
            if (agent_kills + server_kills) % 4 == 3 {
                let n = rng.random_range(0..servers);
                nodes[n].kill_and_restart();
                server_kills += 1;
            } else {
                let m = rng.random_range(0..AGENTS);
                machines[m].kill();
                agent_kills += 1;
                // Let a claim that was in flight land before looking.
                tokio::time::sleep(Duration::from_millis(200)).await;
                held_when_killed.extend(active_workers_of(&nodes, &machines[m].account).await);
                machines[m].restart();
            }
        } else {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let drained = started.elapsed();

    // Quiet now: the subscriber catches up, then is compared with a full replay.
    let admin = nodes[0].server.as_ref().unwrap().admin();
    let last_id = replay(&admin).await.last().copied().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().last().copied().unwrap_or(0) < last_id {
        assert!(Instant::now() < deadline, "the subscriber did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.notify_waiters();
    subscriber.abort();
    let replayed = replay(&admin).await;
    let seen = seen.lock().unwrap().clone();
    let repeated = seen.len() - seen.iter().collect::<HashSet<_>>().len();
    let skipped = replayed.iter().filter(|id| !seen.contains(id)).count();
    assert_eq!(repeated, 0, "the subscriber saw {repeated} events twice");
    assert_eq!(skipped, 0, "the subscriber missed {skipped} events");
    assert_eq!(
        seen, replayed,
        "the subscriber's events differ from the replay"
    );

    // Every task completed once; every other worker lost its lease to a kill.
    let workers = all_workers(&admin).await;
    let started_workers = started_worker_ids(&admin).await;
    let mut by_task: HashMap<&str, Vec<&Value>> = HashMap::new();
    for w in &workers {
        by_task
            .entry(w["taskId"].as_str().unwrap())
            .or_default()
            .push(w);
    }
    let (mut requeues, mut lost_claims, mut max_delay) = (0, 0, 0.0f64);
    for id in &task_ids {
        let (_, task) = admin.get(&format!("/api/tasks/{id}")).await;
        assert_eq!(task["status"], "completed", "{task}");
        let attempts = by_task.get(id.as_str()).map_or(&[][..], Vec::as_slice);
        assert_eq!(task["attempts"], attempts.len(), "attempts of {id}");
        let completed = attempts
            .iter()
            .filter(|w| w["status"] == "completed")
            .count();
        assert_eq!(completed, 1, "{id} has {completed} completed workers");
        for w in attempts.iter().filter(|w| w["status"] != "completed") {
            let wid = w["id"].as_str().unwrap();
            assert_eq!(w["status"], "error", "{w}");
            let error = w["error"].as_str().unwrap_or_default();
            assert!(error.starts_with("lease expired"), "{wid}: {error}");
            if held_when_killed.contains(wid) {
                requeues += 1;
            } else {
                assert!(
                    !started_workers.contains(wid),
                    "{wid} lost its lease, but no kill explains it"
                );
                lost_claims += 1;
            }
            let delay = seconds_between(&w["heartbeatAt"], &w["finishedAt"]);
            max_delay = max_delay.max(delay);
        }
    }
    println!(
        "tasks completed:            {tasks} (each by exactly one worker), in {:.1} s",
        drained.as_secs_f64()
    );
    println!("kills (SIGKILL):            {agent_kills} agents, {server_kills} servers");
    println!(
        "requeues:                   {} ({requeues} held by killed agents, {lost_claims} claims whose answer died with a server)",
        requeues + lost_claims
    );
    let spooled = workers
        .iter()
        .filter(|w| {
            w["status"] == "completed" && held_when_killed.contains(w["id"].as_str().unwrap())
        })
        .count();
    println!(
        "held by agents when killed: {} workers: {requeues} requeued, {spooled} completed by the restarted agent's spool",
        held_when_killed.len()
    );
    assert_eq!(
        requeues + spooled,
        held_when_killed.len(),
        "a killed agent's worker is unaccounted for"
    );
    println!(
        "max requeue delay:          {max_delay:.1} s after the last heartbeat (lease TTL {LEASE_TTL_SECS} s; the first sweep after a server start waits one lease)"
    );
    println!(
        "events:                     {} seen by the resuming subscriber, none skipped or repeated",
        seen.len()
    );
    drop(machines);
}

/// Tasks not yet completed, asked of any server that answers.
async fn unfinished(nodes: &[Node], ws: &str) -> usize {
    for node in nodes {
        let api = node.server.as_ref().unwrap().admin();
        let mut count = 0;
        let mut answered = true;
        for status in ["pending", "assigned", "running", "waiting_input", "failed"] {
            let path = format!("/api/tasks?workspaceId={ws}&status={status}&limit=1000");
            match api
                .http
                .get(format!("{}{path}", api.base))
                .bearer_auth(&api.token)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    let body: Value = r.json().await.unwrap();
                    count += body["tasks"].as_array().unwrap().len();
                }
                _ => answered = false,
            }
        }
        if answered {
            return count;
        }
    }
    usize::MAX
}

/// The ids of an account's workers that still hold a slot.
async fn active_workers_of(nodes: &[Node], account: &str) -> Vec<String> {
    let api = nodes[0].server.as_ref().unwrap().admin();
    let mut held = Vec::new();
    for status in ["idle", "starting", "running", "waiting_input"] {
        let (_, body) = api
            .get(&format!("/api/workers?status={status}&limit=1000"))
            .await;
        for w in body["workers"].as_array().into_iter().flatten() {
            if w["accountId"] == account {
                held.push(w["id"].as_str().unwrap().to_owned());
            }
        }
    }
    held
}

async fn all_workers(admin: &Api) -> Vec<Value> {
    let mut all = Vec::new();
    for status in [
        "completed",
        "error",
        "idle",
        "starting",
        "running",
        "waiting_input",
        "paused",
    ] {
        let (_, body) = admin
            .get(&format!("/api/workers?status={status}&limit=1000"))
            .await;
        let page = body["workers"].as_array().unwrap();
        assert!(
            page.len() < 1000,
            "more than 1,000 {status} workers: raise the page"
        );
        all.extend(page.iter().cloned());
    }
    all
}

/// Ids of every event, from the beginning.
async fn replay(admin: &Api) -> Vec<i64> {
    let (_, mut stream) = admin.events("", Some(0)).await;
    let mut ids = Vec::new();
    while let Some(e) = stream.next(Duration::from_millis(1500)).await {
        ids.push(e.id);
    }
    ids
}

/// Workers that ever reported `starting`: their agent had the claim's answer.
async fn started_worker_ids(admin: &Api) -> HashSet<String> {
    let (_, mut stream) = admin.events("", Some(0)).await;
    let mut started = HashSet::new();
    while let Some(e) = stream.next(Duration::from_millis(1500)).await {
        if e.name == "worker.updated"
            && e.data["worker"]["status"] != "idle"
            && e.data["worker"]["status"] != "error"
        {
            started.insert(e.data["worker"]["id"].as_str().unwrap().to_owned());
        }
    }
    started
}

fn seconds_between(from: &Value, to: &Value) -> f64 {
    let parse = |v: &Value| v.as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
    (parse(to) - parse(from)).num_milliseconds() as f64 / 1000.0
}
