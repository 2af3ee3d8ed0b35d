//! The Gemini runner: Google's Gemini CLI, `gemini -p PROMPT --output-format
//! stream-json`, and `--resume SESSION` to carry a session on.
//!
//! Gemini has no system-prompt option, so buildd's unattended instructions lead the
//! first prompt. It runs in `yolo` approval mode (nobody is there to approve a tool
//! call), or `plan` (read-only) for a planning run, with `--skip-trust` since each
//! worktree is a folder it has never seen.
//!
//! Its stream-json events: `init` (session id, model), `message` (user, and the
//! assistant's text in deltas), `tool_use`, `tool_result`, `error`, and a final
//! `result` with its status and token counts per model. Gemini reports tokens, not
//! dollars: the cost comes from [`runners::cost_usd`].

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use tokio::process::Command;

use super::runner::{Finish, LineReport, OutputParser, RunSpec, Runner, with_instructions};
use crate::core::runners::{self, Tokens};

/// The environment variables that authenticate Gemini (a Gemini API key, or a
/// Google Cloud key for Vertex AI).
pub const GEMINI_CREDENTIALS: [&str; 2] = ["GEMINI_API_KEY", "GOOGLE_API_KEY"];

#[derive(Debug, Clone)]
pub struct GeminiRunner {
    pub bin: PathBuf,
}

impl Runner for GeminiRunner {
    fn name(&self) -> &str {
        runners::GEMINI
    }

    fn credentials(&self) -> Option<&'static [&'static str]> {
        Some(&GEMINI_CREDENTIALS)
    }

    fn command(&self, spec: &RunSpec) -> Command {
        let mut command = Command::new(&self.bin);
        let mode = match spec.plan_schema {
            Some(_) => "plan",
            None => "yolo",
        };
        command
            .args(["--output-format", "stream-json"])
            .args(["--approval-mode", mode])
            .arg("--skip-trust");
        if let Some(model) = &spec.model {
            command.arg("--model").arg(model);
        }
        if let Some(session) = &spec.resume {
            command.arg("--resume").arg(session);
        }
        command
            .arg("--prompt")
            .arg(with_instructions(spec))
            .stdin(Stdio::null());
        command
    }

    fn parser(&self) -> Box<dyn OutputParser> {
        Box::new(GeminiJson::default())
    }

    /// Gemini keeps a project's sessions as
    /// `~/.gemini/tmp/<project>/chats/session-<time>-<first 8 of the id>.jsonl`, and
    /// the project's directory in `~/.gemini/tmp/<project>/.project_root`; `--resume`
    /// finds a session only from that directory.
    fn session_dir(&self, session_id: &str) -> Option<PathBuf> {
        let home = PathBuf::from(std::env::var_os("HOME")?);
        session_root(&home.join(".gemini/tmp"), session_id)
    }
}

/// The project directory of a Gemini session, from the projects under `tmp`.
fn session_root(tmp: &std::path::Path, session_id: &str) -> Option<PathBuf> {
    let short = session_id.get(..8)?;
    std::fs::read_dir(tmp).ok()?.flatten().find_map(|project| {
        let chats = project.path().join("chats");
        let held = std::fs::read_dir(chats).ok()?.flatten().any(|chat| {
            let name = chat.file_name();
            let name = name.to_string_lossy();
            name.starts_with("session-") && name.contains(short) && {
                // The first line names the session whole.
                use std::io::BufRead;
                let mut first = String::new();
                std::fs::File::open(chat.path())
                    .map(std::io::BufReader::new)
                    .and_then(|mut file| file.read_line(&mut first))
                    .is_ok_and(|_| first.contains(session_id))
            }
        });
        let root = std::fs::read_to_string(project.path().join(".project_root")).ok()?;
        held.then(|| PathBuf::from(root.trim()))
    })
}

/// Reads Gemini's stream-json.
#[derive(Default)]
pub struct GeminiJson {
    /// The assistant's text since the last tool call: its answer, once the run ends.
    answer: String,
    /// Model turns so far: runs of assistant output between the other events.
    turns: i64,
    in_assistant_turn: bool,
    model: Option<String>,
}

impl OutputParser for GeminiJson {
    fn line(&mut self, line: &str) -> LineReport {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            return LineReport::output(line);
        };
        let mut report = LineReport::default();
        let kind = message["type"].as_str().unwrap_or_default();
        let assistant = kind == "message" && message["role"] == "assistant";
        let tool_call = kind == "tool_use";
        if (assistant || tool_call) && !self.in_assistant_turn {
            self.turns += 1;
            report.turns = Some(self.turns);
        }
        self.in_assistant_turn = assistant || tool_call;
        match kind {
            "init" => {
                report.session_id = message["session_id"].as_str().map(str::to_owned);
                self.model = message["model"].as_str().map(str::to_owned);
                report.model = self.model.clone();
            }
            "message" if assistant => {
                let text = message["content"].as_str().unwrap_or_default();
                if message["delta"] != true {
                    self.answer.clear();
                }
                self.answer.push_str(text);
            }
            "tool_use" | "tool_result" => self.answer.clear(),
            "result" => {
                let stats = &message["stats"];
                report.turns = Some(self.turns);
                report.cost_usd = Some(cost_of(stats, self.model.as_deref()));
                report.finish = Some(if message["status"] == "success" {
                    Finish {
                        text: std::mem::take(&mut self.answer),
                        is_error: false,
                        structured: None,
                        failure: None,
                    }
                } else {
                    let error = message["error"]["message"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("the run ended: {}", message["status"]));
                    Finish::error(format!("Gemini failed: {error}"))
                });
            }
            _ => {}
        }
        report.message = message;
        report
    }
}

/// What a run's token counts cost, model by model (`stats.models`), or at
/// `model`'s price from the totals.
fn cost_of(stats: &Value, model: Option<&str>) -> f64 {
    let tokens = |counts: &Value| {
        let n = |k: &str| counts[k].as_f64().unwrap_or(0.0);
        let cached = n("cached");
        Tokens {
            input: (n("input_tokens") - cached).max(0.0),
            cached_input: cached,
            cache_write: 0.0,
            output: n("output_tokens"),
        }
    };
    match stats["models"].as_object() {
        Some(models) if !models.is_empty() => models
            .iter()
            .map(|(model, counts)| runners::cost_usd(model, tokens(counts)))
            .sum(),
        _ => runners::cost_usd(model.unwrap_or("gemini-2.5-pro"), tokens(stats)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::runners::RunnerFailure;

    #[test]
    fn a_session_is_found_with_its_projects_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let id = "1250c7dc-4938-4911-afa6-3644f03892fa";
        for (project, root, session) in [
            ("other", "/w/other", "99999999-0000"),
            ("repo", "/w/task-1", id),
        ] {
            let chats = tmp.path().join(project).join("chats");
            std::fs::create_dir_all(&chats).unwrap();
            std::fs::write(tmp.path().join(project).join(".project_root"), root).unwrap();
            std::fs::write(
                chats.join(format!("session-2026-12-04T05-34-{}.jsonl", &session[..8])),
                format!("{{\"sessionId\":\"{session}\"}}\n"),
            )
            .unwrap();
        }
        assert_eq!(
            session_root(tmp.path(), id),
            Some(PathBuf::from("/w/task-1"))
        );
        assert_eq!(session_root(tmp.path(), "12345678-x"), None);
    }

    /// Lines as Gemini CLI 0.61 printed them against a stand-in of the Gemini API.
    #[test]
    fn stream_json_gives_session_turns_cost_and_result() {
        let mut p = GeminiJson::default();
        let init = p.line(r#"{"type":"init","timestamp":"2026-12-04T05:34:45.116Z","session_id":"1250c7dc-4938-4911-afa6-3644f03892fa","model":"gemini-2.5-pro"}"#);
        assert_eq!(
            init.session_id.as_deref(),
            Some("1250c7dc-4938-4911-afa6-3644f03892fa")
        );
        assert_eq!(init.model.as_deref(), Some("gemini-2.5-pro"));
        p.line(r#"{"type":"message","role":"user","content":"write hello.txt"}"#);
        let call = p.line(r#"{"type":"tool_use","tool_name":"write_file","tool_id":"t1","parameters":{"file_path":"hello.txt","content":"hi"}}"#);
        assert_eq!(call.turns, Some(1));
        p.line(r#"{"type":"tool_result","tool_id":"t1","status":"success"}"#);
        p.line(r#"{"type":"message","role":"assistant","content":"Wrote ","delta":true}"#);
        p.line(r#"{"type":"message","role":"assistant","content":"hello.txt.","delta":true}"#);
        let end = p.line(r#"{"type":"result","status":"success","stats":{"total_tokens":1100000,"input_tokens":1000000,"output_tokens":100000,"cached":0,"models":{"gemini-2.5-pro":{"input_tokens":1000000,"output_tokens":100000,"cached":0}}}}"#);
        assert_eq!(end.turns, Some(2));
        // gemini-2.5-pro: 1M × $1.25 + 0.1M × $10.
        assert!((end.cost_usd.unwrap() - 2.25).abs() < 1e-9);
        let finish = end.finish.unwrap();
        assert_eq!(finish.text, "Wrote hello.txt.");
        assert!(!finish.is_error);
        let failed = p.line(r#"{"type":"result","status":"error","error":{"type":"FatalAuthenticationError","message":"API key not valid. Please pass a valid API key."},"stats":{}}"#);
        let finish = failed.finish.unwrap();
        assert!(finish.is_error);
        assert_eq!(finish.failure, Some(RunnerFailure::Auth));
    }
}
