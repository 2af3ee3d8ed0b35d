//! The path from a runner's output to the stored result, with the real `buildd agent`
//! and `buildd serve`: output of any size and bytes, refused and lost requests,
//! runners that ignore signals, silent servers, paused workers whose agent died, and
//! retention. Runners are `--command` scripts, for exact control of what they print.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use common::agent::{Agent, LONG, Repo, task, wait_task, worker_of, workspace_and_key};
use common::{Next, Server};

/// An agent that runs `command` for every task.
fn command_agent(server: &str, key: &str, repo: &Repo, command: &str, flags: &[&str]) -> Agent {
    let mut args = vec!["--command", command];
    args.extend_from_slice(flags);
    Agent::start(server, key, repo.path(), &args, &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_3_mb_line_is_stored_cut_and_its_stream_json_still_counts() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    // What Claude Code prints when it writes a large file: the whole file in the
    // `user` line's tool result, then the final result.
    let script = r#"python3 -c '
import json
big = "x" * 3_000_000
print(json.dumps({"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "content": "File created"}]}, "tool_use_result": {"type": "create", "content": big, "originalFile": big}}))
print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "All written", "num_turns": 3, "total_cost_usd": 0.12, "session_id": "s-big"}))
'"#;
    let id = task(&admin, &ws, "Big line", "write a big file").await;
    let mut agent = command_agent(&server.url, &key, &repo, script, &["--once"]);
    let status = agent.exit(LONG).await;
    assert!(status.success(), "{}", agent.log());

    let done = wait_task(&admin, &id, "completed").await;
    assert_eq!(done["result"]["text"], "All written");
    let worker = worker_of(&admin, &id).await;
    assert_eq!(worker["sessionId"], "s-big");
    assert_eq!(worker["turns"], 3);
    assert_eq!(worker["costUsd"], 0.12);
    let messages = admin.messages_of(worker["id"].as_str().unwrap()).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["type"], "buildd_cut");
    assert_eq!(messages[0]["originalType"], "user");
    assert!(messages[0]["originalBytes"].as_u64().unwrap() > 6_000_000);
    assert!(messages[0].to_string().len() <= 256 * 1024);
    assert_eq!(messages[1]["type"], "result");
    assert_eq!(done["attempts"], 1, "paid for once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_50_mb_burst_in_1_mb_lines_is_accounted_for_line_by_line() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let script = r#"python3 -c '
import sys
for i in range(50):
    sys.stdout.write("%04d" % i + "z" * 999_996 + "\n")
print("end of burst")
'"#;
    let id = task(&admin, &ws, "Burst", "print a lot").await;
    let mut agent = command_agent(&server.url, &key, &repo, script, &["--once"]);
    assert!(agent.exit(LONG).await.success(), "{}", agent.log());

    let done = wait_task(&admin, &id, "completed").await;
    assert_eq!(done["result"]["text"], "end of burst");
    let worker = worker_of(&admin, &id).await;
    let messages = admin.messages_of(worker["id"].as_str().unwrap()).await;
    assert_eq!(messages.len(), 51);
    for (i, m) in messages[..50].iter().enumerate() {
        assert_eq!(m["type"], "buildd_cut", "line {i}");
        assert_eq!(m["originalBytes"], 1_000_000, "line {i}");
        let text = m["text"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("{i:04}z")),
            "line {i} out of order"
        );
    }
    assert_eq!(messages[50]["text"], "end of burst");
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_that_are_not_utf8_lose_nothing_after_them() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let script = r#"printf '\377\n'; python3 -c 'print("z" * 1_000_000)'; printf 'caf\303\251 \376\n'; echo after"#;
    let id = task(&admin, &ws, "Binary", "print bytes").await;
    let mut agent = command_agent(&server.url, &key, &repo, script, &["--once"]);
    assert!(agent.exit(LONG).await.success(), "{}", agent.log());

    let done = wait_task(&admin, &id, "completed").await;
    assert_eq!(done["result"]["text"], "after");
    let worker = worker_of(&admin, &id).await;
    let messages = admin.messages_of(worker["id"].as_str().unwrap()).await;
    let texts: Vec<&str> = messages
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert_eq!(texts[0], "\u{FFFD}");
    assert_eq!(messages[1]["originalBytes"], 1_000_000);
    assert_eq!(texts[2], "café \u{FFFD}");
    assert_eq!(texts[3], "after");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_agent_whatever_its_runner_does() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    // Ignores SIGTERM, leaves a child behind in its group, and prints without pause,
    // starting with a byte that is not UTF-8 (the old hang).
    let script = r#"trap '' TERM; sleep 600 & printf '\377\n'; python3 -c '
import sys
while True:
    sys.stdout.write("y" * 8191 + "\n")
'"#;
    let id = task(&admin, &ws, "Stubborn", "never stop").await;
    let mut agent = command_agent(&server.url, &key, &repo, script, &["--grace", "1"]);
    wait_task(&admin, &id, "running").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let signalled = Instant::now();
    agent.signal(libc::SIGTERM);
    // The grace period (1 s), the kill delay (3 s), and a few seconds more.
    let status = agent.exit(Duration::from_secs(20)).await;
    let took = signalled.elapsed();
    assert!(status.success(), "exit {status:?}; log:\n{}", agent.log());
    println!("the agent exited {took:?} after SIGTERM");

    let requeued = wait_task(&admin, &id, "pending").await;
    assert_eq!(requeued["attempts"], 1);
    let worker = worker_of(&admin, &id).await;
    assert_eq!(worker["status"], "error");
    assert!(
        worker["error"].as_str().unwrap().contains("shut down"),
        "{worker}"
    );
    let messages = admin.messages_of(worker["id"].as_str().unwrap()).await;
    assert_eq!(messages[0]["text"], "\u{FFFD}");
    assert!(messages.len() > 10, "its output was delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_against_a_silent_server_fails_within_a_minute_saying_so() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_buildd"))
            .args([
                "task",
                "list",
                "--server",
                &url,
                "--api-key",
                "buildd_user_x",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("127.0.0.1") && stderr.contains("did not answer"),
        "{stderr}"
    );
    assert!(!held.lock().unwrap().is_empty(), "the client did connect");
}

/// A request whose answer the proxy loses: its method, a part of its path, a part of
/// its body.
type Lose = (Method, &'static str, &'static str);

/// A proxy in front of a server that forwards everything, but answers the first
/// request matching each of its rules with a 503 after the server has handled it:
/// the answer is lost, the request was not.
#[derive(Clone)]
struct LossyProxy {
    upstream: String,
    http: reqwest::Client,
    lose: Arc<Mutex<Vec<Lose>>>,
    lost: Arc<Mutex<Vec<String>>>,
    /// How many claim answers to pass on with their first entry's task made
    /// unreadable.
    mangle_claims: Arc<Mutex<usize>>,
}

impl LossyProxy {
    async fn start(upstream: &str, lose: Vec<Lose>) -> (String, LossyProxy) {
        let proxy = LossyProxy {
            upstream: upstream.to_owned(),
            http: reqwest::Client::new(),
            lose: Arc::new(Mutex::new(lose)),
            lost: Arc::default(),
            mangle_claims: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, proxy)
    }
}

async fn forward(
    State(proxy): State<LossyProxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = proxy
        .http
        .request(method.clone(), format!("{}{path}", proxy.upstream))
        .body(body.clone());
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = request.send().await.unwrap();
    let text = String::from_utf8_lossy(&body);
    let lost = {
        let mut lose = proxy.lose.lock().unwrap();
        let hit = lose
            .iter()
            .position(|(m, p, b)| *m == method && path.contains(p) && text.contains(b));
        hit.map(|i| lose.remove(i))
    };
    if lost.is_some() {
        let _ = answer.bytes().await;
        proxy.lost.lock().unwrap().push(format!("{method} {path}"));
        return (StatusCode::SERVICE_UNAVAILABLE, "lost").into_response();
    }
    if path.starts_with("/api/workers/claim") && *proxy.mangle_claims.lock().unwrap() > 0 {
        let status = answer.status().as_u16();
        let mut claim: Value = answer.json().await.unwrap();
        if let Some(first) = claim["workers"].as_array_mut().and_then(|w| w.first_mut()) {
            first["task"] = json!("not a task");
            *proxy.mangle_claims.lock().unwrap() -= 1;
        }
        return (StatusCode::from_u16(status).unwrap(), axum::Json(claim)).into_response();
    }
    let status = answer.status();
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in answer.headers() {
        response = response.header(name, value);
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_whose_answers_were_lost_are_stored_once() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let (url, proxy) = LossyProxy::start(
        &server.url,
        vec![
            (Method::POST, "/messages", "line 1"),
            (Method::PATCH, "/api/workers/", "\"completed\""),
        ],
    )
    .await;
    let script = "for i in 1 2 3 4 5; do echo line $i; done";
    let id = task(&admin, &ws, "Lossy", "print five lines").await;
    let mut agent = command_agent(&url, &key, &repo, script, &["--once"]);
    assert!(agent.exit(LONG).await.success(), "{}", agent.log());
    assert_eq!(
        proxy.lost.lock().unwrap().len(),
        2,
        "both answers were lost"
    );

    let done = wait_task(&admin, &id, "completed").await;
    assert_eq!(done["result"]["text"], "line 5");
    let worker = worker_of(&admin, &id).await;
    let texts: Vec<Value> = admin
        .messages_of(worker["id"].as_str().unwrap())
        .await
        .into_iter()
        .map(|m| m["text"].clone())
        .collect();
    let expected: Vec<Value> = (1..=5).map(|i| json!(format!("line {i}"))).collect();
    assert_eq!(texts, expected, "each line once, in order");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_claim_entry_is_given_back_and_the_rest_runs() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let (url, proxy) = LossyProxy::start(&server.url, Vec::new()).await;
    *proxy.mangle_claims.lock().unwrap() = 1;
    let a = task(&admin, &ws, "A", "first").await;
    let b = task(&admin, &ws, "B", "second").await;
    let agent = command_agent(&url, &key, &repo, "echo done", &["--max-tasks", "2"]);
    for id in [&a, &b] {
        wait_task(&admin, id, "completed").await;
    }
    assert_eq!(
        *proxy.mangle_claims.lock().unwrap(),
        0,
        "one claim was mangled"
    );
    let (_, workers) = admin.get(&format!("/api/workers?taskId={a}")).await;
    let (_, more) = admin.get(&format!("/api/workers?taskId={b}")).await;
    let all: Vec<Value> = [workers, more]
        .iter()
        .flat_map(|w| w["workers"].as_array().unwrap().clone())
        .collect();
    let released: Vec<&Value> = all.iter().filter(|w| w["status"] == "error").collect();
    assert_eq!(released.len(), 1, "{all:?}");
    assert!(
        released[0]["error"]
            .as_str()
            .unwrap()
            .contains("could not read this claim"),
        "{released:?}"
    );
    assert!(agent.log().contains("giving it back"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_worker_whose_agent_was_killed_gives_its_slot_back() {
    let server = Server::sqlite(&["--lease-ttl", "1"]);
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    let (_, key) = admin
        .account(
            json!({ "type": "service", "name": "one-slot", "maxConcurrentWorkers": 1 }),
            &ws,
            true,
            false,
        )
        .await;
    let repo = Repo::new();

    for (title, end) in [("Cancelled", "cancel"), ("Abandoned", "expire")] {
        let id = task(&admin, &ws, title, "wait").await;
        let mut agent = command_agent(&server.url, &key, &repo, "sleep 600", &[]);
        wait_task(&admin, &id, "running").await;
        let worker = worker_of(&admin, &id).await;
        let wid = worker["id"].as_str().unwrap().to_owned();
        let (status, _) = admin
            .post(&format!("/api/workers/{wid}/pause"), json!({}))
            .await;
        assert!(status.is_success());
        common::agent::wait_until(
            &admin,
            &format!("/api/workers/{wid}"),
            LONG,
            "paused",
            |w| w["status"] == "paused",
        )
        .await;
        agent.signal(libc::SIGKILL);
        agent.exit(LONG).await;

        let expected = if end == "cancel" {
            let (status, _) = admin
                .post(&format!("/api/tasks/{id}/cancel"), json!({}))
                .await;
            assert!(status.is_success());
            "the task was cancelled"
        } else {
            "lease expired"
        };
        let ended = common::agent::wait_until(
            &admin,
            &format!("/api/workers/{wid}"),
            LONG,
            "the paused worker to end",
            |w| w["status"] == "error",
        )
        .await;
        assert!(
            ended["error"].as_str().unwrap().contains(expected),
            "{ended}"
        );

        // The slot is free: the account claims again, from a fresh agent on the same
        // checkout (the killed agent's worktree is still there). An expired task is
        // back in the queue and is what it takes.
        let next = match end {
            "cancel" => task(&admin, &ws, "Next", "wait").await,
            _ => wait_task(&admin, &id, "pending").await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        };
        let mut agent = command_agent(&server.url, &key, &repo, "echo done", &["--once"]);
        assert!(agent.exit(LONG).await.success(), "{}", agent.log());
        wait_task(&admin, &next, "completed").await;
    }
}

/// Retention on `server` (kept about 2.6 s): old events go, and a stream resumed from
/// before them starts with `stream.reset`.
async fn retention_tells_resuming_streams_to_reload(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    for i in 0..5 {
        admin.task(&ws, json!({ "title": format!("t{i}") })).await;
    }
    let deadline = Instant::now() + LONG;
    let reset = loop {
        let (_, mut stream) = admin.events("", Some(0)).await;
        match stream.next_event(Duration::from_secs(5)).await {
            Next::Event(e) if e.name == "stream.reset" => break e,
            other => assert!(
                Instant::now() < deadline,
                "no reset within {LONG:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let purged = reset.data["purgedThrough"].as_i64().unwrap();
    assert_eq!(reset.id, purged);
    assert!(purged >= 4, "all but the newest of five events: {reset:?}");

    // After the reset, the stream goes on with what is kept, and live events.
    let (_, mut stream) = admin.events("", Some(0)).await;
    assert_eq!(
        stream.next(Duration::from_secs(5)).await.unwrap().name,
        "stream.reset"
    );
    let created = admin.task(&ws, json!({ "title": "after" })).await;
    let mut seen = false;
    while let Some(e) = stream.next(Duration::from_secs(5)).await {
        assert!(e.id > purged);
        if e.data["task"]["id"] == created["id"] {
            seen = true;
            break;
        }
    }
    assert!(seen, "the live event arrives after the reset");
    // A stream resumed after the deleted events gets no reset.
    let (_, mut recent) = admin.events("", Some(purged)).await;
    if let Some(e) = recent.next(Duration::from_secs(2)).await {
        assert_ne!(e.name, "stream.reset");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_on_sqlite() {
    let server = Server::sqlite(&["--retention", "0.00003"]);
    let db = server.data_dir.join("buildd.db");
    use std::os::unix::fs::PermissionsExt;
    for file in [db.clone(), db.with_extension("db-wal")] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    retention_tells_resuming_streams_to_reload(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_on_postgres() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(&url, home.path(), &["--retention", "0.00003"]);
    retention_tells_resuming_streams_to_reload(server).await;
}

/// Connections to [`silent_events`], with the `Last-Event-ID` each sent.
type Connections = Arc<Mutex<Vec<Option<String>>>>;

/// `GET /api/events` that sends one event per connection (ids 1, 2, …), then keeps
/// the connection open and says nothing more, not even a keep-alive.
async fn silent_events(State(seen): State<Connections>, headers: HeaderMap) -> Response {
    use tokio_stream::StreamExt;
    let id = {
        let mut seen = seen.lock().unwrap();
        seen.push(
            headers
                .get("last-event-id")
                .map(|v| v.to_str().unwrap().to_owned()),
        );
        seen.len()
    };
    let event = format!("id: {id}\nevent: task.created\ndata: {{\"n\":{id}}}\n\n");
    let body = tokio_stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(event))])
        .chain(tokio_stream::pending());
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_event_stream_is_reopened_where_it_stopped() {
    let seen: Connections = Arc::default();
    let app = axum::Router::new()
        .route("/api/events", axum::routing::get(silent_events))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = buildd::client::Client::new(&url, "buildd_user_x").unwrap();
    let mut stream = client
        .events(None, None)
        .await
        .unwrap()
        .with_idle_limit(Duration::from_secs(1));
    assert_eq!(stream.next().await.unwrap().id, 1);
    let second = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the silent connection was given up")
        .unwrap();
    assert_eq!(second.id, 2);
    assert_eq!(
        *seen.lock().unwrap(),
        [None, Some("1".to_owned())],
        "the second connection resumed after the first's last event"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn several_agents_on_one_checkout_run_every_task_once() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let mut ids = Vec::new();
    for i in 0..30 {
        let t = admin
            .task(&ws, json!({ "title": format!("t{i}"), "maxAttempts": 1 }))
            .await;
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    // Each agent adds, prunes and removes worktrees of the same repository at once.
    let agents: Vec<Agent> = (0..3)
        .map(|_| {
            command_agent(
                &server.url,
                &key,
                &repo,
                "echo done > done.txt",
                &["--max-tasks", "3"],
            )
        })
        .collect();
    for id in &ids {
        let done = wait_task(&admin, id, "completed").await;
        assert_eq!(done["attempts"], 1);
    }
    for agent in &agents {
        assert!(
            !agent.log().contains("cannot create the worktree"),
            "{}",
            agent.log()
        );
    }
}
