//! The terminal client end to end: the real `buildd` commands against a real server,
//! `--json` parsed, human output checked for content.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{ADMIN, Server};
use serde_json::{Value, json};

/// Runs `buildd ARGS` against `server` with the admin token unless `key` says otherwise.
fn buildd(server: &Server, key: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let home = tempfile::tempdir().unwrap();
    common::output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_buildd"))
            .args(args)
            .env("BUILDD_SERVER", &server.url)
            .env("BUILDD_API_KEY", key)
            .env("HOME", home.path())
            .env("XDG_DATA_HOME", home.path()),
        stdin.unwrap_or("").as_bytes(),
    )
}

fn ok_text(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn ok_json(output: &Output) -> Value {
    serde_json::from_str(&ok_text(output)).expect("--json prints JSON only")
}

fn one_line_error(output: &Output) -> String {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_client_flow() {
    let server = Server::sqlite(&[]);
    let run = |args: &[&str]| buildd(&server, ADMIN, args, None);

    let ws = ok_json(&run(&[
        "workspace",
        "create",
        "demo",
        "--repo",
        "https://example.invalid/demo.git",
        "--json",
    ]));
    let ws_id = ws["id"].as_str().unwrap().to_owned();
    assert!(ws_id.starts_with("ws-"));
    let listed = ok_text(&run(&["workspace", "list"]));
    assert!(listed.starts_with("ID"), "{listed}");
    assert!(
        listed.contains("demo") && listed.contains("https://example.invalid/demo.git"),
        "{listed}"
    );

    let account = ok_json(&run(&[
        "account",
        "create",
        "--type",
        "service",
        "--name",
        "bot",
        "--max-workers",
        "2",
        "--json",
    ]));
    let account_id = account["id"].as_str().unwrap().to_owned();
    let key = account["apiKey"].as_str().unwrap().to_owned();
    let granted = ok_text(&run(&[
        "account",
        "grant",
        &account_id,
        "--workspace",
        &ws_id,
        "--can-claim",
    ]));
    assert!(granted.contains("may now claim"), "{granted}");
    // The account rotates its own key: the old one stops, the new one works.
    let rotated = ok_text(&buildd(
        &server,
        &key,
        &["account", "rotate-key", &account_id],
        None,
    ));
    assert!(rotated.contains("the old key no longer works"), "{rotated}");
    let new_key = rotated
        .split_whitespace()
        .find(|w| w.starts_with("buildd_service_"))
        .expect("the new key is printed")
        .to_owned();
    one_line_error(&buildd(&server, &key, &["task", "list"], None));
    ok_text(&buildd(&server, &new_key, &["task", "list"], None));
    let key = new_key;
    let accounts = ok_text(&run(&["account", "list"]));
    assert!(
        accounts.contains("bot") && accounts.contains("service"),
        "{accounts}"
    );
    let human = ok_text(&run(&[
        "account", "create", "--type", "user", "--name", "max",
    ]));
    assert!(
        human.contains("Created user account acc-") && human.contains("buildd_user_"),
        "{human}"
    );

    let description = "The login test fails one run in ten.\nFind out why.";
    let created = ok_json(&buildd(
        &server,
        ADMIN,
        &[
            "task",
            "create",
            "--workspace",
            &ws_id,
            "--title",
            "Fix the flaky login test",
            "--description",
            "-",
            "--priority",
            "5",
            "--json",
        ],
        Some(description),
    ));
    let task_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["description"], description);
    assert_eq!(created["priority"], 5);
    let tasks = ok_json(&run(&["task", "list", "--workspace", &ws_id, "--json"]));
    assert_eq!(tasks.as_array().unwrap().len(), 1);
    let table = ok_text(&run(&["task", "list", "--status", "pending"]));
    assert!(
        table.contains("Fix the flaky login test") && table.contains("pending"),
        "{table}"
    );
    let shown = ok_text(&run(&["task", "show", &task_id]));
    assert!(
        shown.contains("Fix the flaky login test") && shown.contains("Find out why."),
        "{shown}"
    );

    // Watch it live while an agent works on it and asks a question.
    let watcher = {
        let (url, task_id) = (server.url.clone(), task_id.clone());
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_buildd"))
                .args([
                    "task",
                    "watch",
                    &task_id,
                    "--server",
                    &url,
                    "--api-key",
                    ADMIN,
                ])
                .output()
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let agent = server.client(&key);
    let wid = agent.claim_one().await;
    agent.move_worker(&wid, &["starting", "running"]).await;
    agent
        .ok(
            &format!("/api/workers/{wid}/messages"),
            json!({"messages": [{"type": "assistant", "message": {"content": [{"type": "text", "text": "Reading the test."}]}}]}),
        )
        .await;
    agent
        .patch(
            &format!("/api/workers/{wid}"),
            json!({"status": "waiting_input", "question": "Retry or fix the race?"}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replied = ok_text(&run(&["task", "reply", &task_id, "Fix the race."]));
    assert!(replied.contains("running again"), "{replied}");
    let beat = agent
        .ok(&format!("/api/workers/{wid}/heartbeat"), json!({}))
        .await;
    assert_eq!(beat["reply"], "Fix the race.");
    agent
        .ok(
            &format!("/api/workers/{wid}/messages"),
            json!({"messages": ["Fixed the race."]}),
        )
        .await;
    agent
        .patch(
            &format!("/api/workers/{wid}"),
            json!({"status": "completed", "costUsd": 0.37, "commitSha": "abc123"}),
        )
        .await;

    let watched = watcher.join().unwrap();
    let out = ok_text(&watched);
    for expected in [
        "assigned",
        "running",
        "waiting_input",
        "Retry or fix the race?",
        "Reading the test.",
        "Fixed the race.",
        "completed",
    ] {
        assert!(
            out.contains(expected),
            "watch output lacks {expected:?}:\n{out}"
        );
    }

    let logs = ok_text(&run(&["task", "logs", &task_id]));
    assert!(
        logs.contains("Reading the test.")
            && logs.contains("Fix the race.")
            && logs.contains("Fixed the race."),
        "{logs}"
    );
    let logs = ok_json(&run(&["task", "logs", &task_id, "--json"]));
    assert_eq!(logs.as_array().unwrap().len(), 3);
    assert_eq!(logs[0]["workerId"], wid.as_str());
    let shown = ok_json(&run(&["task", "show", &task_id, "--json"]));
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["workers"][0]["commitSha"], "abc123");

    // A watched task that is cancelled ends the watch with exit 1.
    let other = ok_json(&run(&[
        "task",
        "create",
        "--workspace",
        &ws_id,
        "--title",
        "Doomed",
        "--json",
    ]));
    let other_id = other["id"].as_str().unwrap().to_owned();
    let watcher = {
        let (url, id) = (server.url.clone(), other_id.clone());
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_buildd"))
                .args(["task", "watch", &id, "--server", &url, "--api-key", ADMIN])
                .output()
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ok_text(&run(&["task", "cancel", &other_id])).contains("Cancelled"));
    let watched = watcher.join().unwrap();
    assert_eq!(watched.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&watched.stderr).contains("cancelled"));

    // Errors are one line, with a non-zero exit.
    let err = one_line_error(&run(&["task", "show", "task-nope"]));
    assert!(
        err.contains("task task-nope not found") && err.contains("404"),
        "{err}"
    );
    let err = one_line_error(&buildd(&server, &key, &["account", "list"], None));
    assert!(err.contains("403"), "{err}");
}

#[test]
fn an_unreachable_server_is_one_clear_line() {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args([
            "task",
            "list",
            "--server",
            "http://127.0.0.1:9",
            "--api-key",
            "k",
        ])
        .env("HOME", home.path())
        .output()
        .unwrap();
    let err = one_line_error(&output);
    assert!(
        err.contains("cannot reach the buildd server at http://127.0.0.1:9"),
        "{err}"
    );
}

/// `buildd login` checks the key, keeps it (OS keyring, else a 0600 file), and later
/// commands use it without `--api-key`.
#[tokio::test]
async fn login_keeps_the_key_for_later_commands() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("mine").await;
    let (_, key) = admin
        .account(json!({"type": "user", "name": "u"}), &ws, true, true)
        .await;
    admin.task(&ws, json!({"title": "visible to u"})).await;
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_buildd"))
            .args(args)
            .args(["--server", &server.url])
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_DATA_HOME", home.path().join("data"))
            .env_remove("BUILDD_API_KEY")
            .output()
            .unwrap()
    };

    let err = one_line_error(&run(&["task", "list"]));
    assert!(err.contains("buildd login"), "{err}");
    let err = one_line_error(&run(&["login", "--api-key", "buildd_user_wrong"]));
    assert!(err.contains("401"), "{err}");

    let said = ok_text(&run(&["login", "--api-key", &key]));
    assert!(
        said.contains("Logged in") && said.contains("acc-"),
        "{said}"
    );
    let file = home.path().join("config/buildd/credentials.json");
    if said.contains("No OS keyring") {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    } else {
        assert!(
            !file.exists(),
            "with a keyring the key is not written to a file"
        );
    }
    let listed = ok_text(&run(&["task", "list"]));
    assert!(listed.contains("visible to u"), "{listed}");
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(env!("CARGO_BIN_EXE_buildd"))
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = ok_text(&output);
        assert!(
            script.contains("buildd") && script.contains("workspace"),
            "{shell}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    one_line_error(&output);
}

/// `task watch` rides out a server crash: it reconnects, resumes after the last event
/// it saw, and still sees the task end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("buildd.db").display());
    let first = Server::start(&db, dir.path(), &[]);
    let listen = first.url.trim_start_matches("http://").to_owned();
    let admin = first.admin();
    let (ws, _, key) = admin.workspace_with_claimer().await;
    let task = admin.task(&ws, json!({"title": "survivor"})).await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    let watcher = {
        let (url, id) = (first.url.clone(), task_id.clone());
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_buildd"))
                .args(["task", "watch", &id, "--server", &url, "--api-key", ADMIN])
                .output()
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wid = first.client(&key).claim_one().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    drop(first); // kill -9
    let second = Server::start_on(&listen, &db, dir.path(), &[]);
    let agent = second.client(&key);
    agent
        .move_worker(&wid, &["starting", "running", "completed"])
        .await;

    let watched = watcher.join().unwrap();
    let out = ok_text(&watched);
    assert!(
        out.contains("assigned") && out.contains("completed"),
        "{out}"
    );
    assert_eq!(
        out.matches(": running").count(),
        1,
        "no event seen twice:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_commands_chain_plan_and_continue_tasks() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let (_, key) = admin
        .account(json!({"type": "service", "name": "s"}), &ws, true, false)
        .await;
    let run = |args: &[&str]| buildd(&server, ADMIN, args, None);
    let first = ok_json(&run(&[
        "task",
        "create",
        "--workspace",
        &ws,
        "--title",
        "First",
        "--json",
    ]));
    let first_id = first["id"].as_str().unwrap();
    let second = ok_json(&run(&[
        "task",
        "create",
        "--workspace",
        &ws,
        "--title",
        "Second",
        "--depends-on",
        first_id,
        "--base-branch",
        "buildd/x",
        "--json",
    ]));
    assert_eq!(second["status"], "blocked");
    assert_eq!(second["dependsOn"], json!([first_id]));
    assert_eq!(second["baseBranch"], "buildd/x");
    let tree = ok_text(&run(&["task", "tree", second["id"].as_str().unwrap()]));
    assert!(tree.contains("blocked  Second"), "{tree}");
    assert!(
        tree.contains(&format!("after {first_id}  pending  First")),
        "{tree}"
    );

    // A plan, reported by hand, approved from the command line with an edit.
    let plan = ok_json(&run(&[
        "task",
        "create",
        "--workspace",
        &ws,
        "--title",
        "Plan",
        "--plan",
        "--json",
    ]));
    assert_eq!(plan["mode"], "plan");
    let plan_id = plan["id"].as_str().unwrap();
    let agent = server.client(&key);
    let claimed = agent.ok("/api/workers", json!({"taskId": plan_id})).await;
    let worker = claimed["workers"][0]["id"].as_str().unwrap().to_owned();
    agent.move_worker(&worker, &["starting", "running"]).await;
    let (status, _) = agent
        .patch(
            &format!("/api/workers/{worker}"),
            json!({"status": "completed", "result": {"text": "t", "branch": "b",
                   "plan": {"steps": [{"ref": "a", "title": "Only step"}]}}}),
        )
        .await;
    assert!(status.is_success());
    let edited = r#"{"steps": [{"ref": "x", "title": "Edited one"}, {"ref": "y", "title": "Edited two", "dependsOn": ["x"]}]}"#;
    let approved = ok_text(&buildd(
        &server,
        ADMIN,
        &["task", "approve", plan_id, "--plan", "-"],
        Some(edited),
    ));
    assert!(approved.contains("2 task(s) created"), "{approved}");
    assert!(approved.contains("Edited two"), "{approved}");
    let tree = ok_json(&run(&["task", "tree", plan_id, "--json"]));
    assert_eq!(tree["status"], "completed");
    assert_eq!(tree["children"].as_array().unwrap().len(), 2);
    // Both steps were made in one transaction, at one time: find the second by title.
    let children = tree["children"].as_array().unwrap();
    let edited_two = children
        .iter()
        .find(|c| c["title"] == "Edited two")
        .unwrap();
    assert_eq!(edited_two["dependencies"][0]["title"], "Edited one");
    let err = one_line_error(&run(&["task", "approve", plan_id]));
    assert!(err.contains("not planned") && err.contains("409"), "{err}");

    // Follow-up of the completed plan task; retry and instruct refuse clearly.
    let followup = ok_json(&run(&[
        "task",
        "followup",
        plan_id,
        "Now the docs",
        "--json",
    ]));
    assert_eq!(followup["parentId"], plan_id);
    let err = one_line_error(&run(&["task", "retry", first_id]));
    assert!(err.contains("only a failed or cancelled task"), "{err}");
    let err = one_line_error(&run(&["task", "instruct", first_id, "hurry"]));
    assert!(err.contains("no worker to instruct"), "{err}");
    let cancelled = ok_text(&run(&["task", "cancel", first_id]));
    assert!(cancelled.contains("Cancelled"), "{cancelled}");
    let (_, second_now) = admin
        .get(&format!("/api/tasks/{}", second["id"].as_str().unwrap()))
        .await;
    assert_eq!(second_now["status"], "failed", "{second_now}");
    let retried = ok_text(&run(&["task", "retry", first_id]));
    assert!(retried.contains("is pending again"), "{retried}");
    let (_, second_now) = admin
        .get(&format!("/api/tasks/{}", second["id"].as_str().unwrap()))
        .await;
    assert_eq!(second_now["status"], "blocked");
}
