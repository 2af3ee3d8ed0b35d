//! The Claude Code runner: `claude -p … --output-format stream-json --verbose`.
//!
//! Permissions: Claude Code refuses `--dangerously-skip-permissions` (and the
//! `bypassPermissions` mode) under root, which is how CI containers run. So the agent
//! runs it in `acceptEdits` mode with an explicit `--allowedTools` list: edits and the
//! listed tools run without asking, anything else is denied rather than left waiting
//! for a person who is not there. That works the same as root and as anyone else.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;
use tokio::process::Command;

use super::runner::{
    Finish, LineReport, OutputParser, RunSpec, Runner, TOOLS_SERVER, unattended_instructions,
};
use crate::core::runners::{self, RunnerFailure, Tokens};

/// The environment variables that authenticate Claude Code: a seat, API billing, a
/// gateway's token. (Bedrock and Vertex use the cloud's own credentials.)
pub const CLAUDE_CREDENTIALS: [&str; 3] = [
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
];

/// The tools a run may use unless `--allowed-tools` says otherwise.
pub const DEFAULT_ALLOWED_TOOLS: &str =
    "Bash,Edit,MultiEdit,Write,Read,Glob,Grep,LS,NotebookEdit,TodoWrite,WebFetch,WebSearch";

#[derive(Debug, Clone)]
pub struct ClaudeRunner {
    pub bin: PathBuf,
    pub model: Option<String>,
    pub allowed_tools: String,
    pub max_turns: Option<u32>,
}

impl Runner for ClaudeRunner {
    fn name(&self) -> &str {
        runners::CLAUDE
    }

    fn credentials(&self) -> Option<&'static [&'static str]> {
        Some(&CLAUDE_CREDENTIALS)
    }

    fn command(&self, spec: &RunSpec) -> Command {
        let mut command = Command::new(&self.bin);
        // The prompt goes in on stdin as the first stream-json message, and a person's
        // instructions follow it there while the run goes on.
        command
            .arg("-p")
            .args(["--input-format", "stream-json", "--replay-user-messages"])
            .args(["--output-format", "stream-json", "--verbose"]);
        match &spec.plan_schema {
            // Planning reads only, and hands the plan back through Claude Code's
            // structured output (its `StructuredOutput` tool, checked against the
            // schema), which the final `result` line carries as `structured_output`.
            Some(schema) => command
                .args(["--permission-mode", "plan"])
                .arg("--json-schema")
                .arg(schema),
            None => command.args(["--permission-mode", "acceptEdits"]),
        };
        let mut allowed = self.allowed_tools.clone();
        if let Some(tools) = &spec.tools {
            // The server's name alone allows all of its tools.
            command.arg("--mcp-config").arg(&tools.config_file);
            allowed = format!("{allowed},mcp__{TOOLS_SERVER}");
        }
        command
            .arg("--allowedTools")
            .arg(allowed)
            .arg("--append-system-prompt")
            .arg(unattended_instructions(spec));
        if let Some(model) = spec.model.as_ref().or(self.model.as_ref()) {
            command.arg("--model").arg(model);
        }
        if let Some(turns) = self.max_turns {
            command.arg("--max-turns").arg(turns.to_string());
        }
        if let Some(session) = &spec.resume {
            command.arg("--resume").arg(session);
        }
        if let Some(budget) = spec.budget_usd {
            command.arg("--max-budget-usd").arg(format!("{budget:.4}"));
        }
        command
    }

    fn parser(&self) -> Box<dyn OutputParser> {
        Box::new(StreamJson::default())
    }

    fn input_line(&self, text: &str) -> Option<String> {
        let message = serde_json::json!({
            "type": "user",
            "message": { "role": "user", "content": text },
        });
        Some(message.to_string())
    }

    /// Claude Code keeps each session as `projects/<dir>/<session>.jsonl` under its
    /// config directory, and `--resume` finds it only from the directory it ran in,
    /// which its entries record as `cwd`.
    fn session_dir(&self, session_id: &str) -> Option<PathBuf> {
        let config = match std::env::var_os("CLAUDE_CONFIG_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".claude"),
        };
        let file = format!("{session_id}.jsonl");
        let found = std::fs::read_dir(config.join("projects"))
            .ok()?
            .flatten()
            .map(|project| project.path().join(&file))
            .find(|path| path.is_file())?;
        use std::io::BufRead;
        let reader = std::io::BufReader::new(std::fs::File::open(found).ok()?);
        reader
            .lines()
            .map_while(Result::ok)
            .take(200)
            .find_map(|line| {
                let entry: Value = serde_json::from_str(&line).ok()?;
                entry["cwd"].as_str().map(PathBuf::from)
            })
    }
}

/// Reads Claude Code's stream-json: one JSON object per line (`system` init,
/// `assistant`, `user` tool results, and a final `result`).
#[derive(Default)]
pub struct StreamJson {
    /// Usage per assistant message id: one message may come as several lines.
    usage: HashMap<String, f64>,
    /// Turns of the results before the last: each message sent on stdin ends with a
    /// `result` counting its own turns (its cost is the process's total so far).
    turns_before: i64,
}

impl OutputParser for StreamJson {
    fn line(&mut self, line: &str) -> LineReport {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            return LineReport::output(line);
        };
        let mut report = LineReport::default();
        match message["type"].as_str() {
            Some("system") => {
                report.session_id = message["session_id"].as_str().map(str::to_owned);
                report.model = message["model"].as_str().map(str::to_owned);
            }
            Some("assistant") => {
                let m = &message["message"];
                let id = m["id"].as_str().unwrap_or_default().to_owned();
                let model = m["model"].as_str().unwrap_or_default();
                self.usage.insert(id, estimate_usd(model, &m["usage"]));
                report.turns = Some(self.usage.len() as i64);
                report.cost_usd = Some(self.usage.values().sum());
            }
            // With --replay-user-messages, each message taken from stdin comes back.
            Some("user") if message["isReplay"] == true => report.took_input = true,
            Some("result") => {
                report.session_id = message["session_id"].as_str().map(str::to_owned);
                let turns = message["num_turns"].as_i64().unwrap_or(0);
                report.turns = Some(self.turns_before + turns);
                self.turns_before += turns;
                report.cost_usd = message["total_cost_usd"].as_f64();
                let text = message["result"].as_str().map(str::to_owned);
                let subtype = message["subtype"].as_str().unwrap_or("error");
                let is_error = message["is_error"]
                    .as_bool()
                    .unwrap_or(subtype != "success");
                let text = text.unwrap_or_else(|| format!("the run ended: {subtype}"));
                let signed_out = is_error && not_signed_in(&message, &text);
                report.finish = Some(Finish {
                    structured: message
                        .get("structured_output")
                        .filter(|v| !v.is_null())
                        .cloned(),
                    failure: match message["api_error_status"].as_i64() {
                        _ if !is_error => None,
                        _ if signed_out => Some(RunnerFailure::Auth),
                        Some(429) => Some(RunnerFailure::Quota),
                        _ => super::runner::failure_in(&text),
                    },
                    text: match signed_out {
                        true => format!(
                            "Claude Code is not authenticated on the agent's machine: set CLAUDE_CODE_OAUTH_TOKEN or ANTHROPIC_API_KEY for the agent, or sign Claude Code in as the agent's user (claude, then /login). Claude Code said: {text}"
                        ),
                        false => text,
                    },
                    is_error,
                });
            }
            _ => {}
        }
        report.message = message;
        report
    }
}

/// Whether a failed run's result says Claude Code had no working login: it answers
/// "Not logged in · Please run /login" without one, and "Invalid API key · Please run
/// /login" (or an HTTP 401) with a bad one.
fn not_signed_in(result: &Value, text: &str) -> bool {
    result["api_error_status"] == 401
        || ["Not logged in", "Invalid API key", "Please run /login"]
            .iter()
            .any(|sign| text.contains(sign))
}

/// Dollars for one assistant message's token usage at list prices
/// ([`runners::cost_usd`]). Only an estimate while the run goes on (the output count
/// in a streamed message is partial); the run's `result` carries the exact cost,
/// which replaces it.
fn estimate_usd(model: &str, usage: &Value) -> f64 {
    let tokens = |k: &str| usage[k].as_f64().unwrap_or(0.0);
    let used = Tokens {
        input: tokens("input_tokens"),
        cached_input: tokens("cache_read_input_tokens"),
        cache_write: tokens("cache_creation_input_tokens"),
        output: tokens("output_tokens"),
    };
    runners::cost_usd(model, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_json_gives_session_turns_cost_and_result() {
        let mut p = StreamJson::default();
        let init = p.line(r#"{"type":"system","subtype":"init","session_id":"s-1"}"#);
        assert_eq!(init.session_id.as_deref(), Some("s-1"));
        let a = r#"{"type":"assistant","message":{"id":"m1","model":"claude-sonnet-4-5","usage":{"input_tokens":1000000,"output_tokens":0}}}"#;
        let first = p.line(a);
        assert_eq!(first.turns, Some(1));
        assert_eq!(first.cost_usd, Some(3.0));
        // The same message again (a second content block) is not a second turn.
        assert_eq!(p.line(a).turns, Some(1));
        let end = p.line(
            r#"{"type":"result","subtype":"success","is_error":false,"result":"Done.","num_turns":2,"total_cost_usd":0.5,"session_id":"s-1"}"#,
        );
        assert_eq!(end.cost_usd, Some(0.5));
        assert_eq!(end.turns, Some(2));
        assert_eq!(
            end.finish,
            Some(Finish {
                text: "Done.".into(),
                is_error: false,
                structured: None,
                failure: None,
            })
        );
        let plain = p.line("not json");
        assert_eq!(plain.message["text"], "not json");
        let capped = p.line(r#"{"type":"result","subtype":"error_max_budget_usd","is_error":true,"total_cost_usd":1.0}"#);
        assert!(capped.finish.unwrap().is_error);
        // What Claude Code 2.1 prints when it has no login.
        let unsigned = p.line(r#"{"type":"result","subtype":"success","is_error":true,"api_error_status":null,"num_turns":1,"result":"Not logged in · Please run /login","total_cost_usd":0}"#);
        let finish = unsigned.finish.unwrap();
        assert!(finish.is_error);
        assert_eq!(finish.failure, Some(RunnerFailure::Auth));
        let limited = p.line(r#"{"type":"result","subtype":"success","is_error":true,"api_error_status":429,"result":"API Error: 429","total_cost_usd":0}"#);
        assert_eq!(limited.finish.unwrap().failure, Some(RunnerFailure::Quota));
        assert!(
            finish
                .text
                .starts_with("Claude Code is not authenticated on the agent's machine"),
            "{}",
            finish.text
        );
    }
}
