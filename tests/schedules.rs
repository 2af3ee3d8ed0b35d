//! Schedules and triggers through the real binary, on SQLite and Postgres: runs on a
//! second-granularity cadence, skips while a task is unfinished, pauses after failures,
//! fires once per run across two servers, and triggers that open nothing but their own
//! firing.

#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use common::{Api, Server};

both_backends!(
    a_schedule_runs_skips_while_its_task_is_unfinished_and_pauses_after_failures,
    schedules_refuse_bad_input_and_follow_grants,
    a_trigger_fires_with_its_own_token_only,
);

/// Polls `GET path` until `done` holds, up to 20 s.
async fn until(api: &Api, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let (status, body) = api.get(path).await;
        assert!(status.is_success(), "{path}: {body}");
        if done(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never got there");
}

/// Runs `task` to `error` as the account `agent` (which may claim it).
async fn fail(agent: &Api, task: &str) {
    let claimed = agent.ok("/api/workers", json!({"taskId": task})).await;
    let worker = claimed["workers"][0]["id"].as_str().unwrap().to_owned();
    agent
        .move_worker(&worker, &["starting", "running", "error"])
        .await;
}

async fn a_schedule_runs_skips_while_its_task_is_unfinished_and_pauses_after_failures(
    server: Server,
) {
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    let (_, key) = admin
        .account(json!({"type": "service", "name": "vm"}), &ws, true, true)
        .await;
    let person = server.client(&key);
    let made = person
        .ok(
            "/api/schedules",
            json!({"workspaceId": ws, "cron": "* * * * * *", "timezone": "Europe/Paris",
                   "maxFailures": 2,
                   "task": {"title": "Nightly check", "description": "Run the checks.",
                            "maxAttempts": 1, "priority": 3}}),
        )
        .await;
    let id = made["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("sch-"), "{made}");
    assert_eq!(made["paused"], false);
    assert_eq!(made["createdBy"], made["createdBy"].as_str().unwrap());
    let next: DateTime<Utc> = made["nextRunAt"].as_str().unwrap().parse().unwrap();
    assert!(next > Utc::now() - chrono::Duration::seconds(2));

    // The first run makes a task; while it is pending, later runs skip.
    let path = format!("/api/schedules/{id}");
    let ran = until(&admin, &path, |s| {
        s["runs"] == 1 && s["skipped"].as_i64() >= Some(2)
    })
    .await;
    let first = ran["lastTaskId"].as_str().unwrap().to_owned();
    let (_, task) = admin.get(&format!("/api/tasks/{first}")).await;
    assert_eq!(task["title"], "Nightly check");
    assert_eq!(task["priority"], 3);
    assert_eq!(task["status"], "pending");
    let source = task["sourceId"].as_str().unwrap();
    let (_, src) = admin.get(&format!("/api/sources/{source}")).await;
    assert_eq!(src["type"], "schedule");
    assert_eq!(src["externalId"], id.as_str());
    let (_, listed) = admin.get(&format!("/api/tasks?sourceId={source}")).await;
    assert_eq!(
        listed["tasks"].as_array().unwrap().len(),
        1,
        "one task while skipping"
    );

    // Its task fails: the next run makes another; that fails too: the schedule pauses.
    fail(&person, &first).await;
    let ran = until(&admin, &path, |s| s["runs"] == 2).await;
    assert_eq!(ran["consecutiveFailures"], 1);
    let second = ran["lastTaskId"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    fail(&person, &second).await;
    let paused = until(&admin, &path, |s| s["paused"] == true).await;
    assert_eq!(paused["runs"], 2);
    assert_eq!(paused["nextRunAt"], Value::Null);
    let why = paused["pausedReason"].as_str().unwrap();
    assert!(why.contains("2 failed tasks in a row"), "{why}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, still) = admin.get(&path).await;
    assert_eq!(still["runs"], 2, "a paused schedule does not run");

    // Resumed, it runs again, its failures forgiven; paused by a person, it says none.
    let resumed = person
        .ok(&format!("/api/schedules/{id}/resume"), json!({}))
        .await;
    assert_eq!(resumed["paused"], false);
    assert_eq!(resumed["consecutiveFailures"], 0);
    assert!(resumed["nextRunAt"].is_string());
    until(&admin, &path, |s| s["runs"] == 3).await;
    let by_hand = person
        .ok(&format!("/api/schedules/{id}/pause"), json!({}))
        .await;
    assert_eq!(by_hand["paused"], true);
    assert_eq!(by_hand["pausedReason"], Value::Null);

    // Listed for those who may see its workspace; deleted, its tasks stay.
    let (_, all) = person.get("/api/schedules").await;
    assert_eq!(all["schedules"].as_array().unwrap().len(), 1);
    let (status, _) = person.call(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    let (status, _) = admin.get(&path).await;
    assert_eq!(status, 404);
    let (_, listed) = admin.get(&format!("/api/tasks?sourceId={source}")).await;
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 3);
}

async fn schedules_refuse_bad_input_and_follow_grants(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    let other = admin.workspace("gadgets").await;
    let (_, claimer) = admin
        .account(json!({"type": "service", "name": "ci"}), &ws, true, false)
        .await;
    let body = |extra: Value| {
        let mut body = json!({"workspaceId": ws, "cron": "0 9 * * 1-5", "task": {"title": "t"}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, status, says) in [
        (json!({"cron": "61 * * * *"}), 400, "cannot be read"),
        (json!({"cron": "0 9 * *"}), 400, "5 fields"),
        (json!({"cron": "0 0 30 2 *"}), 400, "never comes"),
        (json!({"timezone": "Mars/Olympus"}), 400, "IANA"),
        (json!({"maxFailures": 0}), 400, "maxFailures"),
        (json!({"task": {"title": " "}}), 400, "title"),
        (
            json!({"task": {"title": "t", "baseBranch": "no..dots"}}),
            400,
            "baseBranch",
        ),
        (json!({"workspaceId": "ws-nope"}), 404, "ws-nope"),
    ] {
        let (code, answer) = admin.post("/api/schedules", body(extra.clone())).await;
        assert_eq!(code, status, "{extra}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{extra}: {answer}"
        );
    }
    // Making one takes canCreate; seeing them, a grant on the workspace.
    let ci = server.client(&claimer);
    let (code, answer) = ci.post("/api/schedules", body(json!({}))).await;
    assert_eq!(code, 403, "{answer}");
    let elsewhere = admin
        .ok("/api/schedules", body(json!({"workspaceId": other})))
        .await;
    let (code, _) = ci
        .get(&format!(
            "/api/schedules/{}",
            elsewhere["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(code, 403);
    let (_, seen) = ci.get("/api/schedules").await;
    assert_eq!(seen["schedules"], json!([]));
    let (_, all) = admin.get("/api/schedules").await;
    assert_eq!(all["schedules"].as_array().unwrap().len(), 1);
    let (code, _) = ci
        .post(
            &format!("/api/schedules/{}/pause", elsewhere["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(code, 403);
}

async fn a_trigger_fires_with_its_own_token_only(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    let made = admin
        .ok(
            "/api/triggers",
            json!({"workspaceId": ws, "name": "alerts",
                   "task": {"title": "Fix {{payload.alert.name}} on {{payload.alert.host}}",
                            "description": "Alert: {{payload.alert}}"}}),
        )
        .await;
    let id = made["id"].as_str().unwrap().to_owned();
    let token = made["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("buildd_trigger_"), "{made}");
    let (_, shown) = admin.get(&format!("/api/triggers/{id}")).await;
    assert!(
        shown.get("token").is_none(),
        "the token is shown once: {shown}"
    );

    let fire = |token: &str, body: &str| {
        reqwest::Client::new()
            .post(format!("{}/api/triggers/{id}/fire", server.url))
            .bearer_auth(token)
            .body(body.to_owned())
    };
    let answer = fire(&token, r#"{"alert": {"name": "disk full", "host": "db1"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let task: Value = answer.json().await.unwrap();
    assert_eq!(task["title"], "Fix disk full on db1");
    assert_eq!(
        task["description"],
        r#"Alert: {"name":"disk full","host":"db1"}"#
    );
    assert_eq!(task["status"], "pending");
    let (_, src) = admin
        .get(&format!(
            "/api/sources/{}",
            task["sourceId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        (src["type"].as_str(), src["externalId"].as_str()),
        (Some("trigger"), Some(id.as_str()))
    );
    let (_, shown) = admin.get(&format!("/api/triggers/{id}")).await;
    assert_eq!(shown["fired"], 1);

    // Without a body, placeholders are empty; a body that is not JSON is refused.
    let status = |r: reqwest::Response| r.status().as_u16();
    let bare: Value = fire(&token, "").send().await.unwrap().json().await.unwrap();
    assert_eq!(bare["title"], "Fix  on");
    assert_eq!(status(fire(&token, "{not json").send().await.unwrap()), 400);
    // The token does nothing else, and nothing else fires the trigger.
    let (code, body) = server.client(&token).get("/api/tasks").await;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("/fire"));
    assert_eq!(status(fire(common::ADMIN, "{}").send().await.unwrap()), 403);
    assert_eq!(
        status(fire("buildd_trigger_nope", "{}").send().await.unwrap()),
        401
    );
    let other = admin
        .ok(
            "/api/triggers",
            json!({"workspaceId": ws, "name": "other", "task": {"title": "Other"}}),
        )
        .await;
    let other_token = other["token"].as_str().unwrap();
    assert_eq!(status(fire(other_token, "{}").send().await.unwrap()), 403);
    // A title that the body leaves empty is refused, and makes nothing.
    let titled = admin
        .ok(
            "/api/triggers",
            json!({"workspaceId": ws, "name": "titled", "task": {"title": "{{payload.title}}"}}),
        )
        .await;
    let fire_titled = |body: &str| {
        reqwest::Client::new()
            .post(format!(
                "{}/api/triggers/{}/fire",
                server.url,
                titled["id"].as_str().unwrap()
            ))
            .bearer_auth(titled["token"].as_str().unwrap())
            .body(body.to_owned())
            .send()
    };
    let refused = fire_titled("{}").await.unwrap();
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().await.unwrap();
    assert!(
        refused["error"].as_str().unwrap().contains("title"),
        "{refused}"
    );
    assert_eq!(
        fire_titled(r#"{"title": "Deploy"}"#)
            .await
            .unwrap()
            .status(),
        201
    );
    let (_, made_tasks) = admin.get("/api/tasks").await;
    assert_eq!(made_tasks["tasks"].as_array().unwrap().len(), 3);

    // Deleted, its token opens nothing.
    let (code, _) = admin
        .call(
            reqwest::Method::DELETE,
            &format!("/api/triggers/{id}"),
            None,
        )
        .await;
    assert_eq!(code, 204);
    assert_eq!(status(fire(&token, "{}").send().await.unwrap()), 401);
    let (_, list) = admin.get("/api/triggers").await;
    assert_eq!(list["triggers"].as_array().unwrap().len(), 2);
}

/// Two servers on one Postgres: every due run makes its task once.
#[tokio::test(flavor = "multi_thread")]
async fn two_servers_on_one_postgres_run_each_due_run_once() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(&url, dir.path(), &[]);
    let second = Server::start(&url, dir.path(), &[]);
    let admin = first.admin();
    let ws = admin.workspace("widgets").await;
    let made = admin
        .ok(
            "/api/schedules",
            json!({"workspaceId": ws, "cron": "* * * * * *", "task": {"title": "Tick"}}),
        )
        .await;
    let id = made["id"].as_str().unwrap().to_owned();
    // Each server's scheduler hears of a schedule made or resumed through it at once
    // (of others' within 30 s): through both, both race for every run.
    let other = second.admin();
    other
        .ok(&format!("/api/schedules/{id}/pause"), json!({}))
        .await;
    other
        .ok(&format!("/api/schedules/{id}/resume"), json!({}))
        .await;
    // Each run's task is cancelled at once, so that no run skips for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < deadline {
        let (_, pending) = admin.get("/api/tasks?status=pending").await;
        for task in pending["tasks"].as_array().unwrap() {
            let cancel = format!("/api/tasks/{}/cancel", task["id"].as_str().unwrap());
            admin.post(&cancel, json!({})).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second
        .admin()
        .ok(&format!("/api/schedules/{id}/pause"), json!({}))
        .await;
    let (_, schedule) = admin.get(&format!("/api/schedules/{id}")).await;
    let (_, tasks) = admin.get("/api/tasks?limit=1000").await;
    let mut created: Vec<DateTime<Utc>> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["createdAt"].as_str().unwrap().parse().unwrap())
        .collect();
    created.sort();
    let runs = schedule["runs"].as_i64().unwrap();
    assert!(runs >= 5, "{schedule}");
    assert_eq!(created.len() as i64, runs, "{schedule}");
    for pair in created.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > chrono::Duration::milliseconds(500),
            "two tasks {gap} apart: a run made twice"
        );
    }
    let ran_on = |server: &Server| server.log.lock().unwrap().matches("schedule ran").count();
    let (by_first, by_second) = (ran_on(&first), ran_on(&second));
    assert_eq!((by_first + by_second) as i64, runs);
    println!("runs made by each server: {by_first} and {by_second}");
}

/// `buildd schedule …` from the terminal.
#[tokio::test(flavor = "multi_thread")]
async fn the_schedule_commands_make_list_pause_resume_and_delete() {
    let server = Server::sqlite(&[]);
    let ws = server.admin().workspace("widgets").await;
    let buildd = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_buildd"))
            .args(args)
            .env("BUILDD_SERVER", &server.url)
            .env("BUILDD_API_KEY", common::ADMIN)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = buildd(&[
        "schedule",
        "create",
        "--workspace",
        &ws,
        "--cron",
        "0 9 * * 1-5",
        "--timezone",
        "Europe/Paris",
        "--title",
        "Standup notes",
        "--json",
    ]);
    assert!(ok, "{err}");
    let made: Value = serde_json::from_str(&out).unwrap();
    let id = made["id"].as_str().unwrap();
    assert_eq!(made["timezone"], "Europe/Paris");
    let (ok, out, _) = buildd(&["schedule", "list"]);
    assert!(ok);
    assert!(
        out.contains(id) && out.contains("0 9 * * 1-5 Europe/Paris"),
        "{out}"
    );
    let (ok, out, _) = buildd(&["schedule", "pause", id]);
    assert!(ok && out.contains("Paused"), "{out}");
    let (ok, out, _) = buildd(&["schedule", "resume", id]);
    assert!(ok && out.contains("next run"), "{out}");
    let (ok, _, _) = buildd(&["schedule", "delete", id]);
    assert!(ok);
    let (ok, _, err) = buildd(&["schedule", "pause", id]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not found"), "{err}");
    let (ok, _, err) = buildd(&[
        "schedule",
        "create",
        "--workspace",
        &ws,
        "--cron",
        "nope",
        "--title",
        "t",
    ]);
    assert!(!ok && err.contains("5 fields"), "{err}");
}
