//! `/mcp` and `buildd mcp`, driven by a real MCP client no one here wrote: the
//! official Python SDK (`tests/mcp/drive.py`), against the real binary on SQLite and
//! Postgres.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

use common::{ADMIN, Api, Server};

/// The Python of a virtualenv under `target/` holding the SDK.
fn python() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| common::venv_python("mcp-venv", "tests/mcp/requirements.txt", "mcp"))
        .clone()
}

/// Runs `drive.py ARGS` with `steps` on its stdin (and `env` added) and returns what it
/// printed.
async fn drive(args: Vec<String>, steps: Value, env: Vec<(String, String)>) -> Value {
    tokio::task::spawn_blocking(move || {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/drive.py");
        let out = common::output_with_stdin(
            Command::new(python()).arg(script).args(&args).envs(env),
            steps.to_string().as_bytes(),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&stdout).unwrap_or_else(|_| {
            panic!(
                "drive.py printed no JSON: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    })
    .await
    .unwrap()
}

/// One session over Streamable HTTP with `token`.
async fn over_http(server: &Server, token: &str, steps: Value) -> Value {
    let args = vec!["http".into(), format!("{}/mcp", server.url), token.into()];
    drive(args, steps, Vec::new()).await
}

/// The results of the session's steps, in order.
fn results(out: &Value) -> &Vec<Value> {
    out["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no session: {out}"))
}

fn call(tool: &str, args: Value) -> Value {
    json!({"op": "call", "tool": tool, "args": args})
}

fn tool_names(result: &Value) -> Vec<&str> {
    result["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

/// A successful call's answer.
fn answer(result: &Value) -> &Value {
    assert_eq!(result["isError"], false, "{result}");
    &result["structured"]
}

/// A failed call's text, for the model to read.
fn refusal(result: &Value) -> &str {
    assert_eq!(result["isError"], true, "{result}");
    result["text"].as_str().unwrap()
}

const PEOPLE_TOOLS: [&str; 9] = [
    "list_workspaces",
    "list_tasks",
    "get_task",
    "get_task_logs",
    "create_task",
    "cancel_task",
    "reply",
    "comment",
    "followup",
];

const RUN_TOOLS: [&str; 4] = [
    "report_progress",
    "add_artifact",
    "create_subtask",
    "get_task",
];

/// A raw POST to `/mcp`: its status, `WWW-Authenticate` header and JSON body.
async fn post_raw(server: &Server, token: Option<&str>, body: &str) -> (u16, String, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/mcp", server.url))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    let challenge = answer
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        challenge,
        answer.json().await.unwrap_or(Value::Null),
    )
}

both_backends!(
    a_persons_session_queues_and_follows_work_within_its_grants,
    bad_input_is_a_tool_error_and_bad_protocol_the_protocols_error,
    a_runs_token_opens_only_its_own_tools_until_its_worker_ends,
);

async fn a_persons_session_queues_and_follows_work_within_its_grants(server: Server) {
    let admin = server.admin();
    let mine = admin.workspace("widgets").await;
    let theirs = admin.workspace("gadgets").await;
    let (account, key) = admin
        .account(json!({"type": "user", "name": "me"}), &mine, false, true)
        .await;
    let foreign = admin.task(&theirs, json!({"title": "Not yours"})).await;
    let foreign = foreign["id"].as_str().unwrap();

    let out = over_http(
        &server,
        &key,
        json!([
            {"op": "tools"},
            call("list_workspaces", json!({})),
            // The one workspace it may see is the default.
            call("create_task", json!({"title": "Fix the login test", "description": "It flakes.", "priority": 5})),
            call("create_task", json!({"workspace": "gadgets", "title": "Elsewhere"})),
            call("create_task", json!({"workspace": theirs, "title": "Elsewhere"})),
            call("get_task", json!({"id": foreign})),
            call("list_tasks", json!({"text": "LOGIN"})),
        ]),
    )
    .await;
    assert_eq!(out["server"]["name"], "buildd", "{out}");
    let r = results(&out);
    assert_eq!(tool_names(&r[0]), PEOPLE_TOOLS);
    for tool in r[0]["tools"].as_array().unwrap() {
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        assert!(tool["description"].as_str().unwrap().len() > 40, "{tool}");
    }
    let workspaces = answer(&r[1])["workspaces"].as_array().unwrap();
    assert_eq!(workspaces.len(), 1);
    assert_eq!(workspaces[0]["id"], mine.as_str());
    let created = answer(&r[2]);
    assert_eq!(created["status"], "pending");
    assert_eq!(created["workspaceId"], mine.as_str());
    assert_eq!(created["priority"], 5);
    let id = created["id"].as_str().unwrap();
    // Outside its grants: nothing it cannot see is named, found or read.
    assert!(
        refusal(&r[3]).contains("no workspace \"gadgets\""),
        "{}",
        r[3]
    );
    assert!(refusal(&r[4]).contains("that you may see"), "{}", r[4]);
    assert!(refusal(&r[5]).contains("has no access"), "{}", r[5]);
    let listed = answer(&r[6])["tasks"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id);

    // The API sees what the tool made, made by this account.
    let (status, via_api) = admin.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(via_api["title"], "Fix the login test");
    assert_eq!(via_api["description"], "It flakes.");

    let out = over_http(
        &server,
        &key,
        json!([
            call("get_task", json!({"id": id})),
            call("get_task_logs", json!({"id": id})),
            call(
                "comment",
                json!({"id": id, "body": "Look at the retry loop"})
            ),
            call("reply", json!({"id": id, "message": "Postgres"})),
            call("cancel_task", json!({"id": id})),
            call("get_task", json!({"id": id})),
            call(
                "followup",
                json!({"id": id, "message": "Now the signup test"})
            ),
        ]),
    )
    .await;
    let r = results(&out);
    let task = answer(&r[0]);
    assert_eq!(task["id"], id);
    assert_eq!(task["workers"], json!([]));
    assert_eq!(task["children"], json!([]));
    let logs = r[1]["text"].as_str().unwrap();
    assert!(logs.contains("No agent has worked on it yet"), "{logs}");
    let comment = answer(&r[2]);
    assert_eq!(comment["author"], account.as_str());
    // The API's own rules: only a waiting task takes an answer.
    assert!(refusal(&r[3]).contains("waiting"), "{}", r[3]);
    assert_eq!(answer(&r[4])["status"], "cancelled");
    assert_eq!(answer(&r[5])["status"], "cancelled");
    let followup = answer(&r[6]);
    assert_eq!(followup["parentId"], id);

    // The admin token sees every workspace.
    let out = over_http(&server, ADMIN, json!([call("list_workspaces", json!({}))])).await;
    assert_eq!(
        answer(&results(&out)[0])["workspaces"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

async fn bad_input_is_a_tool_error_and_bad_protocol_the_protocols_error(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    admin.workspace("gadgets").await;
    let before = admin.get("/api/tasks").await.1["tasks"]
        .as_array()
        .unwrap()
        .len();
    let out = over_http(
        &server,
        ADMIN,
        json!([
            call("create_task", json!({"workspace": ws})),
            call(
                "create_task",
                json!({"workspace": ws, "title": "t", "priority": "high"})
            ),
            call(
                "create_task",
                json!({"workspace": ws, "title": "t", "runnerPreference": "robot"})
            ),
            call(
                "create_task",
                json!({"workspace": ws, "title": "t", "colour": "red"})
            ),
            call(
                "create_task",
                json!({"workspace": ws, "title": "nul \u{0} here"})
            ),
            call("create_task", json!({"workspace": ws, "title": "   "})),
            call(
                "create_task",
                json!({"workspace": ws, "title": "t", "dependsOn": ["task-nope"]})
            ),
            call("create_task", json!({"title": "t"})),
            call("list_tasks", json!({"status": "sleeping"})),
            call("list_tasks", json!({"limit": 500})),
            call("get_task", json!({"id": "task-nope"})),
            call("get_task_logs", json!({"id": "task-nope", "maxChars": 10})),
            call("report_progress", json!({"message": "not a run"})),
            call("no_such_tool", json!({})),
        ]),
    )
    .await;
    let r = results(&out);
    let says = |i: usize, words: &[&str]| {
        let text = refusal(&r[i]);
        for word in words {
            assert!(text.contains(word), "step {i}: {text:?} lacks {word:?}");
        }
    };
    says(
        0,
        &["invalid arguments for create_task", "missing field `title`"],
    );
    says(1, &["invalid type", "priority"]);
    says(
        2,
        &[
            "unknown variant `robot`",
            "`any`, `user`, `service`, `action`",
        ],
    );
    says(3, &["unknown field `colour`", "expected one of"]);
    says(4, &["NUL"]);
    says(5, &["title"]);
    says(6, &["task-nope"]);
    says(7, &["say which workspace"]);
    says(8, &["unknown variant `sleeping`", "pending"]);
    says(9, &["limit must be between 1 and 100"]);
    says(10, &["task task-nope not found"]);
    says(11, &["maxChars must be between 1000 and 100000"]);
    // A tool the caller does not have is the protocol's invalid-params error.
    for i in [12, 13] {
        assert_eq!(r[i]["protocolError"]["code"], -32602, "{}", r[i]);
        let message = r[i]["protocolError"]["message"].as_str().unwrap();
        assert!(message.contains("list_workspaces"), "{message}");
    }
    // Nothing of that was stored.
    let after = admin.get("/api/tasks").await.1["tasks"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);

    // No token, or one that stands for nobody: 401 with the challenge MCP's HTTP
    // authorization expects, and the SDK gets no session.
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    for token in [
        None,
        Some("buildd_service_nope"),
        Some("buildd_worker_nope"),
    ] {
        let (status, challenge, body) = post_raw(&server, token, init).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(challenge, "Bearer realm=\"buildd\"");
        assert!(body["error"].is_string(), "{body}");
    }
    let out = over_http(&server, "buildd_user_nope", json!([{"op": "tools"}])).await;
    assert!(out["connectError"].is_string(), "{out}");

    // Malformed JSON-RPC: the protocol's errors, with a null id.
    for (body, code) in [
        ("{not json", -32700),
        (r#"{"hello": "world"}"#, -32600),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#,
            -32600,
        ),
    ] {
        let (status, _, answer) = post_raw(&server, Some(ADMIN), body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["jsonrpc"], "2.0");
        assert_eq!(answer["id"], Value::Null);
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    let unknown = r#"{"jsonrpc":"2.0","id":7,"method":"tasks/explode"}"#;
    let (status, _, answer) = post_raw(&server, Some(ADMIN), unknown).await;
    assert_eq!(status, 200);
    assert_eq!(answer["id"], 7);
    assert_eq!(answer["error"]["code"], -32601, "{answer}");
    // An oversized body is refused before it is read whole.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"comment","arguments":{{"id":"x","body":"{}"}}}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, _, _) = post_raw(&server, Some(ADMIN), &big).await;
    assert_eq!(status, 413);
    // The server is still fine.
    let out = over_http(&server, ADMIN, json!([{"op": "tools"}])).await;
    assert_eq!(tool_names(&results(&out)[0]), PEOPLE_TOOLS);
}

/// Claims one task as `key`'s account and returns (worker id, worker token).
async fn claimed(api: &Api) -> (String, String) {
    let answer = api.ok("/api/workers/claim", json!({})).await;
    let worker = &answer["workers"][0];
    let token = worker["workerToken"].as_str().expect("a worker token");
    (worker["id"].as_str().unwrap().into(), token.into())
}

async fn a_runs_token_opens_only_its_own_tools_until_its_worker_ends(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    let (_, key) = admin
        .account(json!({"type": "service", "name": "vm"}), &ws, true, true)
        .await;
    let agent = server.client(&key);
    // A dependency, done first.
    let dependency = admin
        .task(&ws, json!({"title": "Schema", "priority": 9}))
        .await;
    let dependency = dependency["id"].as_str().unwrap();
    let (worker, _) = claimed(&agent).await;
    agent
        .move_worker(&worker, &["starting", "running", "completed"])
        .await;
    let own = admin
        .task(
            &ws,
            json!({"title": "API", "dependsOn": [dependency], "maxAttempts": 2}),
        )
        .await;
    let own = own["id"].as_str().unwrap();
    let stranger = admin.task(&ws, json!({"title": "Unrelated"})).await;
    let stranger = stranger["id"].as_str().unwrap();
    let (worker, token) = claimed(&agent).await;
    assert!(token.starts_with("buildd_worker_"), "{token}");
    agent.move_worker(&worker, &["starting", "running"]).await;

    let out = over_http(
        &server,
        &token,
        json!([
            {"op": "tools"},
            call("report_progress", json!({"message": "Schema read;\n  writing handlers"})),
            call("add_artifact", json!({"kind": "link", "value": "https://ci.example.com/runs/7"})),
            call("add_artifact", json!({"kind": "link", "value": "javascript:alert(1)"})),
            call("create_subtask", json!({"title": "Document the API", "description": "In docs/api.md."})),
            call("get_task", json!({})),
            call("get_task", json!({"id": dependency})),
            call("get_task", json!({"id": stranger})),
            call("report_progress", json!({"message": "x".repeat(501)})),
            call("list_tasks", json!({})),
            call("create_task", json!({"title": "Anything"})),
        ]),
    )
    .await;
    let r = results(&out);
    assert_eq!(tool_names(&r[0]), RUN_TOOLS);
    assert_eq!(answer(&r[1])["progress"], "Schema read; writing handlers");
    assert_eq!(answer(&r[2])["recorded"]["kind"], "link");
    assert!(refusal(&r[3]).contains("http:// or https://"), "{}", r[3]);
    let subtask = answer(&r[4]);
    assert_eq!(subtask["parentId"], own);
    assert_eq!(subtask["workspaceId"], ws.as_str());
    assert_eq!(subtask["maxAttempts"], 2, "a subtask runs like its task");
    let subtask = subtask["id"].as_str().unwrap().to_owned();
    let mine = answer(&r[5]);
    assert_eq!(mine["id"], own);
    assert_eq!(mine["progress"], "Schema read; writing handlers");
    assert_eq!(mine["children"][0]["id"], subtask.as_str());
    assert_eq!(mine["workers"][0]["id"], worker.as_str());
    assert_eq!(answer(&r[6])["status"], "completed");
    assert!(refusal(&r[7]).contains("a run may read only"), "{}", r[7]);
    assert!(refusal(&r[8]).contains("at most 500"), "{}", r[8]);
    for i in [9, 10] {
        assert_eq!(r[i]["protocolError"]["code"], -32602, "{}", r[i]);
    }
    // Its subtasks it may read.
    let out = over_http(
        &server,
        &token,
        json!([call("get_task", json!({"id": subtask}))]),
    )
    .await;
    assert_eq!(answer(&results(&out)[0])["parentId"], own);

    // What the tools did, as the API shows it.
    let (_, task) = admin.get(&format!("/api/tasks/{own}")).await;
    assert_eq!(task["progress"], "Schema read; writing handlers");
    let (_, shown) = admin.get(&format!("/api/workers/{worker}")).await;
    assert_eq!(shown["progress"], "Schema read; writing handlers");
    let (_, artifacts) = admin.get(&format!("/api/tasks/{own}/artifacts")).await;
    let links: Vec<&Value> = artifacts["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "link")
        .collect();
    assert_eq!(links.len(), 1, "{artifacts}");
    assert_eq!(links[0]["workerId"], worker.as_str());

    // The token is not a key for the HTTP API.
    let (status, body) = server.client(&token).get("/api/tasks").await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("/mcp"), "{body}");

    // Once the worker ends, its token stands for nobody.
    agent.move_worker(&worker, &["completed"]).await;
    let (status, _, _) = post_raw(
        &server,
        Some(&token),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(status, 401);
    let out = over_http(&server, &token, json!([{"op": "tools"}])).await;
    assert!(out["connectError"].is_string(), "{out}");
    let (status, _) = server.client(&token).get("/api/tasks").await;
    assert_eq!(status, 401);

    // A run of an account that may claim but not create cannot split its task.
    let (_, claimer) = admin
        .account(json!({"type": "service", "name": "ci"}), &ws, true, false)
        .await;
    admin.task(&ws, json!({"title": "Claimed by ci"})).await;
    let ci = server.client(&claimer);
    let (_, ci_token) = claimed(&ci).await;
    let out = over_http(
        &server,
        &ci_token,
        json!([call("create_subtask", json!({"title": "More"}))]),
    )
    .await;
    assert!(
        refusal(&results(&out)[0]).contains("no canCreate grant"),
        "{out}"
    );
}

/// `buildd mcp` serves the same tools on stdio with the key `buildd login` saved, as
/// `claude mcp add buildd -- buildd mcp` runs it.
#[tokio::test(flavor = "multi_thread")]
async fn buildd_mcp_serves_the_tools_on_stdio_with_the_saved_login() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    let (_, key) = admin
        .account(json!({"type": "user", "name": "me"}), &ws, false, true)
        .await;
    let home = tempfile::tempdir().unwrap();
    let buildd = env!("CARGO_BIN_EXE_buildd");
    let env = |extra: &[(&str, &str)]| {
        let mut env = vec![
            ("HOME", home.path().to_str().unwrap()),
            ("XDG_CONFIG_HOME", ""),
            ("BUILDD_SERVER", server.url.as_str()),
        ];
        env.extend_from_slice(extra);
        env.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<Vec<_>>()
    };
    let login = Command::new(buildd)
        .args(["login", "--api-key", &key])
        .env_remove("BUILDD_API_KEY")
        .envs(env(&[]))
        .output()
        .unwrap();
    assert!(login.status.success(), "{login:?}");

    let args = vec!["stdio".into(), buildd.into(), "mcp".into()];
    let steps = json!([
        {"op": "tools"},
        call("create_task", json!({"title": "From my own session"})),
        call("list_tasks", json!({})),
        call("get_task", json!({"id": "task-nope"})),
        call("report_progress", json!({"message": "no"})),
    ]);
    let out = drive(args, steps, env(&[])).await;
    assert_eq!(out["server"]["name"], "buildd", "{out}");
    assert!(
        out["server"]["instructions"]
            .as_str()
            .unwrap()
            .contains("coding tasks")
    );
    let r = results(&out);
    assert_eq!(tool_names(&r[0]), PEOPLE_TOOLS);
    let created = answer(&r[1]);
    assert_eq!(created["workspaceId"], ws.as_str());
    let id = created["id"].as_str().unwrap();
    assert_eq!(answer(&r[2])["tasks"][0]["id"], id);
    assert!(refusal(&r[3]).contains("not found"));
    assert_eq!(r[4]["protocolError"]["code"], -32602, "{}", r[4]);
    let (_, task) = admin.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(task["title"], "From my own session");

    // A key the server does not know: one line on stderr, and a failed exit.
    let refused = Command::new(buildd)
        .arg("mcp")
        .envs(env(&[("BUILDD_API_KEY", "buildd_user_nope")]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("401") || stderr.contains("unknown token"),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty(), "stdout is the protocol's alone");
}
