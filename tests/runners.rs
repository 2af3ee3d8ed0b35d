//! Runners chosen per task and advertised per agent: the real Codex and Gemini CLIs
//! run offline against local stand-ins of their providers' APIs, writing files
//! through their own tools, with session, turns and cost reported, and a reply that
//! carries each CLI's session on; routing and fallback on both backends, with
//! command runners declared by name.

#[macro_use]
mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::agent::{Agent, LONG, Repo, wait_task, wait_until, workspace_and_key};
use common::models::{FakeGemini, FakeOpenAi, StandIn, coding_clis};
use common::{Api, Database, Server};

/// Creates a task with `fields` (runner, model, …) besides its title and description.
async fn task_with(admin: &Api, ws: &str, description: &str, fields: Value) -> String {
    let mut body = json!({ "title": "runner task", "description": description });
    body.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    admin.task(ws, body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The workers a task has had, oldest first.
async fn workers_of(admin: &Api, task_id: &str) -> Vec<Value> {
    let (_, list) = admin.get(&format!("/api/workers?taskId={task_id}")).await;
    let mut workers = list["workers"].as_array().unwrap().clone();
    workers.sort_by_key(|w| w["startedAt"].as_str().unwrap_or_default().to_owned());
    workers
}

/// `buildd task reply ID TEXT` as a person would type it.
fn reply(server: &Server, id: &str, text: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args(["task", "reply", id, text, "--server", &server.url])
        .args(["--api-key", common::ADMIN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server, its admin, a workspace and the checkout agents work in.
#[derive(Clone, Copy)]
struct World<'a> {
    server: &'a Server,
    admin: &'a Api,
    ws: &'a str,
    repo: &'a Repo,
}

/// A task for `runner` that writes a file, then one that asks first and writes the
/// answer after the reply; both must be committed on their branches, with the
/// CLI's session, turns and cost on the worker, and the reply must carry the same
/// conversation on.
async fn a_cli_writes_asks_and_carries_its_session_on(
    (runner, model): (&str, &str),
    stand_in: &StandIn,
    agent: &Agent,
    world: World<'_>,
) {
    let World {
        server,
        admin,
        ws,
        repo,
    } = world;
    agent.ready().await;
    let first = task_with(
        admin,
        ws,
        &format!("write {runner}.txt hello from {runner}"),
        json!({ "runner": runner, "model": model }),
    )
    .await;
    let done = wait_task(admin, &first, "completed").await;
    let branch = format!("buildd/{first}");
    assert_eq!(
        repo.show(&branch, &format!("{runner}.txt")),
        format!("hello from {runner}")
    );
    let worker = &workers_of(admin, &first).await[0];
    assert_eq!(worker["runner"], runner, "{worker}");
    assert_eq!(worker["model"], model, "{worker}");
    assert!(worker["costUsd"].as_f64().unwrap() > 0.0, "{worker}");
    assert!(worker["turns"].as_i64().unwrap() >= 2, "{worker}");
    assert!(worker["sessionId"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(
        worker["commitSha"].as_str().unwrap(),
        repo.git(&["rev-parse", &branch])
    );
    assert!(
        done["result"]["text"].as_str().unwrap().starts_with("Done"),
        "{done}"
    );
    assert!(
        stand_in.models().iter().all(|m| m == model),
        "{:?}",
        stand_in.models()
    );
    // The run's messages are the CLI's own JSON events.
    let wid = worker["id"].as_str().unwrap();
    let (_, messages) = admin.get(&format!("/api/workers/{wid}/messages")).await;
    assert!(
        messages["messages"].as_array().unwrap().len() >= 3,
        "{messages}"
    );

    // A follow-up carries the CLI's session on, on the parent's branch, with its runner.
    let followup = admin
        .ok(
            &format!("/api/tasks/{first}/followup"),
            json!({ "message": "write two.txt second" }),
        )
        .await;
    assert_eq!(followup["runner"], runner, "{followup}");
    let next = followup["id"].as_str().unwrap();
    wait_task(admin, next, "completed").await;
    let next_branch = format!("buildd/{next}");
    assert_eq!(repo.show(&next_branch, "two.txt"), "second");
    assert_eq!(
        repo.show(&next_branch, &format!("{runner}.txt")),
        format!("hello from {runner}")
    );
    let next_worker = &workers_of(admin, next).await[0];
    assert_eq!(
        next_worker["sessionId"], worker["sessionId"],
        "{next_worker}"
    );
    assert!(
        stand_in.saw_together(&[&format!("hello from {runner}"), "write two.txt second"]),
        "the follow-up's run did not remember its parent's conversation"
    );

    let second = task_with(
        admin,
        ws,
        "ask Which greeting?\nwrite greeting.txt {answer}",
        json!({ "runner": runner }),
    )
    .await;
    wait_task(admin, &second, "waiting_input").await;
    let asking = &workers_of(admin, &second).await[0];
    assert_eq!(asking["question"], "Which greeting?", "{asking}");
    let session = asking["sessionId"].as_str().unwrap().to_owned();
    reply(server, &second, "ahoy");
    wait_task(admin, &second, "completed").await;
    assert_eq!(
        repo.show(&format!("buildd/{second}"), "greeting.txt"),
        "ahoy"
    );
    let resumed = &workers_of(admin, &second).await[0];
    assert_eq!(resumed["sessionId"], session.as_str(), "{resumed}");
    assert!(
        stand_in.saw_together(&["ask Which greeting?", "ahoy"]),
        "the reply did not carry the conversation on"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_runs_a_task_asks_and_resumes_its_session() {
    let (codex, _) = coding_clis();
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let openai = FakeOpenAi::start().await;
    let repo = Repo::new();
    let scratch = tempfile::tempdir().unwrap();
    let codex_home = openai.codex_home(scratch.path());
    let runner = format!("codex={}", codex.display());
    let agent = Agent::start(
        &server.url,
        &key,
        repo.path(),
        &["--runner", &runner],
        &[
            ("CODEX_HOME", codex_home.to_str().unwrap()),
            ("OPENAI_API_KEY", "sk-test-not-a-real-key"),
            // Claude's key must not reach Codex's runs.
            ("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key"),
        ],
    );
    let world = World {
        server: &server,
        admin: &admin,
        ws: &ws,
        repo: &repo,
    };
    a_cli_writes_asks_and_carries_its_session_on(("codex", "gpt-5.5"), &openai.0, &agent, world)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_runs_a_task_asks_and_resumes_its_session() {
    let (_, gemini) = coding_clis();
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let google = FakeGemini::start().await;
    let repo = Repo::new();
    let home = tempfile::tempdir().unwrap();
    FakeGemini::sign_in(home.path());
    let runner = format!("gemini={}", gemini.display());
    let agent = Agent::start_in_home(
        home,
        &server.url,
        &key,
        repo.path(),
        &["--runner", &runner],
        &[
            ("GOOGLE_GEMINI_BASE_URL", google.0.url.as_str()),
            ("GEMINI_API_KEY", "test-not-a-real-key"),
        ],
    );
    let world = World {
        server: &server,
        admin: &admin,
        ws: &ws,
        repo: &repo,
    };
    a_cli_writes_asks_and_carries_its_session_on(
        ("gemini", "gemini-2.5-flash"),
        &google.0,
        &agent,
        world,
    )
    .await;
}

/// The shell command of a runner named `name` that writes `NAME.txt` into its
/// worktree and says which runner it was.
fn writing_runner(name: &str) -> String {
    format!("{name}=echo {name} > {name}.txt && echo done by {name}")
}

both_backends!(database:
    agents_get_only_tasks_whose_runner_they_have,
    a_task_falls_back_when_its_runners_account_budget_is_spent,
);

async fn agents_get_only_tasks_whose_runner_they_have(db: Database) {
    let server = db.serve(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let alpha_task = task_with(&admin, &ws, "for alpha", json!({ "runner": "alpha" })).await;
    let beta_task = task_with(&admin, &ws, "for beta", json!({ "runner": "beta" })).await;
    let nobodys = task_with(&admin, &ws, "for gamma", json!({ "runner": "gamma" })).await;

    // A claim without the runners the pending tasks name says so.
    let api = server.client(&key);
    let answer = api
        .ok("/api/workers/claim", json!({ "runners": ["delta"] }))
        .await;
    assert_eq!(answer["workers"], json!([]));
    assert_eq!(answer["reason"], "no_runner", "{answer}");
    let (code, refused) = api
        .post("/api/workers/claim", json!({ "runners": ["any"] }))
        .await;
    assert_eq!(code, 400, "{refused}");

    let alpha = Agent::start(
        &server.url,
        &key,
        repo.path(),
        &["--command", "true", "--runner", &writing_runner("alpha")],
        &[],
    );
    wait_task(&admin, &alpha_task, "completed").await;
    assert_eq!(
        repo.show(&format!("buildd/{alpha_task}"), "alpha.txt"),
        "alpha"
    );
    // The beta task waits: its agent is not there yet.
    let (_, beta) = admin.get(&format!("/api/tasks/{beta_task}")).await;
    assert_eq!(beta["status"], "pending");
    let beta_agent = Agent::start(
        &server.url,
        &key,
        repo.path(),
        &["--runner", &writing_runner("beta")],
        &[],
    );
    wait_task(&admin, &beta_task, "completed").await;
    assert_eq!(
        repo.show(&format!("buildd/{beta_task}"), "beta.txt"),
        "beta"
    );
    for (task, runner) in [(&alpha_task, "alpha"), (&beta_task, "beta")] {
        let workers = workers_of(&admin, task).await;
        assert_eq!(workers.len(), 1, "{workers:?}");
        assert_eq!(workers[0]["runner"], runner);
    }
    // The agents advertise what they run.
    let (_, agents) = admin.get("/api/agents").await;
    let mut advertised: Vec<Value> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["runners"].clone())
        .collect();
    advertised.sort_by_key(|r| r.to_string());
    assert_eq!(advertised, [json!(["beta"]), json!(["command", "alpha"])]);
    // Nobody runs gamma: it waits, untouched.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, gamma) = admin.get(&format!("/api/tasks/{nobodys}")).await;
    assert_eq!(
        (gamma["status"].as_str(), gamma["attempts"].as_i64()),
        (Some("pending"), Some(0))
    );
    drop((alpha, beta_agent));
}

async fn a_task_falls_back_when_its_runners_account_budget_is_spent(db: Database) {
    let server = db.serve(&["--lease-ttl", "2"]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    // One account runs "pricey" with a daily budget of $1; another runs "cheap".
    let (_, pricey_key) = admin
        .account(
            json!({ "type": "service", "name": "pricey", "maxCostPerDay": 1.0 }),
            &ws,
            true,
            false,
        )
        .await;
    let (_, cheap_key) = admin
        .account(
            json!({ "type": "service", "name": "cheap" }),
            &ws,
            true,
            false,
        )
        .await;
    let repo = Repo::new();
    // The pricey run reports $3 spent (a million input tokens of a Sonnet message,
    // in Claude's stream-json), then works on.
    let spend = r#"pricey=echo '{"type":"assistant","message":{"id":"m1","model":"claude-sonnet-4-5","usage":{"input_tokens":1000000,"output_tokens":0}}}'; sleep 60"#;
    let id = task_with(
        &admin,
        &ws,
        "spend",
        json!({ "runner": "pricey", "fallbackRunner": "cheap", "maxAttempts": 3 }),
    )
    .await;
    let _pricey = Agent::start(
        &server.url,
        &pricey_key,
        repo.path(),
        &["--runner", spend],
        &[],
    );
    let _cheap = Agent::start(
        &server.url,
        &cheap_key,
        repo.path(),
        &["--runner", &writing_runner("cheap")],
        &[],
    );
    wait_until(
        &admin,
        &format!("/api/tasks/{id}"),
        LONG,
        "completed",
        |t| t["status"] == "completed" || t["status"] == "failed",
    )
    .await;
    let workers = workers_of(&admin, &id).await;
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert_eq!(workers[0]["runner"], "pricey");
    assert_eq!(workers[0]["status"], "error");
    let error = workers[0]["error"].as_str().unwrap();
    assert!(error.contains("maxCostPerDay"), "{error}");
    assert!(
        error.contains("the next attempt runs with cheap (fallbackRunner)"),
        "{error}"
    );
    assert_eq!(workers[1]["runner"], "cheap");
    assert_eq!(workers[1]["status"], "completed");
    let (_, task) = admin.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(task["runner"], "cheap");
    assert_eq!(task["fallbackRunner"], "cheap");
    assert_eq!(repo.show(&format!("buildd/{id}"), "cheap.txt"), "cheap");
}

#[test]
fn agent_runners_says_what_this_machine_can_run_and_why_not() {
    let (codex, _) = coding_clis();
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args(["agent", "--runners", "--runner"])
        .arg(format!("codex={}", codex.display()))
        .args(["--runner", "aider=aider --yes"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home.path())
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .to_owned()
    };
    assert!(line("claude").contains(" no "), "{text}");
    assert!(
        line("claude").contains("No authentication configured"),
        "{text}"
    );
    let codex_line = line("codex");
    assert!(codex_line.contains(" yes "), "{text}");
    assert!(codex_line.contains("OPENAI_API_KEY"), "{text}");
    assert!(line("gemini").contains("no credentials"), "{text}");
    assert!(line("aider").contains("aider --yes"), "{text}");
    // A key never shows, only its variable's name.
    assert!(!text.contains("sk-test"), "{text}");

    // Nothing to run with: one line saying why, for each.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args([
            "agent",
            "--server",
            "http://127.0.0.1:9",
            "--api-key",
            "buildd_user_x",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no runner can run tasks here"), "{stderr}");
    assert!(stderr.contains("codex: no credentials"), "{stderr}");
}
