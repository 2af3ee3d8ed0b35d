//! `buildd agent`, the real binary, against a real `buildd serve`: with the real Claude
//! Code CLI talking to a local stand-in for the Messages API, and with a scripted
//! stand-in for Claude Code where a case needs precise control of the run.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::agent::{
    Agent, FakeAnthropic, FakeGitHub, LONG, Repo, claude_code, process_gone, scripted_agent, task,
    wait_task, wait_until, worker_of, workspace_and_key,
};
use common::{Server, github};

#[tokio::test(flavor = "multi_thread")]
async fn two_tasks_run_at_once_in_worktrees_with_claude_code_and_their_results_are_committed() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let anthropic = FakeAnthropic::start().await;
    let repo = Repo::new();
    let a = task(
        &admin,
        &ws,
        "Write a",
        "slow 1\nwrite notes/a.txt hello from A",
    )
    .await;
    let b = task(
        &admin,
        &ws,
        "Write b",
        "slow 1\nwrite notes/b.txt hello from B",
    )
    .await;
    let claude = claude_code().display().to_string();
    let _agent = Agent::start(
        &server.url,
        &key,
        repo.path(),
        &["--claude-bin", &claude, "--max-tasks", "2"],
        &anthropic.env(),
    );

    for (id, file, text) in [
        (&a, "notes/a.txt", "hello from A"),
        (&b, "notes/b.txt", "hello from B"),
    ] {
        let done = wait_task(&admin, id, "completed").await;
        let branch = format!("buildd/{id}");
        assert_eq!(repo.show(&branch, file), text);
        let worker = worker_of(&admin, id).await;
        assert_eq!(worker["branch"], branch.as_str());
        assert_eq!(
            worker["commitSha"].as_str().unwrap(),
            repo.git(&["rev-parse", &branch])
        );
        assert!(worker["costUsd"].as_f64().unwrap() > 0.0, "{worker}");
        assert!(worker["turns"].as_i64().unwrap() >= 2, "{worker}");
        assert!(worker["sessionId"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(done["result"]["branch"], branch.as_str());
        assert!(done["result"]["text"].as_str().unwrap().starts_with("Done"));

        let wid = worker["id"].as_str().unwrap();
        let (_, messages) = admin.get(&format!("/api/workers/{wid}/messages")).await;
        let types: Vec<&str> = messages["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["message"]["type"].as_str())
            .collect();
        for expected in ["system", "assistant", "user", "result"] {
            assert!(
                types.contains(&expected),
                "{expected} missing from {types:?}"
            );
        }
    }

    // Both ran at once: each started before the other finished.
    let (wa, wb) = (worker_of(&admin, &a).await, worker_of(&admin, &b).await);
    let at = |w: &Value, k: &str| w[k].as_str().unwrap().to_owned();
    assert!(
        at(&wa, "startedAt") < at(&wb, "finishedAt")
            && at(&wb, "startedAt") < at(&wa, "finishedAt")
    );
    // The user's checkout is as it was, and the worktrees are gone.
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
    assert!(!repo.path().join("notes").exists());
    assert_eq!(repo.git(&["worktree", "list"]).lines().count(), 1);
    assert!(anthropic.requests() >= 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_question_waits_for_a_reply_and_the_run_carries_on_in_the_same_session() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let anthropic = FakeAnthropic::start().await;
    let repo = Repo::new();
    let id = task(
        &admin,
        &ws,
        "Paint it",
        "ask Which colour?\nwrite colour.txt {answer}",
    )
    .await;
    let claude = claude_code().display().to_string();
    let _agent = Agent::start(
        &server.url,
        &key,
        repo.path(),
        &["--claude-bin", &claude],
        &anthropic.env(),
    );

    wait_task(&admin, &id, "waiting_input").await;
    let worker = worker_of(&admin, &id).await;
    assert_eq!(worker["status"], "waiting_input");
    assert_eq!(worker["question"], "Which colour?");
    let session = worker["sessionId"].as_str().unwrap().to_owned();

    // The answer goes in through the terminal client, as a person would give it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args([
            "task",
            "reply",
            &id,
            "teal",
            "--server",
            &server.url,
            "--api-key",
            common::ADMIN,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    wait_task(&admin, &id, "completed").await;
    assert_eq!(repo.show(&format!("buildd/{id}"), "colour.txt"), "teal");
    let worker = worker_of(&admin, &id).await;
    assert!(worker["question"].is_null());
    // Claude Code may give a resumed session a new id; the conversation must have
    // carried on, which the stand-in only does when it sees the earlier question.
    assert!(
        worker["sessionId"].as_str().is_some(),
        "{worker} (first session {session})"
    );
}

/// A home in which Claude Code is signed in (`claude`, then `/login`): its OAuth
/// login in `.claude/.credentials.json`, as Claude Code keeps it on Linux. `login` is
/// that file's text.
fn signed_in_home(login: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".claude")).unwrap();
    std::fs::write(home.path().join(".claude/.credentials.json"), login).unwrap();
    home
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_signed_in_on_the_machine_needs_no_key_in_the_environment() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let anthropic = FakeAnthropic::start().await;
    let repo = Repo::new();
    let claude = claude_code().display().to_string();
    let args = ["--claude-bin", claude.as_str(), "--once"];
    // Only the stand-in's address: no ANTHROPIC_API_KEY, no CLAUDE_CODE_OAUTH_TOKEN.
    let env = [("ANTHROPIC_BASE_URL", anthropic.url.as_str())];

    let login = r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-test","refreshToken":"sk-ant-ort01-test","expiresAt":9999999999999,"scopes":["user:inference","user:profile"],"subscriptionType":"max"}}"#;
    let id = task(&admin, &ws, "Signed in", "write seat.txt from the seat").await;
    let mut agent = Agent::start_in_home(
        signed_in_home(login),
        &server.url,
        &key,
        repo.path(),
        &args,
        &env,
    );
    assert!(agent.exit(LONG).await.success(), "{}", agent.log());
    wait_task(&admin, &id, "completed").await;
    assert_eq!(
        repo.show(&format!("buildd/{id}"), "seat.txt"),
        "from the seat"
    );
    assert!(anthropic.requests() > 0);

    // A login file Claude Code cannot use: the worker says so in one sentence.
    let id = task(&admin, &ws, "Signed out", "write nothing.txt never").await;
    let mut agent = Agent::start_in_home(
        signed_in_home("{}"),
        &server.url,
        &key,
        repo.path(),
        &args,
        &env,
    );
    assert!(!agent.exit(LONG).await.success());
    let worker = worker_of(&admin, &id).await;
    let error = worker["error"].as_str().unwrap();
    assert!(
        error.starts_with("Claude Code is not authenticated on the agent's machine"),
        "{worker}"
    );
    assert!(error.contains("Not logged in"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_claude_credentials_the_agent_refuses_to_start() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (_, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let mut agent = Agent::start(&server.url, &key, repo.path(), &[], &[]);
    let status = agent.exit(LONG).await;
    assert!(!status.success());
    assert!(
        agent.log().contains("No authentication configured"),
        "{}",
        agent.log()
    );
    // An empty variable is no credential either.
    let mut agent = Agent::start(
        &server.url,
        &key,
        repo.path(),
        &[],
        &[("ANTHROPIC_API_KEY", " ")],
    );
    assert!(!agent.exit(LONG).await.success());
    assert!(agent.log().contains("No authentication configured"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_refuses_the_admin_token_and_a_directory_that_is_not_a_checkout() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (_, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let mut agent = Agent::start(
        &server.url,
        common::ADMIN,
        repo.path(),
        &["--command", "true"],
        &[],
    );
    assert!(!agent.exit(LONG).await.success());
    assert!(
        agent.log().contains("needs an account key"),
        "{}",
        agent.log()
    );
    let plain = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&server.url, &key, plain.path(), &["--command", "true"], &[]);
    assert!(!agent.exit(LONG).await.success());
    assert!(
        agent.log().contains("is not a git checkout"),
        "{}",
        agent.log()
    );

    // Two agents cannot share one state directory (worktrees and spool).
    let first = Agent::start(&server.url, &key, repo.path(), &["--command", "true"], &[]);
    first.ready().await;
    let mut second = Agent::restart_from(
        &first.state_dir,
        &server.url,
        &key,
        repo.path(),
        &["--command", "true"],
        &[],
    );
    assert!(!second.exit(LONG).await.success());
    assert!(
        second.log().contains("another buildd agent is using"),
        "{}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_task_stops_the_whole_run_within_seconds() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let pids = tempfile::tempdir().unwrap();
    let p = pids.path().display();
    let id = task(
        &admin,
        &ws,
        "Long job",
        &format!("run: echo $$ > {p}/runner; sleep 300 & echo $! > {p}/child; wait"),
    )
    .await;
    let _agent = scripted_agent(&server.url, &key, &repo, &[], &[]);
    wait_task(&admin, &id, "running").await;
    let read_pid = |name: &str| -> i32 {
        let path = pids.path().join(name);
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("{name} pid never written");
    };
    let (runner, child) = (read_pid("runner"), read_pid("child"));
    assert!(!process_gone(child));

    admin
        .ok(&format!("/api/tasks/{id}/cancel"), json!({}))
        .await;
    let worker = wait_until(
        &admin,
        &format!("/api/workers?taskId={id}"),
        Duration::from_secs(15),
        "worker ended after the cancel",
        |w| w["workers"][0]["status"] == "error",
    )
    .await;
    assert_eq!(worker["workers"][0]["error"], "the task was cancelled");
    assert!(process_gone(runner), "the runner outlived the cancel");
    assert!(
        process_gone(child),
        "the runner's child outlived the cancel"
    );
    let (_, t) = admin.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(t["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_stops_the_run_and_start_resumes_the_same_session() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("claude.log");
    // The first run waits until it is stopped; the resumed one (no "run:" lines in its
    // prompt) ends at once.
    let id = task(
        &admin,
        &ws,
        "Pausable",
        "run: echo started > started.txt; sleep 300",
    )
    .await;
    let _agent = scripted_agent(
        &server.url,
        &key,
        &repo,
        &[],
        &[("FAKE_CLAUDE_LOG", log.to_str().unwrap())],
    );
    wait_task(&admin, &id, "running").await;
    let worker = wait_until(
        &admin,
        &format!("/api/workers?taskId={id}"),
        LONG,
        "session reported",
        |w| w["workers"][0]["sessionId"].is_string(),
    )
    .await;
    let wid = worker["workers"][0]["id"].as_str().unwrap().to_owned();
    let session = worker["workers"][0]["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();

    admin
        .ok(&format!("/api/workers/{wid}/pause"), json!({}))
        .await;
    // The run is stopped: the stand-in's log holds one run, and nothing comes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, w) = admin.get(&format!("/api/workers/{wid}")).await;
    assert_eq!(w["status"], "paused", "{w}");
    let (_, t) = admin.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(t["status"], "assigned");

    admin
        .ok(&format!("/api/workers/{wid}/start"), json!({}))
        .await;
    wait_task(&admin, &id, "completed").await;
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(runs, format!("resume=\nresume={session}\n"));
    // The file the first run wrote before the pause is in the committed result.
    assert_eq!(repo.show(&format!("buildd/{id}"), "started.txt"), "started");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_passes_its_cost_cap_is_stopped() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    // One message of a million input tokens: about $3, over the task's $0.50.
    let id = admin
        .task(
            &ws,
            json!({ "title": "Expensive", "maxCostUsd": 0.5,
                    "description": "run: say 1 thinking 1000000; sleep 300" }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let _agent = scripted_agent(&server.url, &key, &repo, &[], &[]);
    let worker = wait_until(
        &admin,
        &format!("/api/workers?taskId={id}"),
        Duration::from_secs(20),
        "worker stopped",
        |w| w["workers"][0]["status"] == "error",
    )
    .await;
    let worker = &worker["workers"][0];
    assert!(
        worker["error"].as_str().unwrap().contains("maxCostUsd"),
        "{worker}"
    );
    assert!(worker["costUsd"].as_f64().unwrap() > 0.5, "{worker}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_whose_agent_is_killed_is_finished_by_another_agent() {
    let server = Server::sqlite(&["--lease-ttl", "2"]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().display();
    // The first attempt hangs; the second finishes.
    let id = task(
        &admin,
        &ws,
        "Survive",
        &format!("run: if [ ! -e {m}/first ]; then touch {m}/first; sleep 300; fi; echo finished > result.txt"),
    )
    .await;
    let first = scripted_agent(&server.url, &key, &repo, &[], &[]);
    wait_task(&admin, &id, "running").await;
    // Kill it once the run itself is under way (the task shows running a moment
    // before the runner starts).
    for _ in 0..400 {
        if marks.path().join("first").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        marks.path().join("first").exists(),
        "the first run never started"
    );
    first.signal(libc::SIGKILL);
    drop(first);

    let _second = scripted_agent(&server.url, &key, &repo, &[], &[]);
    let done = wait_task(&admin, &id, "completed").await;
    assert_eq!(done["attempts"], 2);
    let (_, workers) = admin.get(&format!("/api/workers?taskId={id}")).await;
    let statuses: Vec<&str> = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains(&"error") && statuses.contains(&"completed"),
        "{statuses:?}"
    );
    assert_eq!(repo.show(&format!("buildd/{id}"), "result.txt"), "finished");
}

/// An agent killed while git was adding a worktree leaves an entry with an empty
/// `commondir`, locked "initializing": git itself then fails every `worktree add` in
/// the checkout, and `git worktree prune` keeps the entry. (Found by bench/chaos.)
#[tokio::test(flavor = "multi_thread")]
async fn a_worktree_entry_left_half_made_by_a_kill_does_not_block_later_tasks() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let agent = scripted_agent(&server.url, &key, &repo, &[], &[]);
    agent.ready().await;
    let dead = agent.state_dir.join("worktrees/task-killed-midway");
    let entry = repo.path().join(".git/worktrees/task-killed-midway");
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::write(entry.join("locked"), "initializing").unwrap();
    std::fs::write(entry.join("gitdir"), format!("{}/.git\n", dead.display())).unwrap();
    std::fs::write(entry.join("commondir"), "").unwrap();

    let id = task(&admin, &ws, "After the kill", "run: echo fine > result.txt").await;
    let done = wait_task(&admin, &id, "completed").await;
    assert_eq!(done["attempts"], 1, "{done}");
    assert!(!entry.exists(), "the half-made entry is still there");
    assert_eq!(repo.show(&format!("buildd/{id}"), "result.txt"), "fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_finished_while_the_server_is_down_is_delivered_when_it_is_back() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", tmp.path().join("buildd.db").display());
    let server = Server::start(&db, tmp.path(), &["--lease-ttl", "30"]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let gate = tempfile::tempdir().unwrap();
    let g = gate.path().display();
    // The run goes on until the test opens the gate, while the server is down.
    let id = task(
        &admin,
        &ws,
        "Offline",
        &format!("run: until [ -e {g}/open ]; do sleep 0.1; done; echo offline > offline.txt"),
    )
    .await;
    let _agent = scripted_agent(&server.url, &key, &repo, &[], &[]);
    wait_task(&admin, &id, "running").await;

    let listen = server.url.trim_start_matches("http://").to_owned();
    drop(server);
    std::fs::write(gate.path().join("open"), "").unwrap();
    // Give the agent time to finish the run and fail to report it.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let server = Server::start_on(&listen, &db, tmp.path(), &["--lease-ttl", "30"]);
    let admin = server.admin();
    let done = wait_task(&admin, &id, "completed").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(repo.show(&format!("buildd/{id}"), "offline.txt"), "offline");
    let worker = worker_of(&admin, &id).await;
    let wid = worker["id"].as_str().unwrap();
    let (_, messages) = admin.get(&format!("/api/workers/{wid}/messages")).await;
    let last = messages["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["message"]["type"], "result", "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_short_runs_finish_stops_long_ones_and_exits_zero() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let short = task(&admin, &ws, "Short", "run: sleep 1; echo short > short.txt").await;
    let long = task(&admin, &ws, "Long", "run: sleep 300").await;
    let mut agent = scripted_agent(
        &server.url,
        &key,
        &repo,
        &["--max-tasks", "2", "--grace", "3"],
        &[],
    );
    for id in [&short, &long] {
        wait_task(&admin, id, "running").await;
    }
    agent.signal(libc::SIGTERM);
    let status = agent.exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status:?}; log:\n{}", agent.log());

    let (_, s) = admin.get(&format!("/api/tasks/{short}")).await;
    assert_eq!(s["status"], "completed", "{s}");
    let (_, l) = admin.get(&format!("/api/tasks/{long}")).await;
    assert_eq!(l["status"], "pending", "{l}");
    let worker = worker_of(&admin, &long).await;
    assert!(
        worker["error"].as_str().unwrap().contains("shut down"),
        "{worker}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn once_runs_one_task_and_exits_with_its_outcome() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();

    // Nothing queued: nothing to do is not a failure.
    let mut agent = scripted_agent(&server.url, &key, &repo, &["--once"], &[]);
    assert!(agent.exit(LONG).await.success(), "{}", agent.log());

    let good = task(&admin, &ws, "Good", "run: echo ok > ok.txt").await;
    let bad = task(&admin, &ws, "Bad", "run: echo broken; exit 3").await;
    let mut agent = scripted_agent(&server.url, &key, &repo, &["--once"], &[]);
    assert!(agent.exit(LONG).await.success(), "{}", agent.log());
    let (_, g) = admin.get(&format!("/api/tasks/{good}")).await;
    assert_eq!(g["status"], "completed");
    let (_, b) = admin.get(&format!("/api/tasks/{bad}")).await;
    assert_eq!(b["status"], "pending", "--once took one task only");

    let mut agent = scripted_agent(&server.url, &key, &repo, &["--once"], &[]);
    let status = agent.exit(LONG).await;
    assert_eq!(status.code(), Some(1), "{}", agent.log());
    let worker = worker_of(&admin, &bad).await;
    assert_eq!(worker["status"], "error");
    assert!(
        worker["error"].as_str().unwrap().contains("exit code 3"),
        "{worker}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pr_pushes_the_branch_and_reports_the_pull_request() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, Some("https://github.com/acme/widgets")).await;
    let github = FakeGitHub::start(0).await;
    let repo = Repo::new();
    let origin = repo.with_origin();
    let id = task(
        &admin,
        &ws,
        "Add a changelog",
        "run: echo '# Changes' > CHANGELOG.md",
    )
    .await;
    let mut agent = scripted_agent(
        &server.url,
        &key,
        &repo,
        &["--pr", "--once", "--github-api-url", &github.url],
        &[("GITHUB_TOKEN", "ghp_test")],
    );
    assert!(agent.exit(LONG).await.success(), "{}", agent.log());

    let branch = format!("buildd/{id}");
    let pushed = std::process::Command::new("git")
        .arg("-C")
        .arg(origin.path())
        .args(["rev-parse", &branch])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&pushed.stdout).trim(),
        repo.git(&["rev-parse", &branch])
    );
    let pulls = github.pulls.lock().unwrap().clone();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].0, "acme/widgets");
    assert_eq!(pulls[0].1, "Bearer ghp_test");
    assert_eq!(pulls[0].2["head"], branch.as_str());
    assert_eq!(pulls[0].2["base"], "main");
    assert_eq!(pulls[0].2["title"], "Add a changelog");
    let worker = worker_of(&admin, &id).await;
    assert_eq!(worker["prUrl"], "https://github.com/acme/widgets/pull/1");
    let (_, t) = admin.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(
        t["result"]["prUrl"],
        "https://github.com/acme/widgets/pull/1"
    );
}

/// CI failing on a task's pull request makes a fix that carries on that branch: the
/// fix's commit lands on origin on top of the task's, and the pull request stays the
/// one it was. (The stand-in runner does what the failing check's summary says.)
#[tokio::test(flavor = "multi_thread")]
async fn a_ci_fix_commits_on_the_pull_requests_branch() {
    let server = Server::sqlite(&["--github-webhook-secret", github::SECRET]);
    let hooks = github::Sender::to(&server);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, Some("https://github.com/acme/widgets")).await;
    let fake = FakeGitHub::start(0).await;
    let repo = Repo::new();
    let origin = repo.with_origin();
    let on_origin = |rev: &str| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(origin.path())
            .args(["rev-parse", rev])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let run_once = || {
        scripted_agent(
            &server.url,
            &key,
            &repo,
            &["--pr", "--once", "--github-api-url", &fake.url],
            &[("GITHUB_TOKEN", "ghp_test")],
        )
    };
    let id = task(
        &admin,
        &ws,
        "Add a changelog",
        "run: echo '# Changes' > CHANGELOG.md",
    )
    .await;
    let mut agent = run_once();
    assert!(agent.exit(LONG).await.success(), "{}", agent.log());
    let branch = format!("buildd/{id}");
    let first = on_origin(&branch);

    let failed = github::payload("check_run.completed", |v| {
        v["repository"]["full_name"] = "acme/widgets".into();
        let run = &mut v["check_run"];
        run["name"] = "changelog".into();
        run["conclusion"] = "failure".into();
        run["head_sha"] = first.clone().into();
        run["output"]["title"] = "The changelog has no entry".into();
        run["output"]["summary"] = "run: echo '- Added widgets' >> CHANGELOG.md".into();
        run["check_suite"]["head_branch"] = branch.clone().into();
    });
    let answer = hooks.deliver("check_run", "ci-1", &failed).await;
    assert_eq!(answer["reactions"][0]["action"], "fix_created", "{answer}");
    let fix = answer["reactions"][0]["taskId"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut agent = run_once();
    assert!(agent.exit(LONG).await.success(), "{}", agent.log());
    let (_, fixed) = admin.get(&format!("/api/tasks/{fix}")).await;
    assert_eq!(fixed["status"], "completed", "{fixed}");
    let fixed_at = on_origin(&branch);
    assert_eq!(
        on_origin(&format!("{fixed_at}^")),
        first,
        "the fix is one commit on top of the task's"
    );
    assert_eq!(
        repo.show(&branch, "CHANGELOG.md"),
        "# Changes\n- Added widgets"
    );
    let worker = worker_of(&admin, &fix).await;
    assert_eq!(worker["branch"], branch.as_str());
    assert_eq!(worker["prUrl"], "https://github.com/acme/widgets/pull/1");
    assert_eq!(fake.pulls.lock().unwrap().len(), 1, "one pull request");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_postgres_cluster_an_idle_agent_takes_work_created_through_another_server() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        Server::start(&url, dir.path(), &[]),
        Server::start(&url, dir.path(), &[]),
    );
    let admin = a.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let agent = scripted_agent(&b.url, &key, &repo, &[], &[]);
    agent.ready().await;
    // Created through server A while the agent idles on server B's event stream.
    let ids = [
        task(&admin, &ws, "One", "run: echo 1 > one.txt").await,
        task(&admin, &ws, "Two", "run: echo 2 > two.txt").await,
    ];
    for (id, file, text) in [(&ids[0], "one.txt", "1"), (&ids[1], "two.txt", "2")] {
        wait_task(&admin, id, "completed").await;
        assert_eq!(repo.show(&format!("buildd/{id}"), file), text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_task_dispatches_a_github_workflow_whose_agent_runs_it_once() {
    // The stand-in answers the first dispatch with a 500: the server must retry.
    let github = FakeGitHub::start(1).await;
    let server = Server::sqlite(&[
        "--github-token",
        "ghp_test",
        "--github-api-url",
        &github.url,
    ]);
    let admin = server.admin();
    let (ws, _) = workspace_and_key(&admin, None).await;
    let (_, action_key) = admin
        .account(
            json!({"type": "action", "name": "ci", "githubRepo": "acme/widgets"}),
            &ws,
            true,
            false,
        )
        .await;
    let (_, service_key) = admin
        .account(json!({"type": "service", "name": "vm"}), &ws, true, false)
        .await;
    // An action account elsewhere is not woken for this workspace's tasks.
    let other_ws = admin.workspace("elsewhere").await;
    admin
        .account(
            json!({"type": "action", "name": "other", "githubRepo": "acme/other"}),
            &other_ws,
            true,
            false,
        )
        .await;

    let anyone = task(&admin, &ws, "For anyone", "run: true").await;
    let action = admin
        .task(&ws, json!({"title": "For CI", "runnerPreference": "action", "description": "run: echo ci > ci.txt"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut dispatched = Vec::new();
    for _ in 0..200 {
        dispatched = github.dispatches.lock().unwrap().clone();
        if dispatched.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        dispatched.len(),
        2,
        "one refused dispatch and its retry: {dispatched:?}"
    );
    for (repo, auth, body) in &dispatched {
        assert_eq!(repo, "acme/widgets");
        assert_eq!(auth, "Bearer ghp_test");
        assert_eq!(
            body,
            &json!({"event_type": "buildd-task", "client_payload": {"task_id": action}})
        );
    }

    // A service account never gets the action task.
    let service = server.client(&service_key);
    let claimed = service
        .ok("/api/workers/claim", json!({"maxTasks": 10}))
        .await;
    let ids: Vec<&str> = claimed["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["task"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![anyone.as_str()]);

    // The workflow's job: `buildd agent --once` with the action account's key.
    let repo = Repo::new();
    let mut agent = scripted_agent(&server.url, &action_key, &repo, &["--once"], &[]);
    assert!(agent.exit(LONG).await.success(), "{}", agent.log());
    let (_, t) = admin.get(&format!("/api/tasks/{action}")).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(repo.show(&format!("buildd/{action}"), "ci.txt"), "ci");

    let failing = admin
        .task(&ws, json!({"title": "Broken CI", "runnerPreference": "action", "description": "run: exit 1"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut agent = scripted_agent(&server.url, &action_key, &repo, &["--once"], &[]);
    let status = agent.exit(LONG).await;
    assert_eq!(status.code(), Some(1), "{}", agent.log());
    let worker = worker_of(&admin, &failing).await;
    assert_eq!(worker["status"], "error");
}

/// An agent running the real Claude Code against `anthropic`.
fn claude_agent(server: &Server, key: &str, repo: &Repo, anthropic: &FakeAnthropic) -> Agent {
    let claude = claude_code().display().to_string();
    Agent::start(
        &server.url,
        key,
        repo.path(),
        &["--claude-bin", &claude, "--max-tasks", "2"],
        &anthropic.env(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_from_claude_code_is_revised_in_its_session_approved_and_its_steps_run_in_order() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let anthropic = FakeAnthropic::start().await;
    let repo = Repo::new();
    let plan_task = admin
        .task(
            &ws,
            json!({
                "title": "Add a table and its API",
                "mode": "plan",
                "description": "step schema | Add the schema | write schema.sql create table t; |\n\
                                step api | Add the API | write api.txt GET /t | schema",
            }),
        )
        .await;
    let plan_id = plan_task["id"].as_str().unwrap().to_owned();
    let _agent = claude_agent(&server, &key, &repo, &anthropic);
    let planned = wait_task(&admin, &plan_id, "planned").await;
    let steps = planned["result"]["plan"]["steps"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(steps.len(), 2, "{planned}");
    assert_eq!(steps[1]["dependsOn"], json!(["schema"]));
    let first = worker_of(&admin, &plan_id).await;
    assert!(
        repo.git(&["branch", "--list", &format!("buildd/{plan_id}")])
            .is_empty()
            || repo.git(&["rev-parse", &format!("buildd/{plan_id}")])
                == repo.git(&["rev-parse", "HEAD"]),
        "a planning run commits nothing"
    );

    // Revised: planning runs again in the same session, with the feedback.
    let feedback = "step docs | Write the docs | write docs.md how to use t | api";
    admin
        .ok(
            &format!("/api/tasks/{plan_id}/revise"),
            json!({ "feedback": feedback }),
        )
        .await;
    let replanned = wait_until(
        &admin,
        &format!("/api/tasks/{plan_id}"),
        LONG,
        "planned again",
        |t| {
            t["status"] == "planned"
                && t["result"]["plan"]["steps"]
                    .as_array()
                    .is_some_and(|s| s.len() == 3)
        },
    )
    .await;
    assert!(
        anthropic.saw_together(&["step schema | Add the schema", feedback]),
        "the revision carried on the first planning session"
    );
    let (_, workers) = admin.get(&format!("/api/workers?taskId={plan_id}")).await;
    let second = &workers["workers"][0];
    assert_eq!(second["sessionId"], first["sessionId"], "{workers}");
    assert_eq!(replanned["result"]["plan"]["steps"][2]["ref"], "docs");

    let approved = admin
        .ok(&format!("/api/tasks/{plan_id}/approve"), json!({}))
        .await;
    let children: Vec<String> = approved["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(children.len(), 3);
    let mut done = Vec::new();
    for id in &children {
        done.push(wait_task(&admin, id, "completed").await);
    }
    assert_eq!(
        repo.show(&format!("buildd/{}", children[0]), "schema.sql"),
        "create table t;"
    );
    assert_eq!(
        repo.show(&format!("buildd/{}", children[1]), "api.txt"),
        "GET /t"
    );
    assert_eq!(
        repo.show(&format!("buildd/{}", children[2]), "docs.md"),
        "how to use t"
    );
    for pair in done.windows(2) {
        let claimed: chrono::DateTime<chrono::Utc> =
            pair[1]["claimedAt"].as_str().unwrap().parse().unwrap();
        let finished: chrono::DateTime<chrono::Utc> =
            pair[0]["completedAt"].as_str().unwrap().parse().unwrap();
        assert!(
            claimed >= finished,
            "a step started before the one it depends on had completed"
        );
    }
    let (_, tree) = admin.get(&format!("/api/tasks/{plan_id}")).await;
    assert_eq!(tree["status"], "completed");
    assert_eq!(tree["children"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_followup_resumes_its_parents_claude_session_on_its_branch() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let anthropic = FakeAnthropic::start().await;
    let repo = Repo::new();
    let parent = task(&admin, &ws, "Write one", "write one.txt first").await;
    let _agent = claude_agent(&server, &key, &repo, &anthropic);
    wait_task(&admin, &parent, "completed").await;
    let parent_worker = worker_of(&admin, &parent).await;

    let followup = admin
        .ok(
            &format!("/api/tasks/{parent}/followup"),
            json!({ "message": "write two.txt second" }),
        )
        .await;
    let id = followup["id"].as_str().unwrap().to_owned();
    assert_eq!(followup["parentId"], parent.as_str());
    assert_eq!(followup["baseBranch"], format!("buildd/{parent}"));
    assert_eq!(followup["resumeSessionId"], parent_worker["sessionId"]);
    wait_task(&admin, &id, "completed").await;
    let branch = format!("buildd/{id}");
    assert_eq!(repo.show(&branch, "two.txt"), "second");
    assert_eq!(
        repo.show(&branch, "one.txt"),
        "first",
        "it started from the parent's branch"
    );
    let parent_commit = parent_worker["commitSha"].as_str().unwrap();
    repo.git(&["merge-base", "--is-ancestor", parent_commit, &branch]);
    let worker = worker_of(&admin, &id).await;
    assert_eq!(
        worker["sessionId"], parent_worker["sessionId"],
        "the same session went on"
    );
    assert!(
        anthropic.saw_together(&["write one.txt first", "write two.txt second"]),
        "the follow-up's run remembered its parent's conversation"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instruction_reaches_the_running_claude_code_session() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let anthropic = FakeAnthropic::start().await;
    let repo = Repo::new();
    let id = task(&admin, &ws, "Write slowly", "slow 2\nwrite first.txt one").await;
    let agent = claude_agent(&server, &key, &repo, &anthropic);
    wait_task(&admin, &id, "running").await;
    let worker = worker_of(&admin, &id).await;
    let worker_id = worker["id"].as_str().unwrap();
    admin
        .ok(
            &format!("/api/workers/{worker_id}/instruct"),
            json!({ "message": "write extra.txt as instructed" }),
        )
        .await;
    wait_task(&admin, &id, "completed").await;
    let branch = format!("buildd/{id}");
    assert_eq!(repo.show(&branch, "first.txt"), "one");
    assert_eq!(repo.show(&branch, "extra.txt"), "as instructed");
    assert!(
        agent
            .log()
            .contains("passed an instruction to the running session"),
        "{}",
        agent.log()
    );
    let messages = admin.messages_of(worker_id).await;
    assert!(
        messages.iter().any(|m| m["type"] == "user_instruction"),
        "the instruction is in the worker's messages"
    );
    // One worker, one session: the instruction needed no second run.
    assert_eq!(worker_of(&admin, &id).await["id"], worker_id);
}

/// A run of the real Claude Code that asks, is answered and writes two files: its
/// change is recorded as the diff of its branch (what `git diff` says), and
/// `buildd task logs` and `buildd task diff` show it readably. With
/// `BUILDD_RECORD_TRANSCRIPT=FILE`, the run's messages are written to FILE, one JSON
/// per line: how the renderer's golden transcripts under `tests/fixtures/transcripts`
/// were recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_claude_code_run_records_its_diff_and_its_transcript_reads_well() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let anthropic = FakeAnthropic::start().await;
    let repo = Repo::new();
    std::fs::write(repo.path().join("README.md"), "# demo\nold line\n").unwrap();
    repo.git(&["add", "README.md"]);
    repo.git(&["commit", "-qm", "readme"]);
    let base = repo.git(&["rev-parse", "HEAD"]);
    let id = task(
        &admin,
        &ws,
        "Paint and note",
        "ask Which colour?\nwrite colour.txt {answer}\nwrite notes/today.md painted it",
    )
    .await;
    let _agent = claude_agent(&server, &key, &repo, &anthropic);
    wait_task(&admin, &id, "waiting_input").await;
    admin
        .ok(
            &format!("/api/tasks/{id}/reply"),
            json!({ "message": "teal" }),
        )
        .await;
    wait_task(&admin, &id, "completed").await;
    let worker = worker_of(&admin, &id).await;
    let wid = worker["id"].as_str().unwrap();
    let messages = admin.messages_of(wid).await;
    if let Some(path) = std::env::var_os("BUILDD_RECORD_TRANSCRIPT") {
        let lines: Vec<String> = messages.iter().map(|m| m.to_string()).collect();
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    // The recorded diff is git's diff of the branch against where the run started.
    let branch = format!("buildd/{id}");
    let (status, diff) = admin.get(&format!("/api/workers/{wid}/diff")).await;
    assert_eq!(status.as_u16(), 200, "{diff}");
    assert_eq!(diff["baseSha"], base.as_str());
    assert_eq!(diff["headSha"], repo.git(&["rev-parse", &branch]).as_str());
    let git_diff = repo.git(&["diff", "-M", "--no-color", &format!("{base}..{branch}")]);
    assert_eq!(diff["patch"].as_str().unwrap().trim_end(), git_diff);
    let files: Vec<(&str, i64, i64)> = diff["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap(),
                f["added"].as_i64().unwrap(),
                f["removed"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(files, [("colour.txt", 1, 0), ("notes/today.md", 1, 0)]);
    assert_eq!(
        (diff["added"].as_i64(), diff["removed"].as_i64()),
        (Some(2), Some(0))
    );
    assert_eq!(diff["truncated"], false);
    let patch = admin
        .http
        .get(format!(
            "{}/api/workers/{wid}/diff?format=patch",
            server.url
        ))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert!(
        patch.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/x-diff")
    );
    assert_eq!(patch.text().await.unwrap().trim_end(), git_diff);

    // The terminal shows it readably: the transcript and the diff (no colour when
    // not on a terminal).
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_buildd"))
            .args(args)
            .args(["--server", &server.url, "--api-key", common::ADMIN])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let logs = cli(&["task", "logs", &id]);
    for expected in [
        "? Which colour?",
        "↳ you: teal",
        "→ Write colour.txt",
        "→ Write notes/today.md",
        "■ success · 3 turns",
    ] {
        assert!(logs.contains(expected), "{expected:?} not in:\n{logs}");
    }
    assert!(
        !logs.contains('\x1b') && !logs.contains("\"tools\""),
        "{logs}"
    );
    let shown = cli(&["task", "diff", &id]);
    assert!(
        shown.contains("2 file(s), +2 -0") && shown.contains("+teal"),
        "{shown}"
    );
    let json_logs: Value = serde_json::from_str(&cli(&["task", "logs", &id, "--json"])).unwrap();
    assert_eq!(json_logs.as_array().unwrap().len(), messages.len());

    // A review from the terminal: a follow-up from the reviewed branch carries the
    // comments, and its run addresses them.
    let reviewed = cli(&[
        "task",
        "review",
        &id,
        "--json",
        "--comment",
        "colour.txt:1:Darker, please.\nwrite colour.txt deep teal",
        "--summary",
        "Otherwise good.",
    ]);
    let reviewed: Value = serde_json::from_str(&reviewed).unwrap();
    let followup = reviewed["followup"]["id"].as_str().unwrap();
    assert_eq!(reviewed["followup"]["parentId"], id.as_str());
    assert!(
        reviewed["comment"]["body"]
            .as_str()
            .unwrap()
            .contains("colour.txt:1: Darker, please.")
    );
    wait_task(&admin, followup, "completed").await;
    assert!(anthropic.saw_together(&["colour.txt:1: Darker, please.", "Overall: Otherwise good."]));
    // It continues from the reviewed branch: that branch's commits, then the fix.
    let again = worker_of(&admin, followup).await;
    let fixed = format!("buildd/{followup}");
    assert_eq!(again["branch"], fixed.as_str());
    repo.git(&["merge-base", "--is-ancestor", &branch, &fixed]);
    assert_eq!(repo.show(&fixed, "colour.txt"), "deep teal");
    let (_, second) = admin
        .get(&format!(
            "/api/workers/{}/diff",
            again["id"].as_str().unwrap()
        ))
        .await;
    assert!(
        second["patch"]
            .as_str()
            .unwrap()
            .contains("-teal\n+deep teal"),
        "{second}"
    );
}

/// A run that writes more than the diff keeps, and a binary file: the counts are
/// whole, the patch is cut at 1 MiB and says so, the binary is marked; a cancelled
/// run's change is recorded too.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_or_binary_change_is_recorded_bounded() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, key) = workspace_and_key(&admin, None).await;
    let repo = Repo::new();
    let big = task(
        &admin,
        &ws,
        "Big",
        "run: seq 1 400000 > big.txt; printf 'PNG\\000\\001\\002' > logo.png",
    )
    .await;
    let _agent = scripted_agent(&server.url, &key, &repo, &[], &[]);
    wait_task(&admin, &big, "completed").await;
    let worker = worker_of(&admin, &big).await;
    let (_, diff) = admin
        .get(&format!(
            "/api/workers/{}/diff",
            worker["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(diff["truncated"], true);
    let patch = diff["patch"].as_str().unwrap();
    assert!(
        patch.len() <= 1024 * 1024 && patch.len() > 1000 * 1000,
        "{}",
        patch.len()
    );
    assert!(patch.ends_with('\n'), "cut at a line");
    let files = diff["files"].as_array().unwrap();
    let file = |name: &str| files.iter().find(|f| f["path"] == name).unwrap().clone();
    assert_eq!(file("big.txt")["added"], 400000, "the counts are whole");
    assert_eq!(file("logo.png")["binary"], true);

    // Cancelled mid-run: what it had changed is committed and recorded.
    let slow = task(&admin, &ws, "Slow", "run: echo half > half.txt; sleep 300").await;
    wait_task(&admin, &slow, "running").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin
        .ok(&format!("/api/tasks/{slow}/cancel"), json!({}))
        .await;
    let worker = worker_of(&admin, &slow).await;
    let wid = worker["id"].as_str().unwrap().to_owned();
    let diff = wait_until(
        &admin,
        &format!("/api/workers/{wid}/diff"),
        Duration::from_secs(20),
        "the cancelled run's diff",
        |d| d["files"].is_array(),
    )
    .await;
    assert_eq!(diff["files"][0]["path"], "half.txt", "{diff}");
}

/// A raw JSON-RPC `tools/list` at `/mcp` with `token`: the HTTP status and the tools'
/// names (empty when refused).
async fn mcp_tool_names(server: &Server, token: &str) -> (u16, Vec<String>) {
    let answer = reqwest::Client::new()
        .post(format!("{}/mcp", server.url))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    let names = body["result"]["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    (status, names)
}

/// The real Claude Code, under `buildd agent`, calls buildd's MCP tools with its
/// worker's token (never the agent's key): its progress line shows on the task, the
/// subtask it creates has its task as parent, its link is recorded; the token opens
/// only the run's own tools, and stops working once the worker has ended.
#[tokio::test(flavor = "multi_thread")]
async fn claude_code_reports_progress_and_splits_work_through_buildds_mcp_tools() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    // Creating subtasks takes the account's canCreate, as creating any task does.
    let (_, key) = admin
        .account(json!({"type": "service", "name": "vm"}), &ws, true, true)
        .await;
    let anthropic = FakeAnthropic::start().await;
    let repo = Repo::new();
    let id = task(
        &admin,
        &ws,
        "Write the notes",
        "slow 1\n\
         mcp report_progress {\"message\": \"Writing the notes\"}\n\
         mcp create_subtask {\"title\": \"Translate the notes\", \"description\": \"Translate notes.txt into French.\"}\n\
         mcp add_artifact {\"kind\": \"link\", \"value\": \"https://preview.example.com/notes\"}\n\
         write notes.txt hello",
    )
    .await;
    let agent = claude_agent(&server, &key, &repo, &anthropic);
    wait_task(&admin, &id, "running").await;
    let worker_id = worker_of(&admin, &id).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The run's MCP configuration: the worker's token, in a file only its owner reads.
    let config_file = agent
        .state_dir
        .join("mcp")
        .join(format!("{worker_id}.json"));
    let config: Value = serde_json::from_slice(&std::fs::read(&config_file).unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let auth = config["mcpServers"]["buildd"]["headers"]["Authorization"]
        .as_str()
        .unwrap();
    let token = auth.strip_prefix("Bearer ").unwrap().to_owned();
    assert!(token.starts_with("buildd_worker_"), "{token}");
    assert_ne!(token, key);
    let (status, names) = mcp_tool_names(&server, &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        names,
        [
            "report_progress",
            "add_artifact",
            "create_subtask",
            "get_task"
        ]
    );

    let done = wait_task(&admin, &id, "completed").await;
    assert_eq!(done["progress"], "Writing the notes", "{done}");
    assert_eq!(repo.show(&format!("buildd/{id}"), "notes.txt"), "hello");
    let (_, detail) = admin.get(&format!("/api/tasks/{id}")).await;
    let children = detail["children"].as_array().unwrap();
    assert_eq!(children.len(), 1, "{detail}");
    let (_, subtask) = admin
        .get(&format!(
            "/api/tasks/{}",
            children[0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(subtask["title"], "Translate the notes");
    assert_eq!(subtask["parentId"], id.as_str());
    assert_eq!(subtask["workspaceId"], ws.as_str());
    let (_, artifacts) = admin.get(&format!("/api/tasks/{id}/artifacts")).await;
    assert!(
        artifacts["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "link" && a["value"] == "https://preview.example.com/notes"),
        "{artifacts}"
    );
    // The calls are in the run's transcript like any tool call.
    let messages = admin.messages_of(&worker_id).await;
    let called = |tool: &str| {
        messages.iter().any(|m| {
            m["type"] == "assistant"
                && m["message"]["content"][0]["name"] == format!("mcp__buildd__{tool}")
        })
    };
    assert!(called("report_progress") && called("create_subtask"));
    assert!(
        !messages.iter().any(|m| m.to_string().contains(&token)),
        "the token is in no message"
    );

    // The worker has ended: its token opens nothing, and its file is gone.
    assert_eq!(mcp_tool_names(&server, &token).await, (401, Vec::new()));
    assert!(!config_file.exists());
    drop(agent);
}
