//! The generic runner: any program (Codex, Gemini, a script) run through `sh -c`.
//!
//! The program finds the prompt in `BUILDD_PROMPT` and works in its current directory
//! (the task's worktree); `BUILDD_TASK_ID` and `BUILDD_WORKER_ID` say which task.
//! `BUILDD_RESUME` holds the session id it printed before, when a run carries on after
//! a question or a pause; `BUILDD_MODEL` the task's model, when it names one. `BUILDD_MCP_URL` and `BUILDD_WORKER_TOKEN` (and
//! `BUILDD_MCP_CONFIG`, the same as an MCP client configuration file) reach buildd's
//! tools for the run. Each line it prints is a message of
//! the run. A line of Claude's stream-json (a JSON object with a `type`) is read like
//! Claude's, so a program can report its session, cost and result that way; without
//! a `result` line, the exit status decides and the last line is the result.

use std::process::Stdio;

use tokio::process::Command;

use super::claude::StreamJson;
use super::runner::{LineReport, OutputParser, RunSpec, Runner, unattended_instructions};

#[derive(Debug, Clone)]
pub struct CommandRunner {
    /// What it is advertised as: `command`, or the name `--runner NAME=…` gave it.
    pub name: String,
    pub command: String,
}

impl Runner for CommandRunner {
    fn name(&self) -> &str {
        &self.name
    }

    fn credentials(&self) -> Option<&'static [&'static str]> {
        None
    }

    fn command(&self, spec: &RunSpec) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&self.command)
            .env("BUILDD_PROMPT", &spec.prompt)
            .env("BUILDD_INSTRUCTIONS", unattended_instructions(spec))
            .env_remove("BUILDD_RESUME")
            .env_remove("BUILDD_MCP_URL")
            .env_remove("BUILDD_WORKER_TOKEN")
            .env_remove("BUILDD_MCP_CONFIG")
            .stdin(Stdio::null());
        if let Some(tools) = &spec.tools {
            command
                .env("BUILDD_MCP_URL", &tools.url)
                .env("BUILDD_WORKER_TOKEN", &tools.token)
                .env("BUILDD_MCP_CONFIG", &tools.config_file);
        }
        if let Some(session) = &spec.resume {
            command.env("BUILDD_RESUME", session);
        }
        if let Some(budget) = spec.budget_usd {
            command.env("BUILDD_BUDGET_USD", format!("{budget:.4}"));
        }
        command.env_remove("BUILDD_MODEL");
        if let Some(model) = &spec.model {
            command.env("BUILDD_MODEL", model);
        }
        command
    }

    fn parser(&self) -> Box<dyn OutputParser> {
        Box::new(Lines(StreamJson::default()))
    }
}

struct Lines(StreamJson);

impl OutputParser for Lines {
    fn line(&mut self, line: &str) -> LineReport {
        let is_stream_json =
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["type"].is_string());
        if is_stream_json {
            self.0.line(line)
        } else {
            LineReport::output(line)
        }
    }
}
