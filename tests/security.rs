//! The security review, as tests: every endpoint needs a token, no account reaches
//! another workspace's resources, secrets never reach the database, the logs or an
//! error message, and text the database cannot hold is refused on both backends.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::agent::{Agent, Repo};
use common::{ADMIN, Api, Server};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Every operation of the running server's OpenAPI description, as (method, path
/// template, needs a token).
async fn operations(server: &Server) -> Vec<(Method, String, bool)> {
    let (status, spec) = server.client("").get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let mut all = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            // `security: [{}]` marks the operations open to anyone.
            let open = operation["security"] == json!([{}]);
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            all.push((method, path.clone(), !open));
        }
    }
    assert!(all.len() >= 30, "{all:?}");
    all
}

async fn raw(
    server: &Server,
    method: Method,
    path: &str,
    auth: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .body("{}");
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_endpoint_refuses_a_missing_or_unknown_token() {
    let server = Server::sqlite(&[]);
    let secret_guess = "buildd_service_not-a-key-but-looks-like-one";
    let mut protected = 0;
    for (method, template, needs_token) in operations(&server).await {
        let path = template
            .replace("{id}", "x-1")
            .replace("{workspace_id}", "ws-1");
        if path == "/api/github/webhook" {
            // Proved by GitHub's signature, not a token (tests/github.rs); without a
            // secret it is off.
            let (status, _) = raw(&server, method.clone(), &path, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {template}");
            continue;
        }
        if !needs_token {
            let (status, _) = raw(&server, method.clone(), &path, None).await;
            assert!(
                status == StatusCode::OK,
                "{method} {template} is open but answered {status}"
            );
            continue;
        }
        protected += 1;
        for auth in [
            None,
            Some(format!("Bearer {secret_guess}")),
            Some("Bearer ".to_owned()),
            Some(format!("Basic {ADMIN}")),
            Some(format!("Bearer {ADMIN}x")),
        ] {
            let (status, body) = raw(&server, method.clone(), &path, auth.as_deref()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {template} with {auth:?}: {body}"
            );
            let error = body["error"].as_str().expect("a JSON error");
            assert!(
                !error.contains(secret_guess) && !error.contains(ADMIN),
                "the error repeats the token: {error}"
            );
        }
    }
    assert!(protected >= 25, "only {protected} protected operations");
}

/// Everything one account owns in a workspace another account has no grant on.
struct Theirs {
    workspace: String,
    task: String,
    pending_task: String,
    worker: String,
    source: String,
    attachment: String,
    other_account: String,
    schedule: String,
    trigger: String,
    webhook: String,
    agent: String,
}

async fn their_workspace(server: &Server, admin: &Api) -> Theirs {
    let workspace = admin.workspace("theirs").await;
    let (other_account, key) = admin
        .account(
            json!({"type": "service", "name": "them"}),
            &workspace,
            true,
            true,
        )
        .await;
    let them = server.client(&key);
    let task = admin
        .task(
            &workspace,
            json!({"title": "their secret plan", "source": {"type": "github_issue", "externalId": "o/r#1"}}),
        )
        .await;
    let worker = them.claim_one().await;
    them.move_worker(&worker, &["starting", "running"]).await;
    them.ok(
        &format!("/api/workers/{worker}/messages"),
        json!({"messages": ["their output"]}),
    )
    .await;
    them.patch(
        &format!("/api/workers/{worker}"),
        json!({"branch": "buildd/theirs"}),
    )
    .await;
    let attachment = reqwest::Client::new()
        .post(format!(
            "{}/api/workers/{worker}/attachments?name=a.txt",
            server.url
        ))
        .bearer_auth(&key)
        .body("their file")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    admin
        .ok(
            &format!("/api/tasks/{}/comments", task["id"].as_str().unwrap()),
            json!({"body": "note"}),
        )
        .await;
    let pending_task = admin
        .task(&workspace, json!({"title": "their queue"}))
        .await;
    let agent = "agt-theirs";
    them.call(
        Method::PUT,
        &format!("/api/agents/{agent}"),
        Some(json!({"hostname": "their secret plan host", "version": "1", "state": "waiting"})),
    )
    .await;
    let schedule = admin
        .ok(
            "/api/schedules",
            json!({"workspaceId": workspace, "cron": "0 9 * * *",
                   "task": {"title": "their secret plan, nightly"}}),
        )
        .await;
    let trigger = admin
        .ok(
            "/api/triggers",
            json!({"workspaceId": workspace, "name": "theirs",
                   "task": {"title": "their secret plan, triggered"}}),
        )
        .await;
    let webhook = admin
        .ok(
            "/api/webhooks",
            json!({"url": "https://hooks.example.com/theirs", "events": ["task.completed"],
                   "workspaceId": workspace}),
        )
        .await;
    Theirs {
        webhook: webhook["id"].as_str().unwrap().to_owned(),
        schedule: schedule["id"].as_str().unwrap().to_owned(),
        trigger: trigger["id"].as_str().unwrap().to_owned(),
        workspace,
        task: task["id"].as_str().unwrap().to_owned(),
        pending_task: pending_task["id"].as_str().unwrap().to_owned(),
        worker,
        source: task["sourceId"].as_str().unwrap().to_owned(),
        attachment,
        other_account,
        agent: agent.to_owned(),
    }
}

#[tokio::test]
async fn no_account_reaches_another_workspace() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let mine = admin.workspace("mine").await;
    let (my_id, my_key) = admin
        .account(json!({"type": "service", "name": "me"}), &mine, true, true)
        .await;
    let me = server.client(&my_key);
    let theirs = their_workspace(&server, &admin).await;
    let (t, w) = (&theirs.task, &theirs.worker);

    // (method, path template, concrete path, body): every operation of the API that
    // names a resource, aimed at theirs.
    let attempts: Vec<(Method, &str, String, Value)> = vec![
        (
            Method::GET,
            "/api/workspaces/{id}",
            format!("/api/workspaces/{}", theirs.workspace),
            json!({}),
        ),
        (
            Method::GET,
            "/api/tasks/{id}",
            format!("/api/tasks/{t}"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/tasks/{id}/cancel",
            format!("/api/tasks/{t}/cancel"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/tasks/{id}/reply",
            format!("/api/tasks/{t}/reply"),
            json!({"message": "hi"}),
        ),
        (
            Method::POST,
            "/api/tasks/{id}/retry",
            format!("/api/tasks/{t}/retry"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/tasks/{id}/approve",
            format!("/api/tasks/{t}/approve"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/tasks/{id}/revise",
            format!("/api/tasks/{t}/revise"),
            json!({"feedback": "more"}),
        ),
        (
            Method::POST,
            "/api/tasks/{id}/reject",
            format!("/api/tasks/{t}/reject"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/tasks/{id}/followup",
            format!("/api/tasks/{t}/followup"),
            json!({"message": "more"}),
        ),
        (
            Method::POST,
            "/api/workers/{id}/instruct",
            format!("/api/workers/{w}/instruct"),
            json!({"message": "stop"}),
        ),
        (
            Method::POST,
            "/api/workers",
            "/api/workers".into(),
            json!({"taskId": theirs.pending_task}),
        ),
        (
            Method::GET,
            "/api/tasks/{id}/artifacts",
            format!("/api/tasks/{t}/artifacts"),
            json!({}),
        ),
        (
            Method::GET,
            "/api/tasks/{id}/comments",
            format!("/api/tasks/{t}/comments"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/tasks/{id}/comments",
            format!("/api/tasks/{t}/comments"),
            json!({"body": "x"}),
        ),
        (
            Method::GET,
            "/api/sources/{id}",
            format!("/api/sources/{}", theirs.source),
            json!({}),
        ),
        (
            Method::GET,
            "/api/workers/{id}",
            format!("/api/workers/{w}"),
            json!({}),
        ),
        (
            Method::PATCH,
            "/api/workers/{id}",
            format!("/api/workers/{w}"),
            json!({"status": "completed"}),
        ),
        (
            Method::POST,
            "/api/workers/{id}/heartbeat",
            format!("/api/workers/{w}/heartbeat"),
            json!({}),
        ),
        (
            Method::GET,
            "/api/workers/{id}/messages",
            format!("/api/workers/{w}/messages"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/workers/{id}/messages",
            format!("/api/workers/{w}/messages"),
            json!({"messages": [1]}),
        ),
        (
            Method::GET,
            "/api/workers/{id}/attachments",
            format!("/api/workers/{w}/attachments"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/workers/{id}/attachments",
            format!("/api/workers/{w}/attachments?name=b.txt"),
            json!({}),
        ),
        (
            Method::GET,
            "/api/attachments/{id}",
            format!("/api/attachments/{}", theirs.attachment),
            json!({}),
        ),
        (
            Method::POST,
            "/api/workers/{id}/pause",
            format!("/api/workers/{w}/pause"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/workers/{id}/start",
            format!("/api/workers/{w}/start"),
            json!({}),
        ),
        (
            Method::POST,
            "/api/tasks",
            "/api/tasks".into(),
            json!({"workspaceId": theirs.workspace, "title": "x"}),
        ),
        (
            Method::POST,
            "/api/workers/claim",
            "/api/workers/claim".into(),
            json!({"workspaceId": theirs.workspace}),
        ),
        (
            Method::GET,
            "/api/events",
            format!("/api/events?workspaceId={}", theirs.workspace),
            json!({}),
        ),
        // The admin's alone.
        (
            Method::GET,
            "/api/accounts/{id}",
            format!("/api/accounts/{}", theirs.other_account),
            json!({}),
        ),
        (
            Method::POST,
            "/api/accounts/{id}/rotate-key",
            format!("/api/accounts/{}/rotate-key", theirs.other_account),
            json!({}),
        ),
        (
            Method::POST,
            "/api/accounts/{id}/workspaces",
            format!("/api/accounts/{my_id}/workspaces"),
            json!({"workspaceId": theirs.workspace, "canClaim": true}),
        ),
        (
            Method::DELETE,
            "/api/accounts/{id}/workspaces/{workspace_id}",
            format!(
                "/api/accounts/{}/workspaces/{}",
                theirs.other_account, theirs.workspace
            ),
            json!({}),
        ),
        (
            Method::GET,
            "/api/accounts",
            "/api/accounts".into(),
            json!({}),
        ),
        (
            Method::POST,
            "/api/accounts",
            "/api/accounts".into(),
            json!({"type": "user", "name": "x"}),
        ),
        (
            Method::POST,
            "/api/workspaces",
            "/api/workspaces".into(),
            json!({"name": "x"}),
        ),
        (Method::GET, "/metrics", "/metrics".into(), json!({})),
        (
            Method::GET,
            "/api/accounts/{id}/usage",
            format!("/api/accounts/{}/usage", theirs.other_account),
            json!({}),
        ),
        (
            Method::GET,
            "/api/workers/{id}/diff",
            format!("/api/workers/{w}/diff"),
            json!({}),
        ),
        (
            Method::PUT,
            "/api/workers/{id}/diff",
            format!("/api/workers/{w}/diff"),
            json!({"baseSha": "abcd", "files": [], "patch": ""}),
        ),
        (
            Method::POST,
            "/api/workers/{id}/review",
            format!("/api/workers/{w}/review"),
            json!({"comments": [{"path": "a.rs", "line": 1, "body": "x"}], "summary": "looks wrong"}),
        ),
        (
            Method::GET,
            "/api/tasks/counts",
            format!("/api/tasks/counts?workspaceId={}", theirs.workspace),
            json!({}),
        ),
        (
            Method::POST,
            "/api/schedules",
            "/api/schedules".into(),
            json!({"workspaceId": theirs.workspace, "cron": "0 9 * * *", "task": {"title": "x"}}),
        ),
        (
            Method::GET,
            "/api/schedules",
            format!("/api/schedules?workspaceId={}", theirs.workspace),
            json!({}),
        ),
        (
            Method::GET,
            "/api/schedules/{id}",
            format!("/api/schedules/{}", theirs.schedule),
            json!({}),
        ),
        (
            Method::POST,
            "/api/schedules/{id}/pause",
            format!("/api/schedules/{}/pause", theirs.schedule),
            json!({}),
        ),
        (
            Method::POST,
            "/api/schedules/{id}/resume",
            format!("/api/schedules/{}/resume", theirs.schedule),
            json!({}),
        ),
        (
            Method::DELETE,
            "/api/schedules/{id}",
            format!("/api/schedules/{}", theirs.schedule),
            json!({}),
        ),
        (
            Method::POST,
            "/api/triggers",
            "/api/triggers".into(),
            json!({"workspaceId": theirs.workspace, "name": "x", "task": {"title": "x"}}),
        ),
        (
            Method::GET,
            "/api/triggers",
            format!("/api/triggers?workspaceId={}", theirs.workspace),
            json!({}),
        ),
        (
            Method::GET,
            "/api/triggers/{id}",
            format!("/api/triggers/{}", theirs.trigger),
            json!({}),
        ),
        (
            Method::DELETE,
            "/api/triggers/{id}",
            format!("/api/triggers/{}", theirs.trigger),
            json!({}),
        ),
        // Webhooks are the admin's alone.
        (
            Method::POST,
            "/api/webhooks",
            "/api/webhooks".into(),
            json!({"url": "https://hooks.example.com/x", "events": ["task.failed"]}),
        ),
        (
            Method::GET,
            "/api/webhooks",
            "/api/webhooks".into(),
            json!({}),
        ),
        (
            Method::GET,
            "/api/webhooks/{id}",
            format!("/api/webhooks/{}", theirs.webhook),
            json!({}),
        ),
        (
            Method::DELETE,
            "/api/webhooks/{id}",
            format!("/api/webhooks/{}", theirs.webhook),
            json!({}),
        ),
        (
            Method::GET,
            "/api/webhooks/{id}/deliveries",
            format!("/api/webhooks/{}/deliveries", theirs.webhook),
            json!({}),
        ),
        // An account key never fires a trigger, whoever's.
        (
            Method::POST,
            "/api/triggers/{id}/fire",
            format!("/api/triggers/{}/fire", theirs.trigger),
            json!({}),
        ),
        // Nor reports as another account's agent.
        (
            Method::PUT,
            "/api/agents/{id}",
            format!("/api/agents/{}", theirs.agent),
            json!({"hostname": "mine", "version": "1", "state": "waiting"}),
        ),
    ];
    let mut tried = BTreeSet::new();
    for (method, template, path, body) in &attempts {
        let (status, answer) = me.call(method.clone(), path, Some(body.clone())).await;
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
            "{method} {path} → {status} {answer}"
        );
        assert!(
            !answer.to_string().contains("their secret plan"),
            "{method} {path} leaked: {answer}"
        );
        tried.insert((method.to_string(), template.to_string()));
    }

    // The listings answer, without anything of theirs.
    let (_, tasks) = me
        .get(&format!("/api/tasks?workspaceId={}", theirs.workspace))
        .await;
    assert_eq!(tasks["tasks"], json!([]));
    let (_, workers) = me.get(&format!("/api/workers?taskId={t}")).await;
    assert_eq!(workers["workers"], json!([]));
    let (_, workspaces) = me.get("/api/workspaces").await;
    assert_eq!(workspaces["workspaces"].as_array().unwrap().len(), 1);
    let claimed = me.ok("/api/workers/claim", json!({})).await;
    assert_eq!(
        claimed["workers"],
        json!([]),
        "claimed their {}",
        theirs.pending_task
    );
    let (_, counts) = me.get("/api/tasks/counts").await;
    assert_eq!(counts["total"], 0, "counted their tasks: {counts}");
    let (_, schedules) = me.get("/api/schedules").await;
    assert_eq!(schedules["schedules"], json!([]));
    let (_, triggers) = me.get("/api/triggers").await;
    assert_eq!(triggers["triggers"], json!([]));
    let (_, agents) = me.get("/api/agents").await;
    assert_eq!(agents["agents"], json!([]));
    for listing in [
        "/api/tasks",
        "/api/workers",
        "/api/workspaces",
        "/api/agents",
    ] {
        tried.insert(("GET".to_owned(), listing.to_owned()));
    }

    // Every operation was tried, but those about no one's resources.
    // The GitHub webhook answers GitHub's signature, never an account.
    let open_to_all = [
        "/healthz",
        "/readyz",
        "/api/openapi.json",
        "/api/me",
        "/api/github/webhook",
    ];
    let untried: Vec<_> = operations(&server)
        .await
        .into_iter()
        .map(|(m, p, _)| (m.to_string(), p))
        .filter(|(_, p)| !open_to_all.contains(&p.as_str()))
        .filter(|op| !tried.contains(op))
        .collect();
    assert!(
        untried.is_empty(),
        "not tried across workspaces: {untried:?}"
    );

    // Their worker and task are as they were.
    let (_, task) = admin.get(&format!("/api/tasks/{t}")).await;
    assert_eq!(task["status"], "running");
    let (_, messages) = admin.get(&format!("/api/workers/{w}/messages")).await;
    assert_eq!(messages["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_revoked_grant_stops_access_at_once() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let (id, key) = admin
        .account(json!({"type": "service", "name": "s"}), &ws, true, true)
        .await;
    let task = admin.task(&ws, json!({})).await;
    let path = format!("/api/tasks/{}", task["id"].as_str().unwrap());
    let account = server.client(&key);
    assert_eq!(account.get(&path).await.0, StatusCode::OK);
    let (status, _) = admin
        .call(
            Method::DELETE,
            &format!("/api/accounts/{id}/workspaces/{ws}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(account.get(&path).await.0, StatusCode::FORBIDDEN);
    let claimed = account.ok("/api/workers/claim", json!({})).await;
    assert_eq!(claimed["workers"], json!([]));
}

/// Every byte the database holds, as text, for searching.
async fn database_text(url: &str, dir: &std::path::Path) -> String {
    if url.starts_with("sqlite:") {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("buildd.db")
            {
                all.extend(std::fs::read(&path).unwrap());
            }
        }
        return String::from_utf8_lossy(&all).into_owned();
    }
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut text = String::new();
    for table in tables {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT t::text AS row FROM \"{table}\" t"
        )))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for row in rows {
            text.push_str(&row.get::<String, _>("row"));
            text.push('\n');
        }
    }
    text
}

/// Accounts made, Claude credentials offered in a body, a task run by a real agent
/// with credentials in its environment: none of the secrets is in the database, the
/// server's or the agent's log, or an answer other than the one that shows a new key.
async fn secrets_stay_out(url: &str, dir: &std::path::Path) {
    let server = Server::start(url, dir, &[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let anthropic_in_body = "sk-ant-api03-offered-in-a-body-0123456789";
    let oauth_in_body = "sk-ant-oat01-offered-in-a-body-9876543210";
    let created = admin
        .ok(
            "/api/accounts",
            json!({"type": "service", "name": "ci", "anthropicApiKey": anthropic_in_body,
                   "oauthToken": oauth_in_body}),
        )
        .await;
    assert_eq!(created["warnings"].as_array().unwrap().len(), 2);
    assert!(!created.to_string().contains(anthropic_in_body));
    let id = created["id"].as_str().unwrap();
    let first_key = created["apiKey"].as_str().unwrap().to_owned();
    let rotated = admin
        .ok(&format!("/api/accounts/{id}/rotate-key"), json!({}))
        .await;
    let key = rotated["apiKey"].as_str().unwrap().to_owned();
    admin
        .ok(
            &format!("/api/accounts/{id}/workspaces"),
            json!({"workspaceId": ws, "canClaim": true, "canCreate": true}),
        )
        .await;
    // A webhook's signing secret must be kept to sign with: sealed, never in plain text.
    let webhook_secret = "whsec-kept-sealed-0123456789";
    admin
        .ok(
            "/api/webhooks",
            json!({"url": "https://hooks.example.com/x", "events": ["task.completed"],
                   "secret": webhook_secret}),
        )
        .await;
    let (_, listed) = admin.get("/api/accounts").await;
    let (_, me) = server.client(&key).get("/api/me").await;
    for answer in [&listed, &me] {
        assert!(!answer.to_string().contains(&key) && !answer.to_string().contains("apiKey"));
    }

    // A real agent runs a task with Claude credentials in its environment; its runner
    // must get them, and must not get the broker key.
    let anthropic_in_env = "sk-ant-api03-from-the-agent-environment-55555";
    let oauth_in_env = "sk-ant-oat01-from-the-agent-environment-66666";
    let task = admin
        .task(&ws, json!({"title": "check the environment"}))
        .await;
    let repo = Repo::new();
    // It gets its worker's token instead, which it hands on (out of the repository)
    // for this test to look for.
    let token_out = dir.join("worker-token");
    let runner = r#"test -n "$ANTHROPIC_API_KEY" && test -z "$BUILDD_API_KEY" \
        && printf %s "$BUILDD_WORKER_TOKEN" > "$TOKEN_OUT" && echo environment-ok"#;
    let mut agent = Agent::start(
        &server.url,
        &key,
        repo.path(),
        &["--once", "--command", runner],
        &[
            ("ANTHROPIC_API_KEY", anthropic_in_env),
            ("CLAUDE_CODE_OAUTH_TOKEN", oauth_in_env),
            ("TOKEN_OUT", token_out.to_str().unwrap()),
        ],
    );
    let exit = agent.exit(Duration::from_secs(60)).await;
    assert!(exit.success(), "the agent failed:\n{}", agent.log());
    let (_, done) = admin
        .get(&format!("/api/tasks/{}", task["id"].as_str().unwrap()))
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let (_, workers) = admin
        .get(&format!(
            "/api/workers?taskId={}",
            task["id"].as_str().unwrap()
        ))
        .await;
    let worker = workers["workers"][0]["id"].as_str().unwrap();
    let (_, messages) = admin.get(&format!("/api/workers/{worker}/messages")).await;
    assert!(
        messages.to_string().contains("environment-ok"),
        "the runner saw the broker key or no Claude credentials: {messages}"
    );

    let worker_token = std::fs::read_to_string(&token_out).unwrap();
    assert!(worker_token.starts_with("buildd_worker_"), "{worker_token}");
    let secrets = [
        ("the worker token", worker_token.as_str()),
        ("a webhook's secret", webhook_secret),
        ("the first account key", first_key.as_str()),
        ("the account key", key.as_str()),
        ("the admin token", ADMIN),
        ("anthropicApiKey from a body", anthropic_in_body),
        ("oauthToken from a body", oauth_in_body),
        ("ANTHROPIC_API_KEY of the agent", anthropic_in_env),
        ("CLAUDE_CODE_OAUTH_TOKEN of the agent", oauth_in_env),
    ];
    let stored = database_text(url, dir).await;
    assert!(
        stored.contains("check the environment"),
        "the dump holds the data"
    );
    let server_log = server.log.lock().unwrap().clone();
    assert!(
        server_log.contains("account created"),
        "the log was captured"
    );
    let agent_log = agent.log();
    assert!(
        agent_log.contains(worker),
        "the agent logged at debug level"
    );
    for (what, secret) in secrets {
        assert!(!stored.contains(secret), "{what} is in the database");
        assert!(
            !server_log.contains(secret),
            "{what} is in the server's log"
        );
        assert!(!agent_log.contains(secret), "{what} is in the agent's log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_out_of_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("buildd.db").display());
    secrets_stay_out(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_out_of_postgres() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    secrets_stay_out(&url, dir.path()).await;
}

/// Postgres cannot store NUL in text; both backends refuse it the same way, in a
/// body, a path or a query, and store nothing.
async fn nul_is_refused(server: &Server) {
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    for body in [
        json!({"workspaceId": ws, "title": "a\u{0}b"}),
        json!({"workspaceId": ws, "title": "ok", "description": "x\u{0}"}),
        json!({"workspaceId": ws, "title": "ok", "source": {"type": "t", "url": "\u{0}"}}),
    ] {
        let (status, answer) = admin.post("/api/tasks", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains("NUL"));
    }
    for path in [
        "/api/tasks/task-%00",
        &format!("/api/tasks?workspaceId={ws}%00"),
    ] {
        let (status, _) = admin.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
    }
    // An escaped backslash followed by u0000 is ordinary text.
    let (status, created) = admin
        .post(
            "/api/tasks",
            json!({"workspaceId": ws, "title": "literal \\u0000"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["title"], "literal \\u0000");
    let (_, tasks) = admin.get(&format!("/api/tasks?workspaceId={ws}")).await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn nul_is_refused_on_sqlite() {
    nul_is_refused(&Server::sqlite(&[])).await;
}

#[tokio::test]
async fn nul_is_refused_on_postgres() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    nul_is_refused(&Server::start(&url, dir.path(), &[])).await;
}

/// What one caller can make the server hold at once is bounded: a body, a batch of
/// messages (event streams: tests/ops.rs). Refused requests store nothing.
#[tokio::test]
async fn bodies_and_batches_are_bounded() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, _, key) = admin.workspace_with_claimer().await;
    admin.task(&ws, json!({})).await;
    let agent = server.client(&key);
    let worker = agent.claim_one().await;
    let path = format!("/api/workers/{worker}/messages");

    let too_many: Vec<Value> = (0..1001).map(|i| json!(i)).collect();
    let (status, body) = agent.post(&path, json!({ "messages": too_many })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("1000"));
    let (status, _) = agent.post(&path, json!({ "messages": [] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let huge = "x".repeat(1024 * 1024);
    let (status, body) = agent.post(&path, json!({ "messages": [huge] })).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    // The server may close a connection whose body it refused to read: go on with a
    // new client.
    let agent = server.client(&key);
    let (_, stored) = agent.get(&path).await;
    assert_eq!(
        stored["messages"],
        json!([]),
        "a refused batch stored something"
    );
    let full: Vec<Value> = (0..1000).map(|i| json!(i)).collect();
    let appended = agent.ok(&path, json!({ "messages": full })).await;
    assert_eq!(appended["appended"], 1000);
}
