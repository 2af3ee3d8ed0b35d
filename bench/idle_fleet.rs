//! An idle fleet: agents connected and nothing to do, then a trickle of new tasks.
//! Prints the server's RSS and how many transactions Postgres runs per second
//! meanwhile, for plain event streams (dashboards), for agents on their event streams
//! taking offers (as `buildd agent` does), and for agents that hold waiting claims;
//! and for the agents, what each new task costs and how long it takes from its
//! creation to its claim.
//!
//! `cargo bench --bench idle-fleet` (needs `BUILDD_TEST_DATABASE_URL`, to count the
//! database's transactions); `BUILDD_BENCH_AGENTS` (default 1000) spread over
//! `BUILDD_BENCH_ACCOUNTS` (default 20, as a team's fleet shares its accounts).
//! `BUILDD_BENCH_HERD=1` adds agents that claim on every `task.created`, as agents
//! did before offers, for comparison; `BUILDD_BENCH_PARTS` picks parts (default
//! `offers,streams,claims`). Each agent is a connection at both ends, so the
//! benchmark raises its open-file limit to the hard limit (`setrlimit`; the server it
//! starts inherits it) and says so.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Api, Server};
use serde_json::json;
use sqlx::Connection;
use tokio::task::JoinHandle;

/// How long idle transactions are counted: the server's periodic work comes every 5 to
/// 30 s, and a 10 s window read 0.8 or 1.2 transactions/s by which of it fell inside.
const WINDOW: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(12);
const CLAIM_WINDOW: Duration = Duration::from_secs(35);

fn main() {
    let agents: usize = common::env_or("BUILDD_BENCH_AGENTS", 1000);
    let accounts: usize = common::env_or("BUILDD_BENCH_ACCOUNTS", 20);
    let parts =
        std::env::var("BUILDD_BENCH_PARTS").unwrap_or_else(|_| "offers,streams,claims".into());
    let files = raise_open_file_limit();
    let Some(base) = common::pg_base_url() else {
        println!("idle-fleet: skipped (BUILDD_TEST_DATABASE_URL is not set)");
        return;
    };
    common::block_on(async {
        println!(
            "idle fleet: {agents} agents over {accounts} accounts, one server on Postgres \
             (open files: {files}); each part on a server and database of its own"
        );
        if parts.contains("offers") {
            offers(&World::start(&base, accounts).await, agents).await;
        }
        if parts.contains("streams") || parts.contains("claims") {
            streams_and_claims(&World::start(&base, accounts).await, agents, &parts).await;
        }
    });
}

/// A server of its own on a fresh database, with a workspace and accounts that may
/// claim in it: a part measured there counts neither the memory another part left
/// with the allocator nor the runs another part left to time out.
struct World {
    server: Server,
    url: String,
    admin: Api,
    ws: String,
    clients: Vec<Api>,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(base: &str, accounts: usize) -> World {
        let url = common::fresh_pg_database(base).await;
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&url, dir.path(), &[]);
        let admin = server.admin();
        let ws = admin.workspace("fleet").await;
        let mut clients = Vec::new();
        for n in 0..accounts {
            let (_, key) = admin
                .account(
                    // No limit in the way: the figures are about waking, not limits.
                    json!({"type": "service", "name": format!("fleet {n}"), "maxConcurrentWorkers": 1_000_000}),
                    &ws,
                    true,
                    false,
                )
                .await;
            clients.push(server.client(&key));
        }
        println!(
            "{:<34} server RSS {:>6.1} MiB",
            "no agents",
            rss_mib(server.pid())
        );
        World {
            server,
            url,
            admin,
            ws,
            clients,
            _dir: dir,
        }
    }

    fn parts(&self) -> (&Server, &str, &Api, &str, &[Api]) {
        (
            &self.server,
            &self.url,
            &self.admin,
            &self.ws,
            &self.clients,
        )
    }
}

/// Agents on their event streams, taking offers; with `BUILDD_BENCH_HERD`, also as
/// they were before offers.
async fn offers(world: &World, agents: usize) {
    let (server, url, admin, ws, clients) = world.parts();
    let mut kinds = vec![Kind::Offers];
    if std::env::var_os("BUILDD_BENCH_HERD").is_some() {
        kinds.push(Kind::Herd);
    }
    for kind in kinds {
        let fleet = StreamAgents::connect(clients, agents, kind).await;
        let label = match kind {
            Kind::Offers => format!("{agents} agents taking offers"),
            Kind::Herd => format!("{agents} agents claiming on task.created"),
        };
        let rate = measure(&label, server, url, WINDOW).await;
        let (spent, claims, created) = per_task(admin, ws, url, rate, "agents").await;
        let legs = fleet.legs(&created);
        println!(
            "{:<34} {spent:>6.1} database transactions per created task, {claims:.1} of them \
             claims; {}/{} claimed, create → claimed p50 {:.1} ms, p90 {:.1} ms",
            format!("a task for {label}"),
            legs.whole.len(),
            created.len(),
            ms(percentile(&legs.whole, 50)),
            ms(percentile(&legs.whole, 90)),
        );
        // Agents claiming on task.created have no offer to time.
        if !legs.offer.is_empty() {
            println!(
                "{:<34} p50 create answered {:.1} ms, offer received {:.1} ms after that, \
                 claim answered {:.1} ms after that",
                "",
                ms(percentile(&legs.create, 50)),
                ms(percentile(&legs.offer, 50)),
                ms(percentile(&legs.claim, 50)),
            );
        }
        fleet.stop().await;
    }
}

/// Plain streams (dashboards, `buildd task watch`), then waiting claims, whose figures
/// subtract the streams' idle rate.
async fn streams_and_claims(world: &World, agents: usize, parts: &str) {
    let (server, url, admin, ws, clients) = world.parts();
    let accounts = clients.len();
    let mut streams = Vec::new();
    for i in 0..agents {
        let (status, reader) = clients[i % accounts].events("", None).await;
        assert!(status.is_success());
        streams.push(reader);
    }
    let idle_rate = measure(&format!("{agents} idle event streams"), server, url, WINDOW).await;
    drop(streams);

    // Each waiting claim is a connection re-issued every 30 s: far past a thousand,
    // connecting them all at once outruns the listen backlog here, and a fleet that
    // large waits on its streams.
    if !parts.contains("claims") {
        return;
    }
    if agents > 2000 {
        println!("{agents} waiting claims: skipped (over 2,000; agents wait on their streams)");
        return;
    }
    // Agents that hold waiting claims, re-issued as each one times out.
    let stop = Arc::new(AtomicBool::new(false));
    let mut waiting = Vec::new();
    for i in 0..agents {
        let api: Api = clients[i % accounts].clone();
        let stop = stop.clone();
        waiting.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                api.ok("/api/workers/claim", json!({"wait": 30})).await;
            }
        }));
    }
    // The window spans a whole 30 s wait, so every claim is re-issued once in it.
    measure(
        &format!("{agents} idle waiting claims (30 s)"),
        server,
        url,
        CLAIM_WINDOW,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in waiting {
        w.abort();
    }

    // New tasks, with nobody waiting and then while 1,000 claims wait: how many
    // transactions each costs. With nobody waiting that is the task's insert and
    // what reads its events (the sequencer, the notifier); the waiting claims add
    // the claims it wakes. Each claim waits once (30 s), so that no re-issued claim
    // falls in the window, and the counts are read 9 s after the last task, when
    // Postgres has flushed them.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let (alone, _, _) = per_task(admin, ws, url, idle_rate, "alone").await;
    println!(
        "{:<34} {alone:>6.1} database transactions per created task",
        "a task, no claim waiting"
    );
    let mut once = Vec::new();
    for i in 0..agents {
        let api: Api = clients[i % accounts].clone();
        once.push(tokio::spawn(async move {
            api.ok("/api/workers/claim", json!({"wait": 30})).await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (waited, claims, _) = per_task(admin, ws, url, idle_rate, "offered").await;
    let (_, counts) = admin
        .get(&format!("/api/tasks/counts?workspaceId={ws}"))
        .await;
    let pending = counts["byStatus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "pending")
        .and_then(|s| s["count"].as_i64())
        .unwrap_or(-1);
    println!(
        "{:<34} {waited:>6.1} database transactions per created task, {claims:.1} of them \
         claims ({pending} left pending)",
        format!("a task for {agents} waiting claims"),
    );
    for claim in once {
        claim.abort();
    }
}

/// Creates 20 tasks 0.3 s apart and returns the database transactions each cost
/// (less the idle rate), the claim transactions each cost, and each task's creation.
async fn per_task(
    admin: &Api,
    ws: &str,
    url: &str,
    idle_rate: f64,
    name: &str,
) -> (f64, f64, Vec<Created>) {
    let tasks = 20;
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    let before = transactions(&mut db).await;
    let claims_before = admin.claim_transactions().await;
    let started = std::time::Instant::now();
    let mut created = Vec::new();
    for n in 0..tasks {
        let asked = Instant::now();
        let task = admin
            .task(ws, json!({"title": format!("{name} {n}")}))
            .await;
        created.push(Created {
            id: task["id"].as_str().unwrap().to_owned(),
            asked,
            answered: Instant::now(),
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(9)).await;
    let claims = admin.claim_transactions().await - claims_before;
    let after = transactions(&mut db).await;
    let window = started.elapsed().as_secs_f64();
    // Less the idle streams' rate (the sequencer's backstop) and the two counts.
    let spent = (after - before - 2) as f64 - idle_rate * window;
    (spent / tasks as f64, claims / tasks as f64, created)
}

/// A task the benchmark created: when it asked, and when the server answered.
struct Created {
    id: String,
    asked: Instant,
    answered: Instant,
}

/// Times from tasks' creation to their claims, sorted: whole, and in legs (the
/// creation's answer, the offer after it, the claim's answer after the offer).
#[derive(Default)]
struct Legs {
    whole: Vec<Duration>,
    create: Vec<Duration>,
    offer: Vec<Duration>,
    claim: Vec<Duration>,
}

/// How the simulated agents learn of work.
#[derive(Clone, Copy)]
enum Kind {
    /// `buildd agent` now: its stream takes offers, and it claims the task offered.
    Offers,
    /// Agents before offers: every one claims on every `task.created`.
    Herd,
}

/// Agents following their event streams, each taking at most one task (then it is
/// full), noting when it was offered and claimed which.
struct StreamAgents {
    readers: Vec<JoinHandle<()>>,
    claimed: Arc<Mutex<HashMap<String, Instant>>>,
    offered: Arc<Mutex<HashMap<String, Instant>>>,
    /// The workers claimed, with the account that runs each.
    runs: Arc<Mutex<Vec<(Api, String)>>>,
}

impl StreamAgents {
    /// Opens `agents` streams, one after another (as a fleet comes up), and follows
    /// each in its own task.
    async fn connect(clients: &[Api], agents: usize, kind: Kind) -> StreamAgents {
        let claimed = Arc::new(Mutex::new(HashMap::new()));
        let offered = Arc::new(Mutex::new(HashMap::new()));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for i in 0..agents {
            let api = clients[i % clients.len()].clone();
            let agent_id = format!("agt-fleet{i}");
            let query = match kind {
                Kind::Offers => format!("?agentId={agent_id}&offers=true"),
                Kind::Herd => format!("?agentId={agent_id}"),
            };
            let (status, mut reader) = api.events(&query, None).await;
            assert!(status.is_success(), "stream {i}: {status}");
            let claimed = claimed.clone();
            let offered = offered.clone();
            let runs = runs.clone();
            readers.push(tokio::spawn(async move {
                let mut full = false;
                while let Some(event) = reader.next(Duration::from_secs(3600)).await {
                    let body = match (kind, event.name.as_str()) {
                        (Kind::Offers, "task.offered") => {
                            json!({"agentId": agent_id, "offer": event.data["task"]["id"]})
                        }
                        (Kind::Herd, "task.created") => json!({"agentId": agent_id}),
                        _ => continue,
                    };
                    if full {
                        continue;
                    }
                    if let (Kind::Offers, Some(id)) = (kind, event.data["task"]["id"].as_str()) {
                        offered
                            .lock()
                            .unwrap()
                            .insert(id.to_owned(), Instant::now());
                    }
                    let answer = api.ok("/api/workers/claim", body).await;
                    let worker = &answer["workers"][0];
                    if let (Some(task), Some(id)) =
                        (worker["taskId"].as_str(), worker["id"].as_str())
                    {
                        claimed
                            .lock()
                            .unwrap()
                            .insert(task.to_owned(), Instant::now());
                        runs.lock().unwrap().push((api.clone(), id.to_owned()));
                        full = true;
                    }
                }
            }));
        }
        StreamAgents {
            readers,
            claimed,
            offered,
            runs,
        }
    }

    /// How long each of `created` took from its creation to its claim (those claimed),
    /// and each leg of that.
    fn legs(&self, created: &[Created]) -> Legs {
        let claimed = self.claimed.lock().unwrap();
        let offered = self.offered.lock().unwrap();
        let mut legs = Legs::default();
        for task in created {
            let Some(claimed) = claimed.get(&task.id) else {
                continue;
            };
            legs.whole.push(claimed.duration_since(task.asked));
            if let Some(offered) = offered.get(&task.id) {
                legs.create.push(task.answered.duration_since(task.asked));
                legs.offer
                    .push(offered.saturating_duration_since(task.answered));
                legs.claim.push(claimed.duration_since(*offered));
            }
        }
        for leg in [
            &mut legs.whole,
            &mut legs.create,
            &mut legs.offer,
            &mut legs.claim,
        ] {
            leg.sort();
        }
        legs
    }

    /// Disconnects the agents and completes their runs, as agents would: runs left
    /// open would time out and be requeued while the next part measures.
    async fn stop(self) {
        for reader in self.readers {
            reader.abort();
        }
        let runs = std::mem::take(&mut *self.runs.lock().unwrap());
        for (api, worker) in runs {
            api.move_worker(&worker, &["starting", "running", "completed"])
                .await;
        }
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Settles, then counts the database's transactions over the window. Backends
/// report their counts lazily (up to about 10 s when idle), so the settling time is
/// longer than that: setup work must not be counted as idle work.
async fn measure(label: &str, server: &Server, url: &str, window: Duration) -> f64 {
    tokio::time::sleep(SETTLE).await;
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    let before = transactions(&mut db).await;
    tokio::time::sleep(window).await;
    let after = transactions(&mut db).await;
    // The two counting queries are transactions too.
    let per_second = (after - before - 1) as f64 / window.as_secs_f64();
    println!(
        "{label:<34} server RSS {:>6.1} MiB   database {:>6.1} transactions/s",
        rss_mib(server.pid()),
        per_second
    );
    per_second
}

async fn transactions(db: &mut sqlx::PgConnection) -> i64 {
    // Statistics reach pg_stat_database with a delay; ask for a fresh snapshot.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *db)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sqlx::query_scalar("SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(db)
        .await
        .unwrap()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Raises this process's soft limit on open files to its hard limit (children inherit
/// it) and returns the limit now in force.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            limit = raised;
        }
    }
    limit.rlim_cur
}
