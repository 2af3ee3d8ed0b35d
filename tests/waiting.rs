//! Waiting claims, and agents' event streams that take offers, are woken one per task
//! that became claimable, never left asleep while a task they may take is pending, on
//! both backends.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use common::{Api, EventReader, Server};

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

/// The event stream of agent `agent_id` of `api`, taking offers.
async fn agent_stream(api: &Api, agent_id: &str) -> EventReader {
    let (status, reader) = api
        .events(&format!("?agentId={agent_id}&offers=true"), None)
        .await;
    assert!(status.is_success(), "{status}");
    settle().await;
    reader
}

/// The id of the task in the next offer `stream` gets within `secs`, if one comes.
/// Offers without a task ("look for work", as a new grant wakes everyone) are passed
/// over.
async fn offered(stream: &mut EventReader, secs: u64) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let offer = stream.next_offer(left).await?;
        if let Some(id) = offer["task"]["id"].as_str() {
            return Some(id.to_owned());
        }
    }
}

/// The answer to an offer: a claim naming the agent and the offered task.
async fn answer(api: &Api, agent_id: &str, offer: &str) -> Value {
    api.ok(
        "/api/workers/claim",
        json!({"agentId": agent_id, "offer": offer}),
    )
    .await
}

async fn a_new_task_is_offered_to_one_agent_stream_on(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("offers").await;
    let mut agents = Vec::new();
    for n in 0..4 {
        let (_, key) = admin
            .account(
                json!({"type": "service", "name": format!("a{n}")}),
                &ws,
                true,
                false,
            )
            .await;
        let api = server.client(&key);
        let id = format!("agt-offer{n}");
        let stream = agent_stream(&api, &id).await;
        agents.push((api, id, stream));
    }
    let before = admin.claim_transactions().await;
    let first = admin.task(&ws, json!({"title": "one"})).await;
    // The agent that waited longest is offered it, and only it.
    let (api, id, stream) = &mut agents[0];
    assert_eq!(offered(stream, 5).await.as_deref(), first["id"].as_str());
    let claimed = answer(api, id, first["id"].as_str().unwrap()).await;
    assert_eq!(claimed["workers"][0]["taskId"], first["id"], "{claimed}");
    for (_, id, stream) in &mut agents[1..] {
        assert_eq!(offered(stream, 1).await, None, "{id} was offered it too");
    }
    assert_eq!(admin.claim_transactions().await - before, 1.0);
    // The first agent is full (it asked for one task and got it): the next task goes
    // to the next agent.
    let second = admin.task(&ws, json!({"title": "two"})).await;
    let (api, id, stream) = &mut agents[1];
    assert_eq!(offered(stream, 5).await.as_deref(), second["id"].as_str());
    answer(api, id, second["id"].as_str().unwrap()).await;
    let (_, _, stream) = &mut agents[0];
    assert_eq!(
        offered(stream, 1).await,
        None,
        "a full agent is offered nothing"
    );
    // An agent's stream carries what it acts on for its own account's runs and its
    // offers, not the rest of the cluster's events: here, the cancel of its task.
    let second_id = second["id"].as_str().unwrap();
    admin
        .ok(&format!("/api/tasks/{second_id}/cancel"), json!({}))
        .await;
    let (_, _, stream) = &mut agents[1];
    let own = stream.drain(Duration::from_millis(500)).await;
    assert!(
        own.iter().any(|e| e.name == "task.updated"
            && e.data["task"]["id"] == second["id"]
            && e.data["task"]["status"] == "cancelled"),
        "{own:?}"
    );
    assert!(own.iter().all(|e| e.name != "task.created"), "{own:?}");
    let (_, _, stream) = &mut agents[3];
    let others = stream.drain(Duration::from_millis(500)).await;
    assert!(
        others.iter().all(|e| e.name == "task.offered"),
        "{others:?}"
    );
}

async fn an_unanswered_offer_goes_to_the_next_agent_on(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("unanswered").await;
    let (_, key) = admin
        .account(
            json!({"type": "service", "name": "fleet"}),
            &ws,
            true,
            false,
        )
        .await;
    let api = server.client(&key);
    let mut silent = agent_stream(&api, "agt-silent").await;
    let mut leaving = agent_stream(&api, "agt-leaving").await;
    let mut last = agent_stream(&api, "agt-last").await;
    let task = admin.task(&ws, json!({"title": "anyone?"})).await;
    let id = task["id"].as_str().unwrap();
    assert_eq!(offered(&mut silent, 5).await.as_deref(), Some(id));
    // Not answered within 3 s: the next agent gets it.
    let started = Instant::now();
    assert_eq!(offered(&mut leaving, 10).await.as_deref(), Some(id));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // That one goes away instead of answering: the offer moves on at once.
    drop(leaving);
    assert_eq!(offered(&mut last, 2).await.as_deref(), Some(id));
    let claimed = answer(&api, "agt-last", id).await;
    assert_eq!(claimed["workers"][0]["taskId"], task["id"], "{claimed}");
}

async fn an_agent_at_its_limit_passes_the_offer_past_its_account_on(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("limits").await;
    let (_, full) = admin
        .account(
            json!({"type": "service", "name": "full", "maxConcurrentWorkers": 0}),
            &ws,
            true,
            false,
        )
        .await;
    let full = server.client(&full);
    let mut full_a = agent_stream(&full, "agt-full-a").await;
    let mut full_b = agent_stream(&full, "agt-full-b").await;
    let (_, free) = admin
        .account(json!({"type": "service", "name": "free"}), &ws, true, false)
        .await;
    let free = server.client(&free);
    let mut free_a = agent_stream(&free, "agt-free-a").await;
    let task = admin.task(&ws, json!({"title": "for whoever can"})).await;
    let id = task["id"].as_str().unwrap();
    assert_eq!(offered(&mut full_a, 5).await.as_deref(), Some(id));
    let refused = answer(&full, "agt-full-a", id).await;
    assert_eq!(refused["reason"], "concurrency_limit", "{refused}");
    // Straight to the other account: its own agents are at the same limit.
    assert_eq!(offered(&mut free_a, 2).await.as_deref(), Some(id));
    assert_eq!(offered(&mut full_b, 1).await, None);
    let claimed = answer(&free, "agt-free-a", id).await;
    assert_eq!(claimed["workers"][0]["taskId"], task["id"], "{claimed}");
}

/// A task that becomes claimable without an event (here: its account's limit freed
/// when its other worker ended) is offered by the sweep.
async fn no_agent_sleeps_through_a_task_it_may_take_on(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("sweep").await;
    let (_, key) = admin
        .account(
            json!({"type": "service", "name": "one at a time", "maxConcurrentWorkers": 1}),
            &ws,
            true,
            false,
        )
        .await;
    let api = server.client(&key);
    admin.task(&ws, json!({"title": "running"})).await;
    let running = api.ok("/api/workers/claim", json!({})).await;
    let worker = running["workers"][0]["id"].as_str().unwrap().to_owned();
    let mut stream = agent_stream(&api, "agt-sweep").await;
    let task = admin.task(&ws, json!({"title": "next"})).await;
    let id = task["id"].as_str().unwrap();
    assert_eq!(offered(&mut stream, 5).await.as_deref(), Some(id));
    let refused = answer(&api, "agt-sweep", id).await;
    assert_eq!(refused["reason"], "concurrency_limit", "{refused}");
    for status in ["starting", "running", "completed"] {
        let (code, body) = api
            .patch(&format!("/api/workers/{worker}"), json!({"status": status}))
            .await;
        assert!(code.is_success(), "{status}: {body}");
    }
    // Nothing was created or requeued, yet the pending task is offered again.
    assert_eq!(offered(&mut stream, 40).await.as_deref(), Some(id));
    let claimed = answer(&api, "agt-sweep", id).await;
    assert_eq!(claimed["workers"][0]["taskId"], task["id"], "{claimed}");
}

both_backends!(
    a_new_task_is_offered_to_one_agent_stream_on,
    an_unanswered_offer_goes_to_the_next_agent_on,
    an_agent_at_its_limit_passes_the_offer_past_its_account_on,
    no_agent_sleeps_through_a_task_it_may_take_on,
    a_new_task_wakes_one_waiting_claim_and_the_rest_sleep_on,
    a_claim_that_cannot_take_its_task_passes_it_on_on,
    a_new_grant_wakes_a_waiting_claim_on,
);
