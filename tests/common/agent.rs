//! What the agent's tests share: the real `buildd agent` as a process, a git checkout
//! to work in, the real Claude Code CLI, a local stand-in for the Anthropic Messages
//! API it talks to, a scripted stand-in for Claude Code, and a stand-in GitHub API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Api;

/// How long the agent tests wait for something that should happen within seconds.
pub const LONG: Duration = Duration::from_secs(60);

/// A workspace, and a user account granted to claim there; returns (workspace, key).
pub async fn workspace_and_key(admin: &Api, repo_url: Option<&str>) -> (String, String) {
    let ws = admin
        .ok(
            "/api/workspaces",
            json!({ "name": "widgets", "repoUrl": repo_url }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, key) = admin
        .account(
            json!({ "type": "user", "name": "laptop" }),
            &ws,
            true,
            false,
        )
        .await;
    (ws, key)
}

pub async fn task(admin: &Api, ws: &str, title: &str, description: &str) -> String {
    admin
        .task(ws, json!({ "title": title, "description": description }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until the task is in `status`, or has ended otherwise (then fails at once).
pub async fn wait_task(admin: &Api, id: &str, status: &str) -> Value {
    let task = wait_until(admin, &format!("/api/tasks/{id}"), LONG, status, |t| {
        t["status"] == status
            || ["completed", "failed", "cancelled"]
                .iter()
                .any(|s| t["status"] == *s)
    })
    .await;
    assert_eq!(task["status"], status, "{task}");
    task
}

/// An agent that runs the scripted stand-in for Claude Code, with `flags` added.
pub fn scripted_agent(
    server: &str,
    key: &str,
    repo: &Repo,
    flags: &[&str],
    env: &[(&str, &str)],
) -> Agent {
    let bin = fake_claude().display().to_string();
    let mut all = vec!["--claude-bin", bin.as_str()];
    all.extend_from_slice(flags);
    let mut vars = vec![FAKE_CREDENTIALS];
    vars.extend_from_slice(env);
    Agent::start(server, key, repo.path(), &all, &vars)
}

/// The one worker a task has had so far.
pub async fn worker_of(admin: &Api, task_id: &str) -> Value {
    let (_, list) = admin.get(&format!("/api/workers?taskId={task_id}")).await;
    let workers = list["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{list}");
    workers[0].clone()
}

/// A made-up Anthropic key: enough for the agent's start-up check.
pub const FAKE_CREDENTIALS: (&str, &str) = ("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key");

/// The real Claude Code CLI, installed from npm into `tests/claude-code` the first time
/// a test needs it (`npm ci`, from the committed lockfile).
pub fn claude_code() -> PathBuf {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/claude-code");
            super::npm_ci(&dir, "@anthropic-ai/claude-code");
            let bin = dir.join("node_modules/.bin/claude");
            let version = Command::new(&bin).arg("--version").output().unwrap();
            assert!(version.status.success(), "claude --version failed");
            bin
        })
        .clone()
}

/// The scripted stand-in for Claude Code (`tests/fixtures/fake-claude`).
pub fn fake_claude() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-claude")
}

/// A git checkout with one commit, as a user's would be.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        std::fs::write(repo.path().join("README.md"), "# widgets\n").unwrap();
        repo.git(&["add", "README.md"]);
        repo.git(&[
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "commit",
            "-q",
            "-m",
            "initial",
        ]);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git in the checkout and returns its stdout; panics if git fails.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A file as committed on `branch`.
    pub fn show(&self, branch: &str, file: &str) -> String {
        self.git(&["show", &format!("{branch}:{file}")])
    }

    /// Gives the checkout an `origin`: a bare repository in a temporary directory,
    /// which the returned value keeps.
    pub fn with_origin(&self) -> tempfile::TempDir {
        let origin = tempfile::tempdir().unwrap();
        let out = Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(origin.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        self.git(&["remote", "add", "origin", origin.path().to_str().unwrap()]);
        origin
    }
}

/// A running `buildd agent`, killed when dropped.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
    pub state_dir: PathBuf,
    _home: tempfile::TempDir,
}

impl Agent {
    /// Starts `buildd agent --dir REPO ARGS…` against `server` with `key`, in a home of
    /// its own. Only the variables in `env` reach it besides the basics (no Claude
    /// credentials unless given there).
    pub fn start(
        server: &str,
        key: &str,
        repo: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let home = tempfile::tempdir().unwrap();
        let state_dir = home.path().join("agent");
        Agent::start_in(home, state_dir, server, key, repo, args, env)
    }

    /// Like [`Agent::start`], in `home` as it was prepared (a signed-in Claude Code's
    /// `.claude/`, say).
    pub fn start_in_home(
        home: tempfile::TempDir,
        server: &str,
        key: &str,
        repo: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let state_dir = home.path().join("agent");
        Agent::start_in(home, state_dir, server, key, repo, args, env)
    }

    /// Like [`Agent::start`], reusing the state directory of an earlier agent (its
    /// spool and worktrees), as a restarted agent on the same machine would.
    pub fn restart_from(
        state_dir: &Path,
        server: &str,
        key: &str,
        repo: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let home = tempfile::tempdir().unwrap();
        Agent::start_in(home, state_dir.to_owned(), server, key, repo, args, env)
    }

    fn start_in(
        home: tempfile::TempDir,
        state_dir: PathBuf,
        server: &str,
        key: &str,
        repo: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let mut command = Command::new(env!("CARGO_BIN_EXE_buildd"));
        command
            .arg("agent")
            .arg("--dir")
            .arg(repo)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("BUILDD_SERVER", server)
            .env("BUILDD_API_KEY", key)
            .env("BUILDD_AGENT_DIR", &state_dir)
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("BUILDD_LOG", "info,buildd=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start buildd agent");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if std::env::var_os("BUILDD_TEST_LOG").is_some() {
                    eprintln!("[agent] {line}");
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Agent {
            child,
            log,
            state_dir,
            _home: home,
        }
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the agent has checked its key and checkout and is about to claim.
    pub async fn ready(&self) {
        self.logged("agent ready").await;
    }

    /// Waits (up to 20 s) until the agent's log holds `text`, and returns the log.
    pub async fn logged(&self, text: &str) -> String {
        for _ in 0..800 {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the agent never logged {text:?}; its log:\n{}", self.log());
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits for the agent to exit by itself, up to `limit`.
    pub async fn exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent did not exit within {limit:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `GET path` until `done` holds for its JSON, up to `limit`; returns that JSON.
pub async fn wait_until(
    api: &Api,
    path: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (status, body) = api.get(path).await;
        if status.is_success() && done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}; last {path}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A local stand-in for the Anthropic Messages API, enough for Claude Code to run a
/// task offline. It plays the model by following lines of the task's prompt:
/// `write PATH TEXT` (a `Write` tool call; `{answer}` in TEXT becomes the person's
/// answer), `mcp TOOL JSON` (a call of buildd's MCP tool `mcp__buildd__TOOL` with JSON
/// as its input), `ask QUESTION` (ends the turn with a question, before any write),
/// and `slow SECS` (waits that long before each answer). `write` lines in later user
/// messages of the conversation (an instruction, a follow-up) are done after the
/// prompt's. Asked for structured output (Claude Code's `StructuredOutput` tool), it
/// returns a plan of the conversation's `step REF | TITLE | DESCRIPTION | DEP,DEP`
/// lines. It keeps every conversation it was sent, to tell what a run remembered.
pub struct FakeAnthropic {
    pub url: String,
    requests: Arc<AtomicUsize>,
    conversations: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct FakeState {
    requests: Arc<AtomicUsize>,
    conversations: Arc<Mutex<Vec<String>>>,
}

impl FakeAnthropic {
    pub async fn start() -> FakeAnthropic {
        let state = FakeState {
            requests: Arc::new(AtomicUsize::new(0)),
            conversations: Arc::new(Mutex::new(Vec::new())),
        };
        let app = axum::Router::new()
            .route("/v1/messages", axum::routing::post(messages))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeAnthropic {
            url,
            requests: state.requests,
            conversations: state.conversations,
        }
    }

    /// Whether one request's conversation held all of `texts` in its user messages.
    pub fn saw_together(&self, texts: &[&str]) -> bool {
        self.conversations
            .lock()
            .unwrap()
            .iter()
            .any(|c| texts.iter().all(|t| c.contains(t)))
    }

    /// The model requests it answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The environment an agent needs to run the real Claude Code against this stand-in.
    pub fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("ANTHROPIC_BASE_URL", self.url.as_str()),
            ("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key"),
        ]
    }
}

/// The text of a message's content (a string, or its text blocks).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Every text block of the conversation's user messages, in order, and of the
/// system messages between them: Claude Code hands a message that came mid-turn on
/// stdin to the model as one ("The user sent a new message while you were working").
fn user_texts(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .filter(|m| m["role"] == "user" || m["role"] == "system")
        .flat_map(|m| match &m["content"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(blocks) => blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The plan of the conversation's `step REF | TITLE | DESCRIPTION | DEPS` lines.
fn plan_of(texts: &[String]) -> Value {
    let steps: Vec<Value> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.trim().strip_prefix("step "))
        .map(|rest| {
            let parts: Vec<&str> = rest.split('|').map(str::trim).collect();
            let deps: Vec<&str> = parts
                .get(3)
                .map(|d| {
                    d.split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            json!({ "ref": parts[0], "title": parts.get(1).copied().unwrap_or(parts[0]),
                    "description": parts.get(2).copied().unwrap_or(""), "dependsOn": deps })
        })
        .collect();
    json!({ "steps": steps })
}

async fn messages(State(state): State<FakeState>, Json(body): Json<Value>) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    // To see what Claude Code sends, when a test of it fails.
    if std::env::var_os("FAKE_ANTHROPIC_DUMP").is_some() {
        eprintln!(
            "[anthropic] {}",
            serde_json::to_string(&body["messages"]).unwrap()
        );
    }
    let system = text_of(&body["system"]);
    let history = body["messages"].as_array().cloned().unwrap_or_default();
    let prompt = history
        .first()
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let cwd = system
        .split("Primary working directory: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .map(str::trim)
        .map(str::to_owned);
    let tool_results = history
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .count();
    // A person's answer: a later user message that is text rather than tool results.
    let answer = history
        .iter()
        .skip(1)
        .rev()
        .filter(|m| m["role"] == "user")
        .filter(|m| {
            m["content"].is_string()
                || m["content"]
                    .as_array()
                    .is_some_and(|b| b.iter().all(|b| b["type"] == "text"))
        })
        .find_map(|m| {
            let text = text_of(&m["content"]);
            // Claude Code may wrap context around it; the answer is the last block.
            let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
            Some(last.trim().to_owned())
        });

    let texts = user_texts(&history);
    if cwd.is_some() {
        state.conversations.lock().unwrap().push(texts.join("\n"));
    }
    // The tool calls the conversation asks for, in order: `write PATH TEXT` and
    // `mcp TOOL JSON` (a call of buildd's MCP tool TOOL with JSON as its input).
    let mut calls = Vec::new();
    let mut writes = 0;
    for line in texts.iter().flat_map(|t| t.lines()) {
        let line = line.trim();
        if let Some((path, text)) = line.strip_prefix("write ").and_then(|r| r.split_once(' ')) {
            writes += 1;
            calls.push(Call::Write(path.to_owned(), text.to_owned()));
        } else if let Some((tool, input)) =
            line.strip_prefix("mcp ").and_then(|r| r.split_once(' '))
        {
            let input = serde_json::from_str(input).expect("an mcp line's input is JSON");
            calls.push(Call::Mcp(tool.to_owned(), input));
        }
    }
    let wants_plan = body["tools"]
        .as_array()
        .is_some_and(|tools| tools.iter().any(|t| t["name"] == "StructuredOutput"));
    let last_is_tool_result = history.last().is_some_and(|m| {
        m["content"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"))
    });
    let mut question = None;
    let mut slow = 0;
    for line in prompt.lines() {
        let line = line.trim();
        if let Some(q) = line.strip_prefix("ask ") {
            question = Some(q.to_owned());
        } else if let Some(secs) = line.strip_prefix("slow ") {
            slow = secs.parse().unwrap_or(0);
        }
    }
    if slow > 0 {
        tokio::time::sleep(Duration::from_secs(slow)).await;
    }

    let model = body["model"]
        .as_str()
        .unwrap_or("claude-sonnet-4-5")
        .to_owned();
    let reply = match (&cwd, &question, &answer) {
        // Not the task's conversation (some side request): a plain short answer.
        (None, _, _) => Reply::Text("OK".into()),
        (Some(_), _, _) if wants_plan && last_is_tool_result => Reply::Text("Plan ready.".into()),
        (Some(_), _, _) if wants_plan => Reply::Tool {
            name: "StructuredOutput".into(),
            input: plan_of(&texts),
            id: format!("toolu_plan_{}", history.len()),
        },
        (Some(_), Some(q), None) => {
            Reply::Text(format!("I need to know one thing first.\nQUESTION: {q}"))
        }
        (Some(cwd), _, _) => match calls.get(tool_results) {
            Some(Call::Write(path, text)) => Reply::Tool {
                name: "Write".into(),
                input: json!({
                    "file_path": format!("{cwd}/{path}"),
                    "content": format!("{}\n", text.replace("{answer}", answer.as_deref().unwrap_or(""))),
                }),
                id: format!("toolu_{tool_results}"),
            },
            Some(Call::Mcp(tool, input)) => Reply::Tool {
                name: format!("mcp__buildd__{tool}"),
                input: input.clone(),
                id: format!("toolu_{tool_results}"),
            },
            None => Reply::Text(format!("Done: wrote {writes} file(s).")),
        },
    };
    if body["stream"] == true {
        (
            StatusCode::OK,
            [("content-type", "text/event-stream")],
            reply.stream(&model),
        )
            .into_response()
    } else {
        Json(reply.message(&model)).into_response()
    }
}

/// A tool call a conversation asks the stand-in to make.
enum Call {
    Write(String, String),
    Mcp(String, Value),
}

enum Reply {
    Text(String),
    /// A tool call: `Write`, or `StructuredOutput` with a plan.
    Tool {
        name: String,
        input: Value,
        id: String,
    },
}

impl Reply {
    fn block(&self) -> Value {
        match self {
            Reply::Text(text) => json!({ "type": "text", "text": text }),
            Reply::Tool { name, input, id } => json!({
                "type": "tool_use", "id": id, "name": name, "input": input
            }),
        }
    }

    fn stop_reason(&self) -> &'static str {
        match self {
            Reply::Text(_) => "end_turn",
            Reply::Tool { .. } => "tool_use",
        }
    }

    fn message(&self, model: &str) -> Value {
        json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [self.block()], "stop_reason": self.stop_reason(), "stop_sequence": null,
            "usage": { "input_tokens": 1000, "output_tokens": 500 }
        })
    }

    /// The answer as the Messages API streams it: `message_start` … `message_stop`.
    fn stream(&self, model: &str) -> String {
        let mut events = vec![(
            "message_start",
            json!({ "type": "message_start", "message": {
                "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": { "input_tokens": 1000, "output_tokens": 1 } } }),
        )];
        match self {
            Reply::Text(text) => {
                events.push(("content_block_start", json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } })));
                events.push(("content_block_delta", json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": text } })));
            }
            Reply::Tool { id, name, .. } => {
                let input = self.block()["input"].to_string();
                events.push(("content_block_start", json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "tool_use", "id": id, "name": name, "input": {} } })));
                events.push(("content_block_delta", json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "input_json_delta", "partial_json": input } })));
            }
        }
        events.push((
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 0 }),
        ));
        events.push(("message_delta", json!({ "type": "message_delta", "delta": { "stop_reason": self.stop_reason(), "stop_sequence": null }, "usage": { "output_tokens": 500 } })));
        events.push(("message_stop", json!({ "type": "message_stop" })));
        events
            .into_iter()
            .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
            .collect()
    }
}

/// What [`FakeGitHub`] was sent: the repository, the `Authorization` header and the
/// body of each request.
pub type Received = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A stand-in for the GitHub REST API: it records pull requests and repository
/// dispatches, and answers the first `fail_dispatches` dispatches with a 500.
pub struct FakeGitHub {
    pub url: String,
    pub pulls: Received,
    pub dispatches: Received,
}

#[derive(Clone)]
struct GitHubState {
    pulls: Received,
    dispatches: Received,
    fail_dispatches: Arc<AtomicUsize>,
}

impl FakeGitHub {
    pub async fn start(fail_dispatches: usize) -> FakeGitHub {
        let state = GitHubState {
            pulls: Arc::default(),
            dispatches: Arc::default(),
            fail_dispatches: Arc::new(AtomicUsize::new(fail_dispatches)),
        };
        let app = axum::Router::new()
            .route(
                "/repos/{owner}/{repo}/pulls",
                axum::routing::post(open_pull).get(list_pulls),
            )
            .route(
                "/repos/{owner}/{repo}/dispatches",
                axum::routing::post(dispatch),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeGitHub {
            url,
            pulls: state.pulls,
            dispatches: state.dispatches,
        }
    }
}

fn authorization(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn open_pull(
    State(state): State<GitHubState>,
    axum::extract::Path((owner, repo)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let auth = authorization(&headers);
    if auth != "Bearer ghp_test" {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "message": "Bad credentials" })),
        )
            .into_response();
    }
    let mut pulls = state.pulls.lock().unwrap();
    // As GitHub does: one open pull request per head branch.
    if pulls
        .iter()
        .any(|(_, _, open)| open["head"] == body["head"])
    {
        let message = "Validation Failed: A pull request already exists";
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "message": message })),
        )
            .into_response();
    }
    pulls.push((format!("{owner}/{repo}"), auth, body));
    let number = pulls.len();
    (
        StatusCode::CREATED,
        Json(json!({ "number": number, "html_url": format!("https://github.com/{owner}/{repo}/pull/{number}") })),
    )
        .into_response()
}

/// `GET /repos/{owner}/{repo}/pulls?head=OWNER:BRANCH`: the open pull request of a
/// branch.
async fn list_pulls(
    State(state): State<GitHubState>,
    axum::extract::Path((owner, repo)): axum::extract::Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    let head = query.get("head").cloned().unwrap_or_default();
    let branch = head.split_once(':').map_or(head.as_str(), |(_, b)| b);
    let pulls = state.pulls.lock().unwrap();
    let found: Vec<Value> = pulls
        .iter()
        .enumerate()
        .filter(|(_, (_, _, open))| open["head"] == branch)
        .map(|(i, _)| json!({ "number": i + 1, "html_url": format!("https://github.com/{owner}/{repo}/pull/{}", i + 1) }))
        .collect();
    Json(Value::Array(found))
}

async fn dispatch(
    State(state): State<GitHubState>,
    axum::extract::Path((owner, repo)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    state.dispatches.lock().unwrap().push((
        format!("{owner}/{repo}"),
        authorization(&headers),
        body,
    ));
    let failing = state
        .fail_dispatches
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "message": "try later" })),
        )
            .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}
