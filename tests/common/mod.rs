//! What the integration tests share: the real `buildd` binary started on a real
//! database, a small JSON client for it, and a fresh Postgres database per test.
#![allow(dead_code)] // each test file uses its own part of this module

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub mod agent;
pub mod github;
pub mod models;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Runs each named test, `async fn NAME(server: Server)`, twice: against a server on a
/// new SQLite file, and on a fresh Postgres database (said and skipped when
/// `BUILDD_TEST_DATABASE_URL` is not set). The test file imports `Server` and declares
/// `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! both_backends {
    (database: $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(super::common::Database::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    let Some(url) = super::common::pg_database().await else {
                        return;
                    };
                    super::$name(super::common::Database::postgres(url)).await;
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name(super::Server::sqlite(&[])).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    let Some(url) = super::common::pg_database().await else {
                        return;
                    };
                    let dir = tempfile::tempdir().unwrap();
                    super::$name(super::Server::start(&url, dir.path(), &[])).await;
                }
            )*
        }
    };
}

/// A database for a test to start servers on (with the flags it needs), for
/// `both_backends!(database: …)`, whose tests take one instead of a started server.
pub struct Database {
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Database {
    pub fn sqlite() -> Database {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("buildd.db").display());
        Database { url, dir }
    }

    pub fn postgres(url: String) -> Database {
        let dir = tempfile::tempdir().unwrap();
        Database { url, dir }
    }

    pub fn serve(&self, extra: &[&str]) -> Server {
        Server::start(&self.url, self.dir.path(), extra)
    }
}

pub const ADMIN: &str = "buildd_admin_test-token";

/// The Python of a virtualenv `target/NAME` with `requirements` (a file of the
/// repository) installed, made the first time (`pip install -r`); `probe` is a module
/// whose import says the install is there.
pub fn venv_python(name: &str, requirements: &str, probe: &str) -> PathBuf {
    static MAKING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join(name);
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", &format!("import {probe}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is needed for this test");
        assert!(made.success(), "python3 -m venv {} failed", venv.display());
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "-r"])
            .arg(root.join(requirements))
            .status()
            .expect("pip");
        assert!(installed.success(), "pip install -r {requirements} failed");
        assert!(
            ready(&python),
            "{probe} did not install from {requirements}"
        );
    }
    python
}

/// A benchmark's setting from the environment, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs a benchmark on two runtime threads, as the machines it is measured on have two
/// cores.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// The Postgres server tests may create databases on, from `BUILDD_TEST_DATABASE_URL`.
pub fn pg_base_url() -> Option<String> {
    std::env::var("BUILDD_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A fresh database for one test (see [`fresh_pg_database`]), or `None`, said on
/// stderr, when `BUILDD_TEST_DATABASE_URL` is not set.
pub async fn pg_database() -> Option<String> {
    let Some(base) = pg_base_url() else {
        eprintln!("BUILDD_TEST_DATABASE_URL is not set: Postgres not tested here");
        return None;
    };
    Some(fresh_pg_database(&base).await)
}

/// Creates an empty database for one test and returns its URL. Each test gets its own
/// so that tests run in parallel without seeing each other's rows.
pub async fn fresh_pg_database(base: &str) -> String {
    use sqlx::Connection;
    let name = format!("buildd_test_{}", rand_suffix());
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to BUILDD_TEST_DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
    let query = base
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{prefix}/{name}{query}")
}

/// `npm ci` in `dir` (one of the test-only npm projects under `tests/`) unless its
/// `node_modules` holds `package` already.
/// A field of `/proc/PID/status` given in kB (`VmRSS:`, `VmHWM:`), in MiB.
pub fn proc_status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

pub fn npm_ci(dir: &Path, package: &str) {
    if dir.join("node_modules").join(package).exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .expect("npm is needed for these tests");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// Runs `command` with `stdin` written to its standard input and waits for its
/// output.
pub fn output_with_stdin(command: &mut Command, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}_{}", std::process::id(), nanos)
}

/// A running `buildd serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// Everything the server logged so far.
    pub log: Arc<Mutex<String>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// A server on a new SQLite file in a temporary directory.
    pub fn sqlite(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}", tmp.path().join("buildd.db").display());
        let mut server = Server::start(&db, tmp.path(), extra);
        server._tmp = Some(tmp);
        server
    }

    /// A server on `database_url`, with `data_dir` as its home.
    pub fn start(database_url: &str, data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_on("127.0.0.1:0", database_url, data_dir, extra)
    }

    /// A server listening on `listen` (to restart one where it was).
    pub fn start_on(listen: &str, database_url: &str, data_dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_buildd"))
            .args(["serve", "--listen", listen, "--database-url", database_url])
            .args(["--admin-token", ADMIN])
            .args(extra)
            .env("HOME", data_dir)
            .env("XDG_DATA_HOME", data_dir.join("data"))
            .env_remove("BUILDD_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start buildd serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("BUILDD_TEST_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
                drop(kept);
                if let Some(at) = line.find("listening on http://") {
                    // Text or JSON logs: the address ends at a space or a quote.
                    let addr = line[at + "listening on ".len()..]
                        .split([' ', '"'])
                        .next()
                        .unwrap()
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not report its address within 30 s");
        Server {
            child,
            url,
            data_dir: data_dir.to_owned(),
            log,
            _tmp: None,
        }
    }

    pub fn client(&self, token: &str) -> Api {
        Api {
            base: self.url.clone(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub fn admin(&self) -> Api {
        self.client(ADMIN)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit on its own and returns its exit status.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON client with one bearer token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request reached the server");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("non-JSON body for {path}: {text}"))
        };
        (status, value)
    }

    /// How many claim transactions the server has run (`/metrics`, for the admin).
    pub async fn claim_transactions(&self) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("buildd_claim_duration_seconds_count "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no claim count in:\n{text}"))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    /// Every message of a worker, in order, page by page.
    pub async fn messages_of(&self, worker_id: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (status, page) = self
                .get(&format!("/api/workers/{worker_id}/messages?after={after}"))
                .await;
            assert!(status.is_success(), "{page}");
            let page = page["messages"].as_array().unwrap().clone();
            let Some(last) = page.last() else {
                return all;
            };
            after = last["seq"].as_i64().unwrap();
            all.extend(page.into_iter().map(|m| m["message"].clone()));
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(body)).await
    }

    /// Like `post`, but panics unless the status is 2xx.
    pub async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.post(path, body).await;
        assert!(status.is_success(), "POST {path} → {status}: {value}");
        value
    }

    pub async fn workspace(&self, name: &str) -> String {
        self.ok("/api/workspaces", json!({ "name": name })).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Creates an account granted `workspace` and returns (id, key).
    pub async fn account(
        &self,
        body: Value,
        workspace: &str,
        can_claim: bool,
        can_create: bool,
    ) -> (String, String) {
        let created = self.ok("/api/accounts", body).await;
        let id = created["id"].as_str().unwrap().to_owned();
        self.ok(
            &format!("/api/accounts/{id}/workspaces"),
            json!({ "workspaceId": workspace, "canClaim": can_claim, "canCreate": can_create }),
        )
        .await;
        (id, created["apiKey"].as_str().unwrap().to_owned())
    }

    /// A new workspace and a service account that may claim in it (not create):
    /// (workspace id, account id, key).
    pub async fn workspace_with_claimer(&self) -> (String, String, String) {
        let ws = self.workspace("w").await;
        let (id, key) = self
            .account(json!({"type": "service", "name": "s"}), &ws, true, false)
            .await;
        (ws, id, key)
    }

    /// Claims one task as this account and returns its worker's id.
    pub async fn claim_one(&self) -> String {
        let claimed = self.ok("/api/workers/claim", json!({})).await;
        let workers = claimed["workers"].as_array().expect("a workers list");
        assert_eq!(workers.len(), 1, "expected one claimed task: {claimed}");
        workers[0]["id"].as_str().unwrap().to_owned()
    }

    /// Reports `statuses` for a worker, in order, each of which must be accepted.
    pub async fn move_worker(&self, worker_id: &str, statuses: &[&str]) {
        for status in statuses {
            let (code, body) = self
                .patch(
                    &format!("/api/workers/{worker_id}"),
                    json!({"status": status}),
                )
                .await;
            assert!(code.is_success(), "{worker_id} → {status}: {code} {body}");
        }
    }

    pub async fn task(&self, workspace: &str, extra: Value) -> Value {
        let mut body = json!({ "workspaceId": workspace, "title": "a task" });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.ok("/api/tasks", body).await
    }
}

/// One Server-Sent Event as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub id: i64,
    pub name: String,
    pub data: Value,
}

/// What reading an event stream gave.
#[derive(Debug)]
pub enum Next {
    Event(Received),
    /// Nothing within the time given.
    Quiet,
    Ended,
}

/// Reads `GET /api/events` as it streams, parsed by the same SSE parser as the
/// client (`eventsource-stream`), without reconnecting: the tests watch the server.
pub struct EventReader {
    events: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = Result<
                        eventsource_stream::Event,
                        eventsource_stream::EventStreamError<reqwest::Error>,
                    >,
                > + Send,
        >,
    >,
    /// Keep-alive comments seen.
    keep_alives: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Api {
    /// Opens the event stream; `query` is appended to the path (e.g. `?workspaceId=…`).
    pub async fn events(
        &self,
        query: &str,
        last_event_id: Option<i64>,
    ) -> (StatusCode, EventReader) {
        let mut req = self
            .http
            .get(format!("{}/api/events{query}", self.base))
            .bearer_auth(&self.token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let response = req.send().await.expect("events request reached the server");
        let status = response.status();
        let keep_alives = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = keep_alives.clone();
        // The parser passes comments over; the bytes show them (buildd's are ":\n\n").
        let bytes = futures::StreamExt::inspect(response.bytes_stream(), move |chunk| {
            if let Ok(chunk) = chunk {
                let text = String::from_utf8_lossy(chunk);
                let comments = text.lines().filter(|l| l.starts_with(':')).count();
                seen.fetch_add(comments, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let events = Box::pin(eventsource_stream::Eventsource::eventsource(bytes));
        (
            status,
            EventReader {
                events,
                keep_alives,
            },
        )
    }
}

impl EventReader {
    /// The next event, or `None` if none arrives within `timeout` or the stream ends.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        match self.next_event(timeout).await {
            Next::Event(e) => Some(e),
            Next::Quiet | Next::Ended => None,
        }
    }

    /// The next event, or why there is none.
    pub async fn next_event(&mut self, timeout: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut self.events))
                .await
            {
                Err(_) => return Next::Quiet,
                Ok(Some(Ok(event))) => {
                    // Logged events have ids; an offer has none and reads as id 0.
                    let id = match event.id.trim().parse() {
                        Ok(id) => id,
                        Err(_) if event.event == "task.offered" => 0,
                        Err(_) => continue,
                    };
                    let data = serde_json::from_str(&event.data).expect("event data is JSON");
                    return Next::Event(Received {
                        id,
                        name: event.event,
                        data,
                    });
                }
                // The server ended the stream, or went away.
                Ok(Some(Err(_)) | None) => return Next::Ended,
            }
        }
    }

    /// The next `task.offered` event's data within `timeout` (other events are
    /// passed over), or `None`.
    pub async fn next_offer(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Next::Event(e) if e.name == "task.offered" => return Some(e.data),
                Next::Event(_) => continue,
                Next::Quiet | Next::Ended => return None,
            }
        }
    }

    /// Keep-alive comments seen so far.
    pub fn keep_alives(&self) -> usize {
        self.keep_alives.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the server ends the stream within `timeout` (events and keep-alives
    /// before the end are skipped).
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Next::Event(_) => continue,
                Next::Quiet => return false,
                Next::Ended => return true,
            }
        }
    }

    /// Events until none arrives for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Received> {
        let mut all = Vec::new();
        while let Some(e) = self.next(quiet).await {
            all.push(e);
        }
        all
    }
}
