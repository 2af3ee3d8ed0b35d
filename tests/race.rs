//! Claims under contention, end to end: 32 concurrent claimers over 400 tasks through
//! HTTP, on SQLite and on two servers sharing one Postgres database. No task may be
//! handed out twice, and every cap (grants, routing, worker slots, daily cost) must
//! hold throughout.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{Api, Server};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const TASKS: usize = 400;
const CLAIMERS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_race_on_sqlite() {
    let server = Server::sqlite(&[]);
    race(&[&server]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_race_on_two_servers_sharing_postgres() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(&url, dir.path(), &[]);
    let second = Server::start(&url, dir.path(), &[]);
    race(&[&first, &second]).await;
}

/// One claiming account: its key, type, worker cap, and the claimers that use it.
struct Claimer {
    account: String,
    account_type: &'static str,
    cap: usize,
    api: Api,
}

async fn race(servers: &[&Server]) {
    let admin = servers[0].admin();
    let ws = admin.workspace("race").await;

    // (type, cap, maxCostPerDay, canClaim, claimers using it)
    let plan: &[(&str, usize, Option<f64>, bool, usize)] = &[
        ("service", 3, None, true, 4),
        ("service", 3, None, true, 4),
        ("service", 3, None, true, 4),
        ("service", 3, None, true, 4),
        ("service", 3, None, true, 4),
        ("user", 3, None, true, 4),
        ("action", 2, None, true, 4),
        ("service", 1, Some(1.0), true, 3), // the budget account
        ("service", 5, None, false, 1),     // granted, but may not claim
    ];
    assert_eq!(plan.iter().map(|p| p.4).sum::<usize>(), CLAIMERS);
    let mut claimers = Vec::new();
    let mut budget_account = String::new();
    let mut viewer_account = String::new();
    for (n, (account_type, cap, max_cost, can_claim, users)) in plan.iter().enumerate() {
        let mut body = json!({"type": account_type, "name": format!("racer {n}"), "maxConcurrentWorkers": cap});
        if let Some(c) = max_cost {
            body["maxCostPerDay"] = json!(c);
        }
        let (id, key) = admin.account(body, &ws, *can_claim, false).await;
        if max_cost.is_some() {
            budget_account = id.clone();
        }
        if !can_claim {
            viewer_account = id.clone();
        }
        for u in 0..*users {
            let server = servers[(claimers.len() + u) % servers.len()];
            claimers.push(Claimer {
                account: id.clone(),
                account_type,
                cap: *cap,
                api: server.client(&key),
            });
        }
    }

    let preferences = [
        "user", "action", "service", "any", "any", "any", "any", "any", "any", "any",
    ];
    let mut creators = Vec::new();
    for chunk in 0..8 {
        let api = servers[chunk % servers.len()].admin();
        let ws = ws.clone();
        creators.push(tokio::spawn(async move {
            for i in (chunk..TASKS).step_by(8) {
                let body = json!({"title": format!("task {i}"), "runnerPreference": preferences[i % 10], "priority": i % 7});
                api.task(&ws, body).await;
            }
        }));
    }
    for c in creators {
        c.await.unwrap();
    }

    let claimers: Vec<Arc<Claimer>> = claimers.into_iter().map(Arc::new).collect();
    // Every claim any claimer got: (task id, account, preference).
    let claims: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let mut completed = 0;
    let mut rounds = 0;
    while completed < TASKS {
        rounds += 1;
        assert!(
            rounds <= 200,
            "the race is not making progress ({completed} done)"
        );

        // Claim phase: everyone claims at once until nothing more fits. Nothing
        // finishes meanwhile, so the caps must hold when it ends.
        let mut phase = Vec::new();
        for (i, c) in claimers.iter().enumerate() {
            let c = c.clone();
            let claims = claims.clone();
            phase.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = c
                        .api
                        .ok("/api/workers/claim", json!({"maxTasks": 1 + i % 3}))
                        .await;
                    let workers = got["workers"].as_array().unwrap().clone();
                    if workers.is_empty() {
                        return mine;
                    }
                    for w in workers {
                        let pref = w["task"]["runnerPreference"].as_str().unwrap().to_owned();
                        assert!(
                            pref == "any" || pref == c.account_type,
                            "{} got a {pref} task",
                            c.account_type
                        );
                        claims.lock().await.push((
                            w["taskId"].as_str().unwrap().to_owned(),
                            c.account.clone(),
                            pref,
                        ));
                        mine.push((c.clone(), w));
                    }
                }
            }));
        }
        let mut running: Vec<(Arc<Claimer>, Value)> = Vec::new();
        for p in phase {
            running.extend(p.await.unwrap());
        }
        let mut held: HashMap<&str, usize> = HashMap::new();
        for (c, _) in &running {
            *held.entry(c.account.as_str()).or_default() += 1;
        }
        for c in &claimers {
            let n = held.get(c.account.as_str()).copied().unwrap_or(0);
            assert!(
                n <= c.cap,
                "account {} holds {n} workers, cap {}",
                c.account,
                c.cap
            );
        }

        // Work phase: every claimed task runs and completes, all at once.
        let mut work = Vec::new();
        for (c, w) in running {
            let budget = c.account == budget_account;
            work.push(tokio::spawn(async move {
                let path = format!("/api/workers/{}", w["id"].as_str().unwrap());
                for status in ["starting", "running"] {
                    let (code, body) = c.api.patch(&path, json!({"status": status})).await;
                    assert!(code.is_success(), "{code} {body}");
                }
                let cost = if budget { 0.3 } else { 0.01 };
                let (code, body) = c
                    .api
                    .patch(&path, json!({"status": "completed", "costUsd": cost}))
                    .await;
                assert!(code.is_success(), "{code} {body}");
            }));
        }
        completed += work.len();
        for w in work {
            w.await.unwrap();
        }
    }

    let claims = claims.lock().await;
    let unique: HashSet<&str> = claims.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(claims.len(), TASKS, "claims handed out");
    assert_eq!(unique.len(), TASKS, "a task was handed out twice");
    let budget_claims = claims
        .iter()
        .filter(|(_, a, _)| *a == budget_account)
        .count();
    assert_eq!(
        budget_claims, 4,
        "0.3 USD a task stops at a 1.0 USD daily cap after 4 tasks"
    );
    assert!(
        claims.iter().all(|(_, a, _)| *a != viewer_account),
        "a grant without canClaim claimed"
    );

    // The server's own records agree: each task completed once, on its first attempt.
    let (_, tasks) = admin.get("/api/tasks?limit=1000").await;
    let tasks = tasks["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), TASKS);
    assert!(
        tasks
            .iter()
            .all(|t| t["status"] == "completed" && t["attempts"] == 1)
    );
    let (_, workers) = admin.get("/api/workers?limit=1000").await;
    let workers = workers["workers"].as_array().unwrap();
    assert_eq!(workers.len(), TASKS);
    let worker_tasks: HashSet<&str> = workers
        .iter()
        .map(|w| w["taskId"].as_str().unwrap())
        .collect();
    assert_eq!(worker_tasks.len(), TASKS);
    eprintln!(
        "{TASKS} tasks, {CLAIMERS} claimers, {} server(s): {rounds} rounds, no double claims",
        servers.len()
    );
}
