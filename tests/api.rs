//! End-to-end tests of `buildd serve` through HTTP: the real binary on a real SQLite
//! file (and Postgres where noted).

mod common;

use std::time::{Duration, Instant};

use common::{Api, Server};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The original README's flow, with its own request bodies: accounts, a workspace
/// grant, a task, a claim, progress, messages and completion.
#[tokio::test]
async fn the_original_readme_flow_works() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    assert_eq!(
        admin.get("/healthz").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );

    let ws = admin.workspace("buildd").await;
    let (status, user) = admin
        .post(
            "/api/accounts",
            json!({
                "type": "user", "name": "Max Local Agent", "authType": "oauth",
                "oauthToken": "oauth-secret-123", "maxConcurrentSessions": 1, "maxConcurrentWorkers": 3
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(user["id"].as_str().unwrap().starts_with("acc-"));
    assert!(user["apiKey"].as_str().unwrap().starts_with("buildd_user_"));
    assert_eq!(user["maxConcurrentSessions"], 1);
    assert!(user["warnings"][0].as_str().unwrap().contains("oauthToken"));

    let (status, service) = admin
        .post(
            "/api/accounts",
            json!({
                "type": "service", "name": "Prod Worker", "authType": "api",
                "anthropicApiKey": "sk-ant-xxxxx", "maxCostPerDay": 500, "maxConcurrentWorkers": 10
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(service["maxCostPerDay"], 500.0);
    assert!(
        service["warnings"][0]
            .as_str()
            .unwrap()
            .contains("anthropicApiKey")
    );

    let (status, action) = admin
        .post(
            "/api/accounts",
            json!({"type": "action", "name": "GitHub CI Bot", "githubId": "my-org/my-repo"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(action["githubRepo"], "my-org/my-repo");
    assert_eq!(action["authType"], "api");
    assert!(action.get("warnings").is_none());

    let user_id = user["id"].as_str().unwrap();
    let (status, grant) = admin
        .post(
            &format!("/api/accounts/{user_id}/workspaces"),
            json!({"workspaceId": ws, "canClaim": true, "canCreate": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(grant["canClaim"], true);

    let agent = server.client(user["apiKey"].as_str().unwrap());
    let (_, me) = agent.get("/api/me").await;
    assert_eq!(me["id"], user_id);
    let (_, visible) = agent.get("/api/workspaces").await;
    assert_eq!(visible["workspaces"].as_array().unwrap().len(), 1);

    let low = admin
        .task(&ws, json!({"title": "low", "priority": 1}))
        .await;
    let high = admin
        .task(
            &ws,
            json!({"title": "high", "priority": 9, "description": "do it"}),
        )
        .await;
    assert_eq!(high["status"], "pending");
    assert_eq!(high["runnerPreference"], "any");

    // Highest priority first.
    let (status, claimed) = agent.post("/api/workers/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let workers = claimed["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1);
    let worker = &workers[0];
    assert_eq!(worker["task"]["id"], high["id"]);
    assert_eq!(worker["task"]["status"], "assigned");
    assert_eq!(worker["task"]["attempts"], 1);
    assert_eq!(worker["status"], "idle");
    let wid = worker["id"].as_str().unwrap();
    assert!(wid.starts_with("wrk-"));

    agent.move_worker(wid, &["starting", "running"]).await;
    let (_, task) = agent
        .get(&format!("/api/tasks/{}", high["id"].as_str().unwrap()))
        .await;
    assert_eq!(task["status"], "running");

    let (code, appended) = agent
        .post(
            &format!("/api/workers/{wid}/messages"),
            json!({"messages": [{"type": "assistant", "text": "one"}, {"type": "assistant", "text": "two"}]}),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(appended["lastSeq"], 2);
    let (_, third) = agent
        .post(
            &format!("/api/workers/{wid}/messages"),
            json!({"messages": ["three"]}),
        )
        .await;
    assert_eq!(third["lastSeq"], 3);
    let (_, read) = admin
        .get(&format!("/api/workers/{wid}/messages?after=1"))
        .await;
    let read = read["messages"].as_array().unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0]["seq"], 2);
    assert_eq!(read[0]["message"]["text"], "two");
    assert_eq!(read[1]["message"], "three");

    let (_, beat) = agent
        .post(&format!("/api/workers/{wid}/heartbeat"), json!({}))
        .await;
    assert_eq!(beat, json!({"cancel": false, "action": "none"}));

    let (code, done) = agent
        .patch(
            &format!("/api/workers/{wid}"),
            json!({
                "status": "completed", "costUsd": 0.42, "turns": 7, "sessionId": "sess-1",
                "branch": format!("buildd/{}", high["id"].as_str().unwrap()), "commitSha": "abc123",
                "result": {"summary": "done"}
            }),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["costUsd"], 0.42);
    assert!(done["finishedAt"].is_string());

    let (_, task) = admin
        .get(&format!("/api/tasks/{}", high["id"].as_str().unwrap()))
        .await;
    assert_eq!(task["status"], "completed");
    assert_eq!(task["result"], json!({"summary": "done"}));
    assert_eq!(task["workerId"], wid);
    assert!(task["completedAt"].is_string());

    let (_, artifacts) = agent
        .get(&format!(
            "/api/tasks/{}/artifacts",
            high["id"].as_str().unwrap()
        ))
        .await;
    let kinds: Vec<&str> = artifacts["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["branch", "commit"]);
    assert_eq!(artifacts["artifacts"][1]["value"], "abc123");
    assert_eq!(artifacts["artifacts"][1]["workerId"], wid);

    let comments_path = format!("/api/tasks/{}/comments", high["id"].as_str().unwrap());
    let (status, note) = agent
        .post(
            &comments_path,
            json!({"body": "Fixed by retrying the login."}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(note["author"], user_id);
    admin.ok(&comments_path, json!({"body": "Thanks!"})).await;
    let (_, comments) = agent.get(&comments_path).await;
    let authors: Vec<&str> = comments["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["author"].as_str().unwrap())
        .collect();
    assert_eq!(authors, [user_id, "admin"]);

    // Tasks from one GitHub issue share its source.
    let issue = json!({"type": "github_issue", "externalId": "my-org/my-repo#12", "url": "https://github.com/my-org/my-repo/issues/12"});
    let from_issue = admin
        .task(&ws, json!({"title": "issue 12", "source": issue}))
        .await;
    let again = admin
        .task(&ws, json!({"title": "issue 12, again", "source": issue}))
        .await;
    let source_id = from_issue["sourceId"].as_str().unwrap();
    assert!(source_id.starts_with("src-"));
    assert_eq!(again["sourceId"], source_id);
    let (_, source) = agent.get(&format!("/api/sources/{source_id}")).await;
    assert_eq!(source["type"], "github_issue");
    assert_eq!(source["externalId"], "my-org/my-repo#12");
    let (_, of_issue) = agent.get(&format!("/api/tasks?sourceId={source_id}")).await;
    assert_eq!(of_issue["tasks"].as_array().unwrap().len(), 2);
    for t in [&from_issue, &again] {
        admin
            .ok(
                &format!("/api/tasks/{}/cancel", t["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
    }
    assert_eq!(high["sourceId"], Value::Null);

    let (_, listed) = admin
        .get(&format!("/api/tasks?workspaceId={ws}&status=pending"))
        .await;
    let listed = listed["tasks"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], low["id"]);

    let (_, workers) = admin
        .get(&format!(
            "/api/workers?taskId={}",
            high["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(workers["workers"][0]["commitSha"], "abc123");

    // The finished worker is frozen.
    let (code, err) = agent
        .patch(&format!("/api/workers/{wid}"), json!({"status": "running"}))
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(err["error"].as_str().unwrap().contains("completed"));
}

#[tokio::test]
async fn tokens_are_checked_on_every_endpoint() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, _, key) = admin.workspace_with_claimer().await;
    let account = server.client(&key);
    let anonymous = server.client("");
    let stranger = server.client("buildd_service_not-a-real-key");

    for (method, path) in [
        (Method::GET, "/api/me"),
        (Method::GET, "/api/accounts"),
        (Method::POST, "/api/accounts"),
        (Method::GET, "/api/workspaces"),
        (Method::POST, "/api/tasks"),
        (Method::GET, "/api/tasks"),
        (Method::POST, "/api/workers/claim"),
        (Method::GET, "/api/workers"),
    ] {
        for client in [&anonymous, &stranger] {
            let (status, body) = client.call(method.clone(), path, Some(json!({}))).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert!(body["error"].is_string());
        }
    }
    // Known but not allowed.
    assert_eq!(account.get("/api/accounts").await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        account
            .post("/api/workspaces", json!({"name": "x"}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, _) = account
        .post("/api/tasks", json!({"workspaceId": ws, "title": "t"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no canCreate grant");
    assert_eq!(
        admin.post("/api/workers/claim", json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(admin.get("/api/me").await.1, json!({"admin": true}));
}

#[tokio::test]
async fn accounts_only_see_their_workspaces() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let mine = admin.workspace("mine").await;
    let theirs = admin.workspace("theirs").await;
    let (_, key) = admin
        .account(json!({"type": "user", "name": "u"}), &mine, true, true)
        .await;
    let (_, other_key) = admin
        .account(json!({"type": "user", "name": "o"}), &theirs, true, true)
        .await;
    let me = server.client(&key);
    let other = server.client(&other_key);

    let hidden = admin.task(&theirs, json!({"title": "secret"})).await;
    let hidden_id = hidden["id"].as_str().unwrap();
    me.task(&mine, json!({"title": "mine"})).await;

    let (_, tasks) = me.get("/api/tasks").await;
    let titles: Vec<&str> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["mine"]);
    assert_eq!(
        me.get(&format!("/api/tasks/{hidden_id}")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        me.post(&format!("/api/tasks/{hidden_id}/cancel"), json!({}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        me.get(&format!("/api/workspaces/{theirs}")).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, _) = me
        .post("/api/workers/claim", json!({"workspaceId": theirs}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The other account's worker cannot be driven by this one.
    let wid = other.claim_one().await;
    assert_eq!(
        me.patch(
            &format!("/api/workers/{wid}"),
            json!({"status": "starting"})
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        me.post(&format!("/api/workers/{wid}/heartbeat"), json!({}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        me.get(&format!("/api/workers/{wid}")).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, workers) = me.get("/api/workers").await;
    assert_eq!(workers["workers"].as_array().unwrap().len(), 0);
}

/// Every kind of bad input gets its 4xx with a JSON error, and changes nothing.
#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let (_, key) = admin
        .account(json!({"type": "service", "name": "s"}), &ws, true, true)
        .await;
    let agent = server.client(&key);
    let task = admin.task(&ws, json!({})).await;
    let tid = task["id"].as_str().unwrap().to_owned();
    let wid = agent.claim_one().await;
    let before = snapshot(&admin).await;

    let raw = |body: &'static str| Some(body);
    let cases: Vec<(Method, String, &Api, Option<&str>, StatusCode)> = vec![
        (
            Method::POST,
            "/api/tasks".into(),
            &admin,
            raw("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks".into(),
            &admin,
            raw("[]"),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks".into(),
            &admin,
            raw(r#"{"workspaceId": 5, "title": "t"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks".into(),
            &admin,
            raw(r#"{"workspaceId": "ws-x"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks".into(),
            &admin,
            Some(Box::leak(
                format!(r#"{{"workspaceId": "{ws}", "title": "  "}}"#).into_boxed_str(),
            )),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks".into(),
            &admin,
            Some(Box::leak(
                format!(r#"{{"workspaceId": "{ws}", "title": "t", "runnerPreference": "robot"}}"#)
                    .into_boxed_str(),
            )),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks".into(),
            &admin,
            Some(Box::leak(
                format!(r#"{{"workspaceId": "{ws}", "title": "t", "priority": 99999999999}}"#)
                    .into_boxed_str(),
            )),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks".into(),
            &admin,
            Some(Box::leak(
                format!(r#"{{"workspaceId": "{ws}", "title": "t", "maxAttempts": 0}}"#)
                    .into_boxed_str(),
            )),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks".into(),
            &admin,
            raw(r#"{"workspaceId": "ws-nope", "title": "t"}"#),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/accounts".into(),
            &admin,
            raw(r#"{"type": "robot", "name": "r"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/accounts".into(),
            &admin,
            raw(r#"{"type": "user"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/accounts".into(),
            &admin,
            raw(r#"{"type": "user", "name": "u", "maxConcurrentWorkers": -1}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/accounts".into(),
            &admin,
            raw(r#"{"type": "user", "name": "u", "maxCostPerDay": "lots"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/accounts".into(),
            &admin,
            raw(r#"{"type": "action", "name": "a", "authType": "oauth"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/accounts".into(),
            &admin,
            raw(r#"{"type": "action", "name": "a", "githubRepo": "no-slash"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/accounts/acc-nope/workspaces".into(),
            &admin,
            Some(Box::leak(
                format!(r#"{{"workspaceId": "{ws}"}}"#).into_boxed_str(),
            )),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/workspaces".into(),
            &admin,
            raw(r#"{"name": ""}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/tasks?status=bogus".into(),
            &admin,
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/tasks?limit=0".into(),
            &admin,
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/tasks?limit=-3".into(),
            &admin,
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/tasks/task-nope".into(),
            &admin,
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/workers/wrk-nope".into(),
            &admin,
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/nowhere".into(),
            &admin,
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            "/api/tasks".into(),
            &admin,
            raw("{}"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::POST,
            "/api/workers/claim".into(),
            &agent,
            raw(r#"{"maxTasks": 0}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/workers/claim".into(),
            &agent,
            raw(r#"{"wait": 31}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/workers/claim".into(),
            &agent,
            raw(r#"{"workspaceId": "ws-nope"}"#),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PATCH,
            format!("/api/workers/{wid}"),
            &agent,
            raw(r#"{"status": "completed"}"#),
            StatusCode::CONFLICT,
        ),
        (
            Method::PATCH,
            format!("/api/workers/{wid}"),
            &agent,
            raw(r#"{"status": "exploded"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PATCH,
            format!("/api/workers/{wid}"),
            &agent,
            raw(r#"{"costUsd": -1}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PATCH,
            format!("/api/workers/{wid}"),
            &agent,
            raw(r#"{"turns": "many"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PATCH,
            format!("/api/workers/{wid}"),
            &agent,
            raw(r#"{"colour": "red"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PATCH,
            "/api/workers/wrk-nope".into(),
            &agent,
            raw(r#"{"status": "starting"}"#),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            format!("/api/workers/{wid}/messages"),
            &agent,
            raw(r#"{"messages": []}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("/api/workers/{wid}/messages"),
            &agent,
            raw(r#"{"messages": "hi"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("/api/workers/{wid}/start"),
            &admin,
            raw("{}"),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            format!("/api/tasks/{tid}/reply"),
            &admin,
            raw(r#"{"message": "hello"}"#),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            format!("/api/tasks/{tid}/reply"),
            &admin,
            raw(r#"{"message": 3}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks".into(),
            &admin,
            Some(Box::leak(
                format!(
                    r#"{{"workspaceId": "{ws}", "title": "t", "source": {{"type": "Not A Type"}}}}"#
                )
                .into_boxed_str(),
            )),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks".into(),
            &admin,
            Some(Box::leak(
                format!(
                    r#"{{"workspaceId": "{ws}", "title": "t", "source": {{"externalId": "x"}}}}"#
                )
                .into_boxed_str(),
            )),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/sources/src-nope".into(),
            &admin,
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            format!("/api/tasks/{tid}/comments"),
            &admin,
            raw(r#"{"body": ""}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks/task-nope/comments".into(),
            &admin,
            raw(r#"{"body": "hi"}"#),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PATCH,
            format!("/api/workers/{wid}"),
            &agent,
            raw(r#"{"artifacts": [{"kind": "photo", "value": "x"}]}"#),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, client, body, expected) in cases {
        let mut req = client
            .http
            .request(method.clone(), format!("{}{path}", client.base))
            .bearer_auth(&client.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, expected, "{method} {path} {body:?} → {text}");
        let parsed: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert!(
            parsed["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {text}"
        );
    }

    // An oversized body is refused with 413.
    let huge = "x".repeat(2 * 1024 * 1024);
    let (status, body) = admin
        .post(
            "/api/tasks",
            json!({"workspaceId": ws, "title": "t", "description": huge}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"].as_str().unwrap().contains("too large"));

    // The server may close a connection whose body it refused to read, so look with a
    // new client rather than one that may still hold that connection.
    assert_eq!(
        snapshot(&server.admin()).await,
        before,
        "bad input changed stored data"
    );
}

/// Everything the API shows, to compare before and after.
async fn snapshot(admin: &Api) -> Value {
    let mut all = json!({});
    for path in [
        "/api/accounts",
        "/api/workspaces",
        "/api/tasks",
        "/api/workers",
    ] {
        all[path] = admin.get(path).await.1;
    }
    for task in all["/api/tasks"]["tasks"].clone().as_array().unwrap() {
        let id = task["id"].as_str().unwrap();
        for what in ["artifacts", "comments"] {
            let path = format!("/api/tasks/{id}/{what}");
            all[path.as_str()] = admin.get(&path).await.1;
        }
    }
    all
}

#[tokio::test]
async fn no_secret_reaches_the_database_file() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let claude_key = "sk-ant-api03-SUPERSECRETCLAUDEKEY";
    let oauth = "oauth-SUPERSECRETSEATTOKEN";
    let created = admin
        .ok("/api/accounts", json!({"type": "user", "name": "u", "anthropicApiKey": claude_key, "oauthToken": oauth}))
        .await;
    let key = created["apiKey"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap();
    admin
        .ok(
            &format!("/api/accounts/{id}/workspaces"),
            json!({"workspaceId": ws, "canClaim": true}),
        )
        .await;
    // The key works, so the server does know it, by its hash.
    assert_eq!(server.client(&key).get("/api/me").await.0, StatusCode::OK);

    let secret_part = key.rsplit('_').next().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&server.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("buildd.db")
        {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for secret in [secret_part, claude_key, oauth] {
            assert!(
                !text.contains(secret),
                "{secret} found in {}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 1, "no database file was found to check");
}

/// A worker that stops heartbeating loses its task after the lease; attempts are
/// counted, and the task fails once they are spent.
#[tokio::test]
async fn lost_workers_give_their_tasks_back() {
    let server = Server::sqlite(&["--lease-ttl", "1"]);
    let admin = server.admin();
    let (ws, _, key) = admin.workspace_with_claimer().await;
    let agent = server.client(&key);
    let task = admin.task(&ws, json!({"maxAttempts": 2})).await;
    let tid = task["id"].as_str().unwrap();

    let first = agent.ok("/api/workers/claim", json!({})).await;
    let first_worker = first["workers"][0]["id"].as_str().unwrap().to_owned();
    let task_now = wait_for_status(&admin, tid, "pending").await;
    assert_eq!(task_now["attempts"], 1);
    assert_eq!(task_now["workerId"], Value::Null);
    let (_, lost) = admin.get(&format!("/api/workers/{first_worker}")).await;
    assert_eq!(lost["status"], "error");
    assert!(lost["error"].as_str().unwrap().contains("lease expired"));
    // The lost agent coming back cannot report any more.
    let (status, _) = agent
        .patch(
            &format!("/api/workers/{first_worker}"),
            json!({"status": "starting"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // A live worker keeps its lease by heartbeating.
    let second = agent.ok("/api/workers/claim", json!({"wait": 5})).await;
    let second_worker = second["workers"][0]["id"].as_str().unwrap().to_owned();
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        let (status, beat) = agent
            .post(
                &format!("/api/workers/{second_worker}/heartbeat"),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{beat}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        admin.get(&format!("/api/tasks/{tid}")).await.1["status"],
        "assigned"
    );

    // Then it goes silent: the second attempt was the last.
    let task_now = wait_for_status(&admin, tid, "failed").await;
    assert_eq!(task_now["attempts"], 2);
    assert_eq!(
        agent.post("/api/workers/claim", json!({})).await.1["workers"],
        json!([])
    );
}

async fn wait_for_status(admin: &Api, task_id: &str, status: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, task) = admin.get(&format!("/api/tasks/{task_id}")).await;
        if task["status"] == status {
            return task;
        }
        assert!(Instant::now() < until, "task never became {status}: {task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cancel, pause and start reach the agent through its heartbeat; a question waits
/// for a reply that resumes the same worker.
#[tokio::test]
async fn people_steer_running_work() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let (_, key) = admin
        .account(
            json!({"type": "user", "name": "u", "maxConcurrentWorkers": 5}),
            &ws,
            true,
            true,
        )
        .await;
    let agent = server.client(&key);
    admin.task(&ws, json!({"title": "one"})).await;
    admin.task(&ws, json!({"title": "two"})).await;
    let claimed = agent.ok("/api/workers/claim", json!({"maxTasks": 5})).await;
    let workers = claimed["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let (w1, t1) = (
        workers[0]["id"].as_str().unwrap(),
        workers[0]["taskId"].as_str().unwrap(),
    );
    let (w2, t2) = (
        workers[1]["id"].as_str().unwrap(),
        workers[1]["taskId"].as_str().unwrap(),
    );
    for w in [w1, w2] {
        for s in ["starting", "running"] {
            assert_eq!(
                agent
                    .patch(&format!("/api/workers/{w}"), json!({"status": s}))
                    .await
                    .0,
                StatusCode::OK
            );
        }
    }

    // Pause and start.
    let (status, paused) = admin
        .post(&format!("/api/workers/{w1}/pause"), json!({}))
        .await;
    assert_eq!(
        (status, paused["status"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    assert_eq!(
        agent
            .post(&format!("/api/workers/{w1}/heartbeat"), json!({}))
            .await
            .1,
        json!({"cancel": true, "action": "pause"})
    );
    assert_eq!(
        admin
            .post(&format!("/api/workers/{w1}/pause"), json!({}))
            .await
            .0,
        StatusCode::CONFLICT
    );
    let (_, started) = agent
        .post(&format!("/api/workers/{w1}/start"), json!({}))
        .await;
    assert_eq!(started["status"], "starting");
    assert_eq!(
        agent
            .post(&format!("/api/workers/{w1}/heartbeat"), json!({}))
            .await
            .1,
        json!({"cancel": false, "action": "none"})
    );
    agent
        .patch(&format!("/api/workers/{w1}"), json!({"status": "running"}))
        .await;

    // A question and its answer.
    let (_, asking) = agent
        .patch(
            &format!("/api/workers/{w1}"),
            json!({"status": "waiting_input", "question": "Which database?"}),
        )
        .await;
    assert_eq!(asking["question"], "Which database?");
    assert_eq!(
        admin.get(&format!("/api/tasks/{t1}")).await.1["status"],
        "waiting_input"
    );
    let (status, task) = admin
        .post(
            &format!("/api/tasks/{t1}/reply"),
            json!({"message": "Postgres"}),
        )
        .await;
    assert_eq!(
        (status, task["status"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    let (_, beat) = agent
        .post(&format!("/api/workers/{w1}/heartbeat"), json!({}))
        .await;
    assert_eq!(
        beat,
        json!({"cancel": false, "action": "none", "reply": "Postgres"})
    );
    let (_, beat) = agent
        .post(&format!("/api/workers/{w1}/heartbeat"), json!({}))
        .await;
    assert_eq!(
        beat,
        json!({"cancel": false, "action": "none"}),
        "a reply is delivered once"
    );
    let (_, log) = admin.get(&format!("/api/workers/{w1}/messages")).await;
    assert_eq!(log["messages"][0]["message"]["text"], "Postgres");

    // Cancel.
    let (status, cancelled) = admin
        .post(&format!("/api/tasks/{t2}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    assert_eq!(
        agent
            .post(&format!("/api/workers/{w2}/heartbeat"), json!({}))
            .await
            .1,
        json!({"cancel": true, "action": "cancel"})
    );
    assert_eq!(
        admin
            .post(&format!("/api/tasks/{t2}/cancel"), json!({}))
            .await
            .0,
        StatusCode::CONFLICT
    );
    let (_, stopped) = agent
        .patch(
            &format!("/api/workers/{w2}"),
            json!({"status": "error", "error": "cancelled"}),
        )
        .await;
    assert_eq!(stopped["status"], "error");
    assert_eq!(
        admin.get(&format!("/api/tasks/{t2}")).await.1["status"],
        "cancelled",
        "cancel is final"
    );
}

/// A waiting claim returns as soon as a fitting task is created.
#[tokio::test]
async fn a_waiting_claim_wakes_for_a_new_task() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, _, key) = admin.workspace_with_claimer().await;
    let agent = server.client(&key);
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let claimed = agent.ok("/api/workers/claim", json!({"wait": 20})).await;
        (claimed, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let task = admin.task(&ws, json!({})).await;
    let (claimed, waited) = waiting.await.unwrap();
    assert_eq!(claimed["workers"][0]["taskId"], task["id"]);
    assert!(waited < Duration::from_secs(10), "claim waited {waited:?}");
}

/// SIGTERM ends the server cleanly with exit status 0.
#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let server = Server::sqlite(&[]);
    assert_eq!(server.admin().get("/healthz").await.0, StatusCode::OK);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.wait();
    assert_eq!(exit.code(), Some(0));
}

/// Files a run produced go up as raw bytes and come back the same, as downloads.
#[tokio::test]
async fn attachments_round_trip() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, _, key) = admin.workspace_with_claimer().await;
    let (_, other_key) = admin
        .account(json!({"type": "service", "name": "o"}), &ws, false, false)
        .await;
    let agent = server.client(&key);
    admin.task(&ws, json!({})).await;
    let wid = agent.claim_one().await;
    let upload = |token: &str, query: &str, content_type: &str, body: Vec<u8>| {
        server
            .client(token)
            .http
            .post(format!(
                "{}/api/workers/{wid}/attachments?{query}",
                server.url
            ))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    // Three MiB: more than the 1 MiB limit of JSON bodies, within the 10 MiB of files.
    let png: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let resp = upload(
        &key,
        "name=screen%20shot.png&messageSeq=2",
        "image/png",
        png.clone(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let meta: Value = resp.json().await.unwrap();
    assert!(meta["id"].as_str().unwrap().starts_with("att-"));
    assert_eq!(
        (meta["name"].as_str(), meta["size"].as_u64()),
        (Some("screen shot.png"), Some(png.len() as u64))
    );
    assert_eq!(meta["messageSeq"], 2);

    let (_, listed) = admin.get(&format!("/api/workers/{wid}/attachments")).await;
    assert_eq!(listed["attachments"][0]["id"], meta["id"]);
    let resp = admin
        .http
        .get(format!(
            "{}/api/attachments/{}",
            server.url,
            meta["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = resp.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"screen shot.png\""
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), png);

    for (token, query, content_type, body, expected) in [
        (
            key.as_str(),
            "name=..%2Fescape",
            "text/plain",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            key.as_str(),
            "name=a.txt",
            "not a type",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            key.as_str(),
            "name=a.txt",
            "text/plain",
            Vec::new(),
            StatusCode::BAD_REQUEST,
        ),
        (
            key.as_str(),
            "",
            "text/plain",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            key.as_str(),
            "name=big.bin",
            "application/octet-stream",
            vec![0; 11 * 1024 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            other_key.as_str(),
            "name=a.txt",
            "text/plain",
            b"x".to_vec(),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let resp = upload(token, query, content_type, body).await.unwrap();
        assert_eq!(resp.status(), expected, "{query} {content_type}");
        let error: Value = resp.json().await.unwrap();
        assert!(error["error"].is_string());
    }
    let (_, listed) = admin.get(&format!("/api/workers/{wid}/attachments")).await;
    assert_eq!(
        listed["attachments"].as_array().unwrap().len(),
        1,
        "refused uploads stored nothing"
    );
}

#[tokio::test]
async fn versions_meet_an_agent_too_old_is_refused_at_claim() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (_, _, key) = admin.workspace_with_claimer().await;
    let http = reqwest::Client::new();
    let claim = |agent: &'static str| {
        http.post(format!("{}/api/workers/claim", server.url))
            .bearer_auth(&key)
            .header("user-agent", agent)
            .json(&json!({}))
            .send()
    };

    let old = claim("buildd/0.0.1").await.unwrap();
    assert_eq!(old.status(), StatusCode::UPGRADE_REQUIRED);
    let body: Value = old.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("0.0.1 is too old")
            && error.contains(buildd::core::version::MIN_AGENT_VERSION),
        "{body}"
    );

    for agent in [buildd::core::version::USER_AGENT, "curl/8.5.0"] {
        let answer = claim(agent).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{agent}");
        assert_eq!(
            answer.headers()["x-buildd-version"],
            buildd::core::version::VERSION
        );
    }
    // Every answer names the server's version, errors and unknown routes too.
    let missing = http
        .get(format!("{}/api/nothing-here", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.headers()["x-buildd-version"],
        buildd::core::version::VERSION
    );
}
