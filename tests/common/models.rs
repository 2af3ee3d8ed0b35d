//! The real Codex and Gemini CLIs, and local stand-ins of the model APIs they talk to:
//! OpenAI's Responses API (`POST /v1/responses`, streamed) for Codex, and the Gemini
//! API (`…:streamGenerateContent?alt=sse`) for Gemini. Like [`super::agent::FakeAnthropic`]
//! they play the model by following lines of the task's prompt: `write PATH TEXT`
//! (the CLI's own file-writing tool: Codex's `apply_patch`, Gemini's `write_file`;
//! `{answer}` in TEXT becomes the person's answer) and `ask QUESTION` (ends the turn
//! with a question, before any write). Each keeps the conversations it was sent.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The real CLIs, installed from npm into `tests/coding-clis` the first time a test
/// needs them (`npm ci`, from the committed lockfile): (codex, gemini).
pub fn coding_clis() -> (PathBuf, PathBuf) {
    static INSTALLED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/coding-clis");
            super::npm_ci(&dir, "@openai/codex");
            let bins = dir.join("node_modules/.bin");
            for cli in ["codex", "gemini"] {
                let version = Command::new(bins.join(cli))
                    .arg("--version")
                    .env("HOME", std::env::temp_dir())
                    .output()
                    .unwrap();
                assert!(version.status.success(), "{cli} --version failed");
            }
            (bins.join("codex"), bins.join("gemini"))
        })
        .clone()
}

/// What a stand-in keeps of what it was sent.
#[derive(Clone, Default)]
struct Seen {
    requests: Arc<AtomicUsize>,
    /// The user texts of each conversation, joined.
    conversations: Arc<Mutex<Vec<String>>>,
    /// The model each request named.
    models: Arc<Mutex<Vec<String>>>,
}

/// A stand-in's record, shared by both.
pub struct StandIn {
    pub url: String,
    seen: Seen,
}

impl StandIn {
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// Whether one request's conversation held all of `texts`.
    pub fn saw_together(&self, texts: &[&str]) -> bool {
        self.seen
            .conversations
            .lock()
            .unwrap()
            .iter()
            .any(|c| texts.iter().all(|t| c.contains(t)))
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// The models the requests named.
    pub fn models(&self) -> Vec<String> {
        self.seen.models.lock().unwrap().clone()
    }
}

/// What the model does next in a conversation, from its user texts and how many tool
/// results it has had.
enum Step {
    Ask(String),
    Write { path: String, text: String },
    Done(usize),
}

fn next_step(texts: &[String], tool_results: usize) -> Step {
    let prompt = texts.first().cloned().unwrap_or_default();
    // A person's answer: a user message after the prompt.
    let answer = texts.iter().skip(1).last().map(|a| a.trim().to_owned());
    let question = prompt
        .lines()
        .find_map(|l| l.trim().strip_prefix("ask ").map(str::to_owned));
    if let (Some(q), None) = (question, &answer) {
        return Step::Ask(q);
    }
    let writes: Vec<(String, String)> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.trim().strip_prefix("write ")?.split_once(' '))
        .map(|(path, text)| {
            let text = text.replace("{answer}", answer.as_deref().unwrap_or(""));
            (path.to_owned(), text)
        })
        .collect();
    match writes.get(tool_results) {
        Some((path, text)) => Step::Write {
            path: path.clone(),
            text: text.clone(),
        },
        None => Step::Done(writes.len()),
    }
}

fn answer_text(step: &Step) -> String {
    match step {
        Step::Ask(q) => format!("I need to know one thing first.\nQUESTION: {q}"),
        Step::Done(n) => format!("Done: wrote {n} file(s)."),
        Step::Write { .. } => String::new(),
    }
}

/// A stand-in of OpenAI's Responses API, for Codex (a custom model provider whose
/// `base_url` is `{url}/v1`).
pub struct FakeOpenAi(pub StandIn);

impl FakeOpenAi {
    pub async fn start() -> FakeOpenAi {
        let seen = Seen::default();
        let app = axum::Router::new()
            .route("/v1/responses", axum::routing::post(responses))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .with_state(seen.clone());
        FakeOpenAi(StandIn {
            url: StandIn::serve(app).await,
            seen,
        })
    }

    /// A Codex home (`CODEX_HOME`) whose configuration sends Codex here.
    pub fn codex_home(&self, dir: &Path) -> PathBuf {
        let home = dir.join("codex-home");
        std::fs::create_dir_all(&home).unwrap();
        let config = format!(
            "model_provider = \"standin\"\n\
             [model_providers.standin]\n\
             name = \"stand-in\"\n\
             base_url = \"{}/v1\"\n\
             env_key = \"OPENAI_API_KEY\"\n\
             wire_api = \"responses\"\n",
            self.0.url
        );
        std::fs::write(home.join("config.toml"), config).unwrap();
        home
    }
}

/// The texts of the conversation's user messages, in order: the task's prompt first,
/// then answers. Codex's own context messages (`<environment_context>`, …) are left
/// out.
fn openai_user_texts(input: &[Value]) -> Vec<String> {
    input
        .iter()
        .filter(|i| i["type"] == "message" && i["role"] == "user")
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["text"].as_str().map(str::to_owned))
        .filter(|t| !t.trim_start().starts_with('<'))
        .collect()
}

async fn responses(State(seen): State<Seen>, Json(body): Json<Value>) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    if std::env::var_os("FAKE_MODEL_DUMP").is_some() {
        eprintln!("[openai] {}", body["input"]);
    }
    let input = body["input"].as_array().cloned().unwrap_or_default();
    let texts = openai_user_texts(&input);
    seen.conversations.lock().unwrap().push(texts.join("\n"));
    seen.models
        .lock()
        .unwrap()
        .push(body["model"].as_str().unwrap_or_default().to_owned());
    let tool_results = input
        .iter()
        .filter(|i| i["type"] == "custom_tool_call_output" || i["type"] == "function_call_output")
        .count();
    let step = next_step(&texts, tool_results);
    let item = match &step {
        Step::Write { path, text } => json!({
            "type": "custom_tool_call", "id": format!("ctc_{tool_results}"),
            "call_id": format!("call_{tool_results}"), "name": "apply_patch",
            "input": format!("*** Begin Patch\n*** Add File: {path}\n+{text}\n*** End Patch\n"),
        }),
        _ => json!({
            "type": "message", "role": "assistant", "id": format!("msg_{tool_results}"),
            "content": [{ "type": "output_text", "text": answer_text(&step), "annotations": [] }],
        }),
    };
    let events = [
        json!({ "type": "response.created", "response": { "id": "resp_fake" } }),
        json!({ "type": "response.output_item.done", "output_index": 0, "item": item }),
        json!({ "type": "response.completed", "response": { "id": "resp_fake", "usage": {
            "input_tokens": 1000, "input_tokens_details": { "cached_tokens": 200 },
            "output_tokens": 500, "output_tokens_details": { "reasoning_tokens": 0 },
            "total_tokens": 1500 } } }),
    ];
    let stream: String = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect();
    (
        StatusCode::OK,
        [("content-type", "text/event-stream")],
        stream,
    )
        .into_response()
}

/// A stand-in of the Gemini API, for Gemini CLI (`GOOGLE_GEMINI_BASE_URL`).
pub struct FakeGemini(pub StandIn);

impl FakeGemini {
    pub async fn start() -> FakeGemini {
        let seen = Seen::default();
        let app = axum::Router::new()
            .route("/v1beta/models/{call}", axum::routing::post(generate))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .with_state(seen.clone());
        FakeGemini(StandIn {
            url: StandIn::serve(app).await,
            seen,
        })
    }

    /// Writes the Gemini CLI settings that sign it in with an API key into
    /// `home/.gemini` (with a base URL set, it would otherwise pick a gateway login,
    /// which headless mode refuses).
    pub fn sign_in(home: &Path) {
        let dir = home.join(".gemini");
        std::fs::create_dir_all(&dir).unwrap();
        let settings = json!({ "security": { "auth": { "selectedType": "gemini-api-key" } } });
        std::fs::write(dir.join("settings.json"), settings.to_string()).unwrap();
    }
}

async fn generate(
    State(seen): State<Seen>,
    UrlPath(call): UrlPath<String>,
    Json(body): Json<Value>,
) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    if std::env::var_os("FAKE_MODEL_DUMP").is_some() {
        eprintln!("[gemini] {call} {}", body["contents"]);
    }
    let (model, method) = call.split_once(':').unwrap_or((&call, ""));
    if method == "countTokens" {
        return Json(json!({ "totalTokens": 100 })).into_response();
    }
    let contents = body["contents"].as_array().cloned().unwrap_or_default();
    let parts = |role: &str| -> Vec<Value> {
        contents
            .iter()
            .filter(|c| c["role"] == role)
            .flat_map(|c| c["parts"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let texts: Vec<String> = parts("user")
        .iter()
        .filter_map(|p| p["text"].as_str().map(str::to_owned))
        .filter(|t| !t.trim_start().starts_with('<'))
        .collect();
    // The calls it made so far (a resumed history can repeat a call's response).
    let tool_results = parts("model")
        .iter()
        .filter(|p| p.get("functionCall").is_some())
        .count();
    let reply = if method == "generateContent" {
        // A side request of the CLI's own (a check of who speaks next, say): short.
        json!({ "text": "{\"reasoning\": \"The task is done.\", \"next_speaker\": \"user\"}" })
    } else {
        seen.conversations.lock().unwrap().push(texts.join("\n"));
        seen.models.lock().unwrap().push(model.to_owned());
        let step = next_step(&texts, tool_results);
        match &step {
            Step::Write { path, text } => json!({ "functionCall": {
                "name": "write_file",
                "args": { "file_path": path, "content": format!("{text}\n") },
            } }),
            _ => json!({ "text": answer_text(&step) }),
        }
    };
    let response = json!({
        "candidates": [{ "content": { "role": "model", "parts": [reply] },
                         "finishReason": "STOP", "index": 0 }],
        "usageMetadata": { "promptTokenCount": 1000, "candidatesTokenCount": 500,
                           "totalTokenCount": 1500 },
        "modelVersion": model,
    });
    if method == "streamGenerateContent" {
        (
            StatusCode::OK,
            [("content-type", "text/event-stream")],
            format!("data: {response}\r\n\r\n"),
        )
            .into_response()
    } else {
        Json(response).into_response()
    }
}
