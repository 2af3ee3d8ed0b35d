//! `GET /api/events` end to end: every change streamed in order, resume without gaps
//! or repeats, per-account scoping, and a cluster of two servers on one Postgres.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Api, Received, Server};
use reqwest::StatusCode;
use serde_json::json;

const QUIET: Duration = Duration::from_millis(700);
const SOON: Duration = Duration::from_secs(10);

/// Creates, claims, runs and completes one task with a few messages.
async fn one_task_lifecycle(admin: &Api, agent: &Api, ws: &str) -> String {
    let task = admin.task(ws, json!({"title": "streamed"})).await;
    let wid = agent.claim_one().await;
    agent.move_worker(&wid, &["starting", "running"]).await;
    agent
        .ok(
            &format!("/api/workers/{wid}/messages"),
            json!({"messages": [{"n": 1}, {"n": 2}]}),
        )
        .await;
    agent
        .patch(
            &format!("/api/workers/{wid}"),
            json!({"status": "completed", "costUsd": 0.1}),
        )
        .await;
    task["id"].as_str().unwrap().to_owned()
}

fn ids(events: &[Received]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn every_change_is_streamed_in_order() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, _, key) = admin.workspace_with_claimer().await;
    let agent = server.client(&key);
    let (status, mut stream) = admin.events("", None).await;
    assert_eq!(status, StatusCode::OK);

    let task_id = one_task_lifecycle(&admin, &agent, &ws).await;
    let events = stream.drain(QUIET).await;
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "task.created",
            "task.updated",
            "worker.updated", // claim
            "worker.updated", // starting
            "task.updated",
            "worker.updated", // running
            "worker.message",
            "worker.message",
            "task.updated",
            "worker.updated", // completed
        ]
    );
    assert!(ids(&events).windows(2).all(|w| w[0] < w[1]), "ids increase");
    assert_eq!(events[0].data["task"]["id"], task_id.as_str());
    assert_eq!(events[0].data["task"]["status"], "pending");
    assert_eq!(events[6].data["message"], json!({"n": 1}));
    assert_eq!(events[8].data["task"]["status"], "completed");
    assert_eq!(events[9].data["worker"]["costUsd"], 0.1);
}

#[tokio::test]
async fn resuming_gives_exactly_the_missed_events() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, _, key) = admin.workspace_with_claimer().await;
    let agent = server.client(&key);

    let (_, mut first) = admin.events("?lastEventId=0", None).await;
    one_task_lifecycle(&admin, &agent, &ws).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(first.next(SOON).await.expect("an event"));
    }
    drop(first); // the client goes away mid-stream

    one_task_lifecycle(&admin, &agent, &ws).await;
    let (_, mut resumed) = admin.events("", Some(seen.last().unwrap().id)).await;
    seen.extend(resumed.drain(QUIET).await);

    let (_, mut everything) = admin.events("?lastEventId=0", None).await;
    let all = everything.drain(QUIET).await;
    assert_eq!(all.len(), 20, "two lifecycles of ten events");
    assert_eq!(ids(&seen), ids(&all), "no gap, no repeat");
    assert_eq!(seen, all);

    let (status, _) = admin.events("", Some(-5)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a resume point before the first event replays all"
    );
    let resp = admin
        .http
        .get(format!("{}/api/events", admin.base))
        .bearer_auth(&admin.token)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn accounts_see_only_their_workspaces_events() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let mine = admin.workspace("mine").await;
    let theirs = admin.workspace("theirs").await;
    let (_, key) = admin
        .account(json!({"type": "user", "name": "u"}), &mine, true, true)
        .await;
    let account = server.client(&key);

    let (status, _) = account
        .events(&format!("?workspaceId={theirs}"), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server.client("").events("", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (_, mut as_account) = account.events("", None).await;
    let (_, mut as_admin_filtered) = admin.events(&format!("?workspaceId={theirs}"), None).await;
    let visible = admin.task(&mine, json!({"title": "visible"})).await;
    let hidden = admin.task(&theirs, json!({"title": "hidden"})).await;

    let got = as_account.drain(QUIET).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data["task"]["id"], visible["id"]);
    let got = as_admin_filtered.drain(QUIET).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data["task"]["id"], hidden["id"]);
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_cleanly() {
    let server = Server::sqlite(&[]);
    let (_, mut stream) = server.admin().events("", None).await;
    let pid = server.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(stream.next(SOON).await, None, "the stream ends");
    assert_eq!(server.wait().code(), Some(0));
}

/// Two servers on one Postgres act as one: an event written through either reaches
/// subscribers of both, and a claim waiting on one wakes for a task created on the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shares_its_events_and_wakes_claims_anywhere() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(&url, dir.path(), &[]);
    let b = Server::start(&url, dir.path(), &[]);
    let (admin_a, admin_b) = (a.admin(), b.admin());
    let ws = admin_a.workspace("w").await;
    let (_, key) = admin_a
        .account(json!({"type": "service", "name": "s"}), &ws, true, false)
        .await;

    let (_, mut on_a) = admin_a.events("", None).await;
    let (_, mut on_b) = admin_b.events("", None).await;
    let waiting_on_b = {
        let agent = b.client(&key);
        tokio::spawn(async move {
            let started = Instant::now();
            let claimed = agent.ok("/api/workers/claim", json!({"wait": 25})).await;
            (claimed, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Concurrent writers through both servers: every subscriber sees every event once,
    // in the same order.
    let mut writers = Vec::new();
    for (n, admin) in [
        admin_a.clone(),
        admin_b.clone(),
        admin_a.clone(),
        admin_b.clone(),
    ]
    .into_iter()
    .enumerate()
    {
        let ws = ws.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..10 {
                admin
                    .task(&ws, json!({"title": format!("writer {n} task {i}")}))
                    .await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }

    let (claimed, waited) = waiting_on_b.await.unwrap();
    assert_eq!(claimed["workers"].as_array().unwrap().len(), 1);
    assert!(
        waited < Duration::from_secs(15),
        "the waiting claim woke ({waited:?} of a 25 s wait)"
    );

    let seen_a = on_a.drain(Duration::from_secs(2)).await;
    let seen_b = on_b.drain(Duration::from_secs(2)).await;
    let created = |events: &[Received]| events.iter().filter(|e| e.name == "task.created").count();
    assert_eq!(created(&seen_a), 40);
    assert_eq!(
        ids(&seen_a),
        ids(&seen_b),
        "both servers stream the same events in the same order"
    );
    let unique: HashSet<i64> = ids(&seen_a).into_iter().collect();
    assert_eq!(unique.len(), seen_a.len());

    // A late subscriber resuming from the start on either server gets the same log.
    let (_, mut replay) = admin_b.events("?lastEventId=0", None).await;
    let replayed = replay.drain(Duration::from_secs(1)).await;
    assert!(ids(&replayed).ends_with(&ids(&seen_a)));
}

/// An idle stream gets a comment line at least every 15 s, so proxies keep it open.
#[tokio::test]
async fn idle_streams_get_keep_alive_comments() {
    let server = Server::sqlite(&[]);
    let (_, mut stream) = server.admin().events("", None).await;
    assert_eq!(
        stream.next(Duration::from_secs(17)).await,
        None,
        "no event on an idle server"
    );
    assert!(stream.keep_alives() >= 1, "no keep-alive within 17 s");
}
