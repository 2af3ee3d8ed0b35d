//! Limits through the real binary, on both backends: an empty claim says why, and a
//! daily budget spent mid-run stops the account's running workers.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::agent::{Repo, scripted_agent, wait_until};
use common::{Api, Server};

async fn claim(api: &Api, body: Value) -> Value {
    let answer = api.ok("/api/workers/claim", body).await;
    assert!(answer["workers"].as_array().is_some(), "{answer}");
    answer
}

/// The reason an empty claim gives.
async fn reason(api: &Api) -> String {
    let answer = claim(api, json!({})).await;
    assert_eq!(answer["workers"], json!([]), "{answer}");
    answer["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason: {answer}"))
        .to_owned()
}

async fn every_reason(server: &Server) {
    let admin = server.admin();
    let ws = admin.workspace("limits").await;
    let created = admin
        .ok(
            "/api/accounts",
            json!({ "type": "service", "name": "s", "maxConcurrentWorkers": 2 }),
        )
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["apiKey"].as_str().unwrap(),
    );
    let svc = server.client(key);

    assert_eq!(reason(&svc).await, "no_grant");
    admin
        .ok(
            &format!("/api/accounts/{id}/workspaces"),
            json!({ "workspaceId": ws, "canClaim": false }),
        )
        .await;
    assert_eq!(
        reason(&svc).await,
        "no_grant",
        "a grant without canClaim is none"
    );
    admin
        .ok(
            &format!("/api/accounts/{id}/workspaces"),
            json!({ "workspaceId": ws, "canClaim": true }),
        )
        .await;
    assert_eq!(reason(&svc).await, "no_pending_work");

    // A task for user runners only.
    let for_users = admin.task(&ws, json!({ "runnerPreference": "user" })).await;
    assert_eq!(reason(&svc).await, "other_runners");
    admin
        .ok(
            &format!("/api/tasks/{}/cancel", for_users["id"].as_str().unwrap()),
            json!({}),
        )
        .await;

    // One task it takes, and one that waits for it.
    let first = admin.task(&ws, json!({ "title": "first" })).await;
    let first_id = first["id"].as_str().unwrap();
    admin
        .task(&ws, json!({ "title": "second", "dependsOn": [first_id] }))
        .await;
    let got = claim(&svc, json!({})).await;
    assert_eq!(got["workers"].as_array().unwrap().len(), 1, "{got}");
    assert!(
        got.get("reason").is_none(),
        "a claim that took a task gives no reason: {got}"
    );
    assert_eq!(reason(&svc).await, "all_blocked");

    // At its worker limit.
    admin.task(&ws, json!({ "title": "third" })).await;
    claim(&svc, json!({})).await;
    assert_eq!(reason(&svc).await, "concurrency_limit");

    // A follow-up held for the account that ran its parent.
    let (_, other_key) = admin
        .account(
            json!({ "type": "service", "name": "other" }),
            &ws,
            true,
            false,
        )
        .await;
    let other = server.client(&other_key);
    let worker = &got["workers"][0]["id"].as_str().unwrap();
    svc.move_worker(worker, &["starting", "running", "completed"])
        .await;
    let (_, done) = admin.get(&format!("/api/tasks/{first_id}")).await;
    assert_eq!(done["status"], "completed", "{done}");
    claim(&other, json!({})).await; // the second task, now unblocked
    admin
        .ok(
            &format!("/api/tasks/{first_id}/followup"),
            json!({ "message": "and the docs" }),
        )
        .await;
    assert_eq!(reason(&other).await, "held_for_followup");

    // A workspace it may not claim in, asked by name: 403, not a reason.
    let elsewhere = admin.workspace("elsewhere").await;
    let (status, body) = svc
        .post("/api/workers/claim", json!({ "workspaceId": elsewhere }))
        .await;
    assert_eq!(status.as_u16(), 403, "{body}");

    // The daily budget comes first.
    let (_, budget_key) = admin
        .account(
            json!({ "type": "service", "name": "b", "maxCostPerDay": 1.0 }),
            &elsewhere,
            true,
            false,
        )
        .await;
    let budgeted = server.client(&budget_key);
    admin.task(&elsewhere, json!({})).await;
    admin.task(&elsewhere, json!({})).await;
    let w = budgeted.claim_one().await;
    budgeted.move_worker(&w, &["starting", "running"]).await;
    budgeted
        .patch(&format!("/api/workers/{w}"), json!({ "costUsd": 1.0 }))
        .await;
    assert_eq!(reason(&budgeted).await, "daily_budget");

    // Its running worker is told to stop, and ends in error with the reason; the
    // task goes back to the queue (attempts remain), and the slot is free.
    let (_, beat) = budgeted
        .post(&format!("/api/workers/{w}/heartbeat"), json!({}))
        .await;
    assert_eq!(beat["action"], "cancel", "{beat}");
    assert!(
        beat["reason"]
            .as_str()
            .unwrap()
            .contains("maxCostPerDay of $1.00"),
        "{beat}"
    );
    let (_, stopped) = admin.get(&format!("/api/workers/{w}")).await;
    assert_eq!(stopped["status"], "error", "{stopped}");
    assert!(
        stopped["error"].as_str().unwrap().contains("maxCostPerDay"),
        "{stopped}"
    );
    let (_, task) = admin
        .get(&format!(
            "/api/tasks/{}",
            stopped["taskId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(task["status"], "pending", "{task}");
    let budget_id = stopped["accountId"].as_str().unwrap();
    let (_, usage) = budgeted
        .get(&format!("/api/accounts/{budget_id}/usage"))
        .await;
    assert_eq!(
        (usage["activeWorkers"].as_i64(), usage["costToday"].as_f64()),
        (Some(0), Some(1.0)),
        "{usage}"
    );
    let (status, _) = budgeted
        .post(&format!("/api/workers/{w}/heartbeat"), json!({}))
        .await;
    assert_eq!(status.as_u16(), 409, "the stopped worker is finished");

    // The terminal shows the same limits and usage, to the account itself.
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args([
            "account",
            "show",
            "--server",
            &server.url,
            "--api-key",
            &budget_key,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(
        text.contains("0 of 3") && text.contains("$1.00 of $1.00"),
        "{text}"
    );
    let json = std::process::Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args([
            "account",
            "show",
            budget_id,
            "--json",
            "--server",
            &server.url,
            "--api-key",
            common::ADMIN,
        ])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["usage"]["costToday"], 1.0, "{json}");
    assert_eq!(json["maxCostPerDay"], 1.0, "{json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_empty_claim_says_why_on_sqlite() {
    every_reason(&Server::sqlite(&[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_empty_claim_says_why_on_postgres() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    every_reason(&Server::start(&url, dir.path(), &[])).await;
}

/// A real agent with a scripted runner: two runs of one account, one expensive. The
/// first run's spend passes the account's budget, and both runs stop.
async fn budget_stops_running_workers(server: &Server) {
    let admin = server.admin();
    let ws = admin.workspace("budget").await;
    let (account, key) = admin
        .account(
            json!({ "type": "service", "name": "budgeted", "maxCostPerDay": 1.0, "maxConcurrentWorkers": 2 }),
            &ws,
            true,
            false,
        )
        .await;
    // A million input tokens: about $3 at Sonnet's price.
    let costly = admin
        .task(&ws, json!({ "title": "costly", "description": "run: sleep 1; say 1 thinking 1000000; sleep 300" }))
        .await;
    let cheap = admin
        .task(
            &ws,
            json!({ "title": "cheap", "description": "run: sleep 300" }),
        )
        .await;
    let repo = Repo::new();
    let agent = scripted_agent(&server.url, &key, &repo, &["--max-tasks", "2"], &[]);
    for task in [&costly, &cheap] {
        let id = task["id"].as_str().unwrap();
        let workers = wait_until(
            &admin,
            &format!("/api/workers?taskId={id}"),
            Duration::from_secs(30),
            "the run stopped over budget",
            |w| w["workers"][0]["status"] == "error",
        )
        .await;
        let error = workers["workers"][0]["error"].as_str().unwrap();
        assert!(error.contains("maxCostPerDay of $1.00"), "{error}");
    }
    let (_, usage) = admin.get(&format!("/api/accounts/{account}/usage")).await;
    assert_eq!(usage["activeWorkers"], 0, "{usage}");
    assert!(usage["costToday"].as_f64().unwrap() >= 1.0, "{usage}");
    // And it claims nothing more today: the tasks wait in the queue.
    let log = agent.logged("daily_budget").await;
    assert!(log.contains("nothing to claim"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_spent_mid_run_stops_the_runs_on_sqlite() {
    budget_stops_running_workers(&Server::sqlite(&["--lease-ttl", "3"])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_spent_mid_run_stops_the_runs_on_postgres() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    budget_stops_running_workers(&Server::start(&url, dir.path(), &["--lease-ttl", "3"])).await;
}
