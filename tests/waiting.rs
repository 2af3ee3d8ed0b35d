//! Waiting claims are woken one per task that became claimable, never left asleep
//! while a task they may take is pending, on both backends.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use common::{Api, Server};

/// A claim of `api` waiting up to 20 s, started now; gives what it claimed.
fn waiting_claim(api: &Api) -> JoinHandle<(Value, Duration)> {
    let api = api.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let claimed = api.ok("/api/workers/claim", json!({"wait": 20})).await;
        (claimed, started.elapsed())
    })
}

/// Lets waiting claims reach their wait.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn a_new_task_wakes_one_waiting_claim_and_the_rest_sleep_on(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("herd").await;
    let mut claims = Vec::new();
    for n in 0..5 {
        let (_, key) = admin
            .account(
                json!({"type": "service", "name": format!("w{n}")}),
                &ws,
                true,
                false,
            )
            .await;
        claims.push(waiting_claim(&server.client(&key)));
        settle().await;
    }
    let before = admin.claim_transactions().await;
    let first = admin.task(&ws, json!({"title": "one"})).await;
    // The oldest waiter takes it.
    let (claimed, waited) = claims.remove(0).await.unwrap();
    assert_eq!(claimed["workers"][0]["taskId"], first["id"]);
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    settle().await;
    assert!(
        claims.iter().all(|c| !c.is_finished()),
        "the others sleep on"
    );
    // One claim transaction for one task, not one per waiter.
    let spent = admin.claim_transactions().await - before;
    assert_eq!(spent, 1.0, "claim transactions for one new task");
    // One task each for the rest: every one is taken, each by one claim.
    for n in 0..4 {
        admin.task(&ws, json!({"title": format!("more {n}")})).await;
    }
    let mut taken = Vec::new();
    for claim in claims {
        let (claimed, _) = claim.await.unwrap();
        let workers = claimed["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 1, "{claimed}");
        taken.push(workers[0]["taskId"].as_str().unwrap().to_owned());
    }
    taken.sort();
    taken.dedup();
    assert_eq!(taken.len(), 4, "no task twice");
}

async fn a_claim_that_cannot_take_its_task_passes_it_on_on(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("pass").await;
    // The oldest waiter is at its limit: it is offered the task, cannot take it, and
    // passes it on.
    let (_, full) = admin
        .account(
            json!({"type": "service", "name": "full", "maxConcurrentWorkers": 0}),
            &ws,
            true,
            false,
        )
        .await;
    let full = waiting_claim(&server.client(&full));
    settle().await;
    // A service account waits for a task only users may run: it is never offered it.
    let (_, service) = admin
        .account(json!({"type": "service", "name": "svc"}), &ws, true, false)
        .await;
    let service = waiting_claim(&server.client(&service));
    settle().await;
    let (_, user) = admin
        .account(json!({"type": "user", "name": "laptop"}), &ws, true, false)
        .await;
    let user = waiting_claim(&server.client(&user));
    settle().await;
    let task = admin
        .task(
            &ws,
            json!({"title": "for people", "runnerPreference": "user"}),
        )
        .await;
    let (claimed, waited) = user.await.unwrap();
    assert_eq!(claimed["workers"][0]["taskId"], task["id"], "{claimed}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    settle().await;
    assert!(!service.is_finished() && !full.is_finished());
    // An account's own workspace only: a task elsewhere wakes nobody here.
    let elsewhere = admin.workspace("elsewhere").await;
    admin.task(&elsewhere, json!({"title": "not theirs"})).await;
    settle().await;
    assert!(!service.is_finished());
    service.abort();
    full.abort();
}

async fn a_new_grant_wakes_a_waiting_claim_on(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("granted").await;
    let task = admin
        .task(&ws, json!({"title": "waiting for someone"}))
        .await;
    let created = admin
        .ok("/api/accounts", json!({"type": "service", "name": "late"}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let late = waiting_claim(&server.client(created["apiKey"].as_str().unwrap()));
    settle().await;
    assert!(!late.is_finished());
    admin
        .ok(
            &format!("/api/accounts/{id}/workspaces"),
            json!({"workspaceId": ws, "canClaim": true, "canCreate": false}),
        )
        .await;
    let (claimed, waited) = late.await.unwrap();
    assert_eq!(claimed["workers"][0]["taskId"], task["id"], "{claimed}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
}

both_backends!(
    a_new_task_wakes_one_waiting_claim_and_the_rest_sleep_on,
    a_claim_that_cannot_take_its_task_passes_it_on_on,
    a_new_grant_wakes_a_waiting_claim_on,
);
