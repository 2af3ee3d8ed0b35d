//! Runners: the programs that do a task's work. One small trait, so that buildd is not
//! tied to one vendor: Claude Code ([`super::claude`]), Codex ([`super::codex`]),
//! Gemini ([`super::gemini`]), and [`super::command`] for any program. Which of them
//! this machine has is [`super::runners`]'s to find.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::process::Command;

use crate::core::messages::QUESTION_MARKER;
use crate::core::runners::RunnerFailure;

/// One run of a runner: a task's first run, or a later one carrying on its session.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// What to tell the runner: the task, a person's answer, or "carry on".
    pub prompt: String,
    /// The task's worktree.
    pub workdir: PathBuf,
    /// The session to carry on, after a question or a pause.
    pub resume: Option<String>,
    /// What is left of the task's `maxCostUsd`, for runners that can cap themselves.
    pub budget_usd: Option<f64>,
    /// For a planning run: the JSON Schema of the plan. The runner must not change
    /// files, and should return the plan as structured output where it can.
    pub plan_schema: Option<String>,
    /// buildd's own tools for the run, when the server offers them.
    pub tools: Option<RunTools>,
    /// The task's model, over the runner's default.
    pub model: Option<String>,
}

/// buildd's own tools for one run: the server's `/mcp` with the worker's token, which
/// opens only the run's own tools (`report_progress`, `add_artifact`,
/// `create_subtask`, `get_task`) and dies with the worker. The agent's account key is
/// never handed to a run.
#[derive(Debug, Clone)]
pub struct RunTools {
    /// The MCP endpoint, `…/mcp`.
    pub url: String,
    /// The worker's token.
    pub token: String,
    /// An MCP client configuration naming both (`{"mcpServers": {"buildd": …}}`),
    /// mode 0600, for runners that read one: the token stays off command lines,
    /// which other users of the machine can read.
    pub config_file: PathBuf,
}

/// The name buildd's MCP server goes by in a run's configuration: Claude Code calls
/// its tools `mcp__buildd__<tool>`.
pub const TOOLS_SERVER: &str = "buildd";

impl RunTools {
    /// Writes the run's MCP configuration into `dir` (made 0700 if need be) and
    /// returns the tools it names.
    pub fn write(dir: &Path, worker_id: &str, url: String, token: String) -> std::io::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let config_file = dir.join(format!("{worker_id}.json"));
        let config = serde_json::json!({
            "mcpServers": {
                TOOLS_SERVER: {
                    "type": "http",
                    "url": url,
                    "headers": { "Authorization": format!("Bearer {token}") },
                }
            }
        });
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&config_file)?;
        file.write_all(config.to_string().as_bytes())?;
        Ok(RunTools {
            url,
            token,
            config_file,
        })
    }

    /// Removes the configuration, once the run is over for good.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.config_file);
    }
}

/// How one run ended, as its runner reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// The runner's final answer (its last message).
    pub text: String,
    pub is_error: bool,
    /// Structured output, when the run was asked for it and gave it.
    pub structured: Option<Value>,
    /// For an error: the runner's own reason (quota, sign-in), which lets the task
    /// fall back to another runner.
    pub failure: Option<RunnerFailure>,
}

impl Finish {
    /// A failed run, its reason told from `text` ([`failure_in`]).
    pub fn error(text: String) -> Finish {
        Finish {
            failure: failure_in(&text),
            text,
            is_error: true,
            structured: None,
        }
    }
}

/// What one line of a runner's output says. Every line is also a message of the run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineReport {
    pub message: Value,
    pub session_id: Option<String>,
    /// Turns so far in this run.
    pub turns: Option<i64>,
    /// Cost so far in this run: an estimate while it runs, exact at its end.
    pub cost_usd: Option<f64>,
    pub finish: Option<Finish>,
    /// The line acknowledges a message the run was sent on stdin: from here on, the
    /// run is working on it.
    pub took_input: bool,
    /// The model the run says it uses.
    pub model: Option<String>,
}

impl LineReport {
    /// A line that is not the runner's JSON: kept as plain output, and nothing more.
    pub fn output(line: &str) -> LineReport {
        LineReport {
            message: serde_json::json!({ "type": "output", "text": line }),
            ..LineReport::default()
        }
    }
}

/// Reads one run's output, line by line; it may keep counts across lines.
pub trait OutputParser: Send {
    fn line(&mut self, line: &str) -> LineReport;
}

pub trait Runner: Send + Sync {
    /// What the agent advertises it runs tasks with (`claude`, `codex`, `gemini`,
    /// `command`, or the name given to a command).
    fn name(&self) -> &str;
    /// The environment variables that hold this runner's own credentials. A run gets
    /// these and no other runner's ([`ALL_CREDENTIALS`]); `None`: a command, which
    /// gets the agent's whole environment, since buildd cannot know what it needs.
    fn credentials(&self) -> Option<&'static [&'static str]>;
    /// The process for one run, not yet started; the agent sets its working directory,
    /// process group and pipes.
    fn command(&self, spec: &RunSpec) -> Command;
    fn parser(&self) -> Box<dyn OutputParser>;
    /// For a runner that takes further messages on its stdin while it runs (a
    /// person's instructions), the line that sends `text`; the run's prompt is sent
    /// the same way. The runner must acknowledge each message it takes
    /// ([`LineReport::took_input`]); stdin is closed, letting it exit, once it has
    /// finished after taking everything it was sent.
    /// `None`: the prompt is in the command, and instructions wait for the run's end.
    fn input_line(&self, _text: &str) -> Option<String> {
        None
    }
    /// Where a session of this runner was held, if this machine has it: the
    /// directory it ran in, which a run carrying it on must run in too.
    fn session_dir(&self, _session_id: &str) -> Option<PathBuf> {
        None
    }
    /// The prompt that makes a paused run carry on where it stopped.
    fn carry_on_prompt(&self) -> &'static str {
        "Carry on with the task where you stopped."
    }
}

/// Every coding CLI's credential variables: a run keeps only its own runner's.
pub const ALL_CREDENTIALS: &[&str] = &[
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "OPENAI_API_KEY",
    "CODEX_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
];

/// Whether a run's error `text` says its runner, not the task, is at fault: the
/// provider refused for quota, credit or rate limits, or the CLI could not sign in.
/// The wording is each provider's own (Anthropic, OpenAI, Google) and HTTP's.
pub fn failure_in(text: &str) -> Option<RunnerFailure> {
    let text = text.to_ascii_lowercase();
    let any = |signs: &[&str]| signs.iter().any(|s| text.contains(s));
    if any(&[
        "insufficient_quota",
        "quota exceeded",
        "exceeded your current quota",
        "resource_exhausted",
        "rate limit",
        "rate_limit",
        "usage limit",
        "credit balance is too low",
        "429 too many requests",
        "status 429",
        "(429)",
    ]) {
        Some(RunnerFailure::Quota)
    } else if any(&[
        "not logged in",
        "invalid api key",
        "invalid_api_key",
        "incorrect api key",
        "api key not valid",
        "unauthorized",
        "401",
        "authentication",
        "please run /login",
        "not authenticated",
    ]) {
        Some(RunnerFailure::Auth)
    } else {
        None
    }
}

/// The prompt a runner without a system-prompt option is given: buildd's
/// instructions for working unattended, then the task's own.
pub fn with_instructions(spec: &RunSpec) -> String {
    match spec.resume {
        // A session carried on has had them.
        Some(_) => spec.prompt.clone(),
        None => format!(
            "{}\n\n---\n\n{}",
            unattended_instructions(spec),
            spec.prompt
        ),
    }
}

/// What the agent tells a runner about working unattended, so that it knows how to
/// ask a person something, and what buildd's tools are for when it has them.
pub fn unattended_instructions(spec: &RunSpec) -> String {
    let mut text = format!(
        "You are running unattended for buildd: nobody watches this session. If you \
         cannot go on without a decision or information from a person, stop and end \
         your final message with one line that starts with `{QUESTION_MARKER}` followed \
         by your question. The answer will come as the next message of this session."
    );
    if spec.tools.is_some() {
        text += &format!(
            "\n\nYou have buildd's tools (the MCP server `{TOOLS_SERVER}`). Use \
             report_progress to tell the people watching what you are doing, in one \
             short line, at milestones (not every step). Use add_artifact to record a \
             link or a file people should find from the task (your branch and commits are \
             recorded for you). Use create_subtask to queue a separate, independent piece \
             of work for another agent, with a complete brief; not for your own next \
             steps. Use get_task to read your task, the tasks it depends on, or your \
             subtasks."
        );
    }
    text
}

/// The question a run ended on: its final text's last non-empty line, when that line
/// starts with [`QUESTION_MARKER`].
pub fn question_in(text: &str) -> Option<String> {
    let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let question = last.trim().strip_prefix(QUESTION_MARKER)?.trim();
    (!question.is_empty()).then(|| question.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_failures_are_told_from_the_providers_words() {
        use RunnerFailure::*;
        for (text, want) in [
            (
                "You exceeded your current quota, please check your plan",
                Some(Quota),
            ),
            ("stream error: 429 Too Many Requests", Some(Quota)),
            ("[API Error: RESOURCE_EXHAUSTED]", Some(Quota)),
            ("Credit balance is too low", Some(Quota)),
            ("Invalid API key · Please run /login", Some(Auth)),
            ("unexpected status 401 Unauthorized", Some(Auth)),
            (
                "API key not valid. Please pass a valid API key.",
                Some(Auth),
            ),
            ("the tests failed: 3 of 40", None),
            ("", None),
        ] {
            assert_eq!(failure_in(text), want, "{text}");
        }
    }

    #[test]
    fn a_question_is_the_last_line_after_the_marker() {
        assert_eq!(
            question_in("I looked around.\nQUESTION: which database?\n\n").as_deref(),
            Some("which database?")
        );
        assert_eq!(question_in("QUESTION: early\nthen done."), None);
        assert_eq!(question_in("QUESTION:   "), None);
        assert_eq!(question_in(""), None);
        assert_eq!(question_in("Done."), None);
    }
}
