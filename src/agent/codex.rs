//! The Codex runner: OpenAI's Codex CLI, `codex exec --json`, and
//! `codex exec resume SESSION` to carry a session on.
//!
//! Codex has no system-prompt option, so buildd's unattended instructions lead the
//! first prompt. It runs with approvals off (`approval_policy="never"`: nobody is
//! there to approve) inside its own `workspace-write` sandbox (the worktree), or
//! `read-only` for a planning run. buildd's MCP server is given through `-c
//! mcp_servers.buildd…`, its bearer token read from `BUILDD_WORKER_TOKEN` so that it
//! stays off the command line.
//!
//! Its JSON Lines events: `thread.started` (the session id), `turn.started`,
//! `item.started`/`item.updated`/`item.completed` (messages, commands, file changes,
//! tool calls), `turn.completed` with token usage, `turn.failed`, and `error`. Codex
//! reports tokens, not dollars: the cost comes from [`runners::cost_usd`].

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use tokio::process::Command;

use super::runner::{
    Finish, LineReport, OutputParser, RunSpec, Runner, TOOLS_SERVER, with_instructions,
};
use crate::core::runners::{self, Tokens};

/// The environment variables that authenticate Codex.
pub const CODEX_CREDENTIALS: [&str; 2] = ["OPENAI_API_KEY", "CODEX_API_KEY"];

#[derive(Debug, Clone)]
pub struct CodexRunner {
    pub bin: PathBuf,
}

impl Runner for CodexRunner {
    fn name(&self) -> &str {
        runners::CODEX
    }

    fn credentials(&self) -> Option<&'static [&'static str]> {
        Some(&CODEX_CREDENTIALS)
    }

    fn command(&self, spec: &RunSpec) -> Command {
        let mut command = Command::new(&self.bin);
        command.arg("exec");
        if let Some(session) = &spec.resume {
            command.arg("resume").arg(session);
        }
        let sandbox = match spec.plan_schema {
            Some(_) => "read-only",
            None => "workspace-write",
        };
        command
            .arg("--json")
            .arg("-c")
            .arg(format!("sandbox_mode=\"{sandbox}\""))
            .arg("-c")
            .arg("approval_policy=\"never\"");
        if let Some(model) = &spec.model {
            command.arg("--model").arg(model);
        }
        if let Some(tools) = &spec.tools {
            command
                .arg("-c")
                .arg(format!(
                    "mcp_servers.{TOOLS_SERVER}.url={}",
                    toml_string(&tools.url)
                ))
                .arg("-c")
                .arg(format!(
                    "mcp_servers.{TOOLS_SERVER}.bearer_token_env_var=\"BUILDD_WORKER_TOKEN\""
                ))
                .env("BUILDD_WORKER_TOKEN", &tools.token);
        }
        if let (Some(schema), Some(tools_dir)) = (&spec.plan_schema, plan_schema_dir(spec)) {
            // `--output-schema` takes a file: the final message is then JSON of it.
            let file = tools_dir.join("codex-plan-schema.json");
            if std::fs::write(&file, schema).is_ok() {
                command.arg("--output-schema").arg(file);
            }
        }
        command
            // "-" would read stdin; the prompt is an argument, stdin stays closed.
            .arg("--")
            .arg(with_instructions(spec))
            .stdin(Stdio::null());
        command
    }

    fn parser(&self) -> Box<dyn OutputParser> {
        Box::new(CodexJson::default())
    }

    /// Codex keeps each session as `sessions/YYYY/MM/DD/rollout-<time>-<id>.jsonl`
    /// under its home (`$CODEX_HOME`, `~/.codex`); the first line, `session_meta`,
    /// records the directory it ran in.
    fn session_dir(&self, session_id: &str) -> Option<PathBuf> {
        let home = match std::env::var_os("CODEX_HOME").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".codex"),
        };
        session_cwd(&home.join("sessions"), session_id)
    }
}

/// The directory a Codex session ran in, from its rollout file under `sessions`
/// (three levels of dated directories).
fn session_cwd(sessions: &std::path::Path, session_id: &str) -> Option<PathBuf> {
    let suffix = format!("-{session_id}.jsonl");
    let mut dirs = vec![(sessions.to_owned(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if depth < 3 && path.is_dir() {
                dirs.push((path, depth + 1));
            } else if path.file_name()?.to_str()?.ends_with(&suffix) {
                use std::io::BufRead;
                let mut first = String::new();
                std::io::BufReader::new(std::fs::File::open(&path).ok()?)
                    .read_line(&mut first)
                    .ok()?;
                let meta: Value = serde_json::from_str(&first).ok()?;
                return meta["payload"]["cwd"].as_str().map(PathBuf::from);
            }
        }
    }
    None
}

/// Where a planning run's schema file goes: beside the run's MCP configuration,
/// outside the worktree (whose files the plan must not touch).
fn plan_schema_dir(spec: &RunSpec) -> Option<PathBuf> {
    let dir = spec.tools.as_ref()?.config_file.parent()?.to_owned();
    Some(dir)
}

/// A TOML basic string of `text`, for a `-c key=value` override.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

/// Reads `codex exec --json`.
#[derive(Default)]
pub struct CodexJson {
    /// Items done so far that count as turns: messages, commands, edits, tool calls.
    turns: i64,
    /// The last agent message: the run's answer once its turn completes.
    last_message: String,
    /// Tokens of the turns that completed (a resumed session counts from zero).
    tokens: Tokens,
    /// The model, when a line said it.
    model: Option<String>,
}

impl OutputParser for CodexJson {
    fn line(&mut self, line: &str) -> LineReport {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            return LineReport::output(line);
        };
        let mut report = LineReport::default();
        match message["type"].as_str() {
            Some("thread.started") => {
                report.session_id = message["thread_id"].as_str().map(str::to_owned);
            }
            Some("item.completed") => {
                let item = &message["item"];
                match item["type"].as_str() {
                    Some("agent_message") => {
                        self.last_message = item["text"].as_str().unwrap_or_default().to_owned();
                        self.turns += 1;
                    }
                    Some("command_execution" | "file_change" | "mcp_tool_call" | "web_search") => {
                        self.turns += 1
                    }
                    _ => {}
                }
                report.turns = Some(self.turns);
            }
            Some("turn.completed") => {
                let usage = &message["usage"];
                let count = |k: &str| usage[k].as_f64().unwrap_or(0.0);
                // `input_tokens` counts the cached ones too.
                let cached = count("cached_input_tokens");
                self.tokens.input += (count("input_tokens") - cached).max(0.0);
                self.tokens.cached_input += cached;
                self.tokens.output += count("output_tokens");
                report.turns = Some(self.turns);
                report.cost_usd = Some(self.cost());
                report.finish = Some(Finish {
                    structured: serde_json::from_str::<Value>(&self.last_message)
                        .ok()
                        .filter(Value::is_object),
                    text: std::mem::take(&mut self.last_message),
                    is_error: false,
                    failure: None,
                });
            }
            Some("turn.failed") => {
                let error = message["error"]["message"]
                    .as_str()
                    .unwrap_or("the turn failed");
                report.cost_usd = Some(self.cost());
                report.finish = Some(Finish::error(format!("Codex failed: {error}")));
            }
            _ => {}
        }
        if let Some(model) = message["model"].as_str() {
            self.model = Some(model.to_owned());
            report.model = self.model.clone();
        }
        report.message = message;
        report
    }
}

impl CodexJson {
    fn cost(&self) -> f64 {
        runners::cost_usd(self.model.as_deref().unwrap_or("gpt-5"), self.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::runners::RunnerFailure;

    #[test]
    fn a_session_is_found_with_the_directory_it_ran_in() {
        let sessions = tempfile::tempdir().unwrap();
        let day = sessions.path().join("2026/12/04");
        std::fs::create_dir_all(&day).unwrap();
        let id = "01a23f8b-9db0-70f0-a67c-65f8bb06a4c4";
        std::fs::write(
            day.join(format!("rollout-2026-12-04T05-34-04-{id}.jsonl")),
            format!(
                "{{\"type\":\"session_meta\",\"payload\":{{\"id\":\"{id}\",\"cwd\":\"/w/task-1\"}}}}\n{{}}\n"
            ),
        )
        .unwrap();
        assert_eq!(
            session_cwd(sessions.path(), id),
            Some(PathBuf::from("/w/task-1"))
        );
        assert_eq!(session_cwd(sessions.path(), "another"), None);
    }

    /// Lines as Codex 0.171 printed them against a stand-in of the Responses API.
    #[test]
    fn codex_json_gives_session_turns_cost_and_result() {
        let mut p = CodexJson::default();
        let started = p.line(
            r#"{"type":"thread.started","thread_id":"01a23f8b-9db0-70f0-a67c-65f8bb06a4c4"}"#,
        );
        assert_eq!(
            started.session_id.as_deref(),
            Some("01a23f8b-9db0-70f0-a67c-65f8bb06a4c4")
        );
        p.line(r#"{"type":"turn.started"}"#);
        let edit = p.line(r#"{"type":"item.completed","item":{"id":"item_0","type":"file_change","changes":[{"path":"/w/hello.txt","kind":"add"}],"status":"completed"}}"#);
        assert_eq!(edit.turns, Some(1));
        p.line(r#"{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"Wrote hello.txt.\nQUESTION: which greeting?"}}"#);
        let end = p.line(r#"{"type":"turn.completed","usage":{"input_tokens":1000000,"cached_input_tokens":500000,"output_tokens":100000,"reasoning_output_tokens":0}}"#);
        assert_eq!(end.turns, Some(2));
        // gpt-5 prices: 0.5M × $1.25 + 0.5M × $0.125 + 0.1M × $10.
        assert!((end.cost_usd.unwrap() - 1.6875).abs() < 1e-9);
        let finish = end.finish.unwrap();
        assert!(!finish.is_error);
        assert_eq!(finish.text, "Wrote hello.txt.\nQUESTION: which greeting?");
        let failed = p.line(r#"{"type":"turn.failed","error":{"message":"unexpected status 429 Too Many Requests: You exceeded your current quota"}}"#);
        let finish = failed.finish.unwrap();
        assert!(finish.is_error);
        assert_eq!(finish.failure, Some(RunnerFailure::Quota));
        assert_eq!(p.line("plain").message["text"], "plain");
    }
}
