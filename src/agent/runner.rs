//! Runners: the programs that do a task's work. One small trait, so that buildd is not
//! tied to one vendor: Claude Code is the default, and [`super::command`] runs any
//! program.

use std::path::PathBuf;

use serde_json::Value;
use tokio::process::Command;

use crate::core::messages::QUESTION_MARKER;

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
}

/// How one run ended, as its runner reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// The runner's final answer (its last message).
    pub text: String,
    pub is_error: bool,
    /// Structured output, when the run was asked for it and gave it.
    pub structured: Option<Value>,
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
}

/// Reads one run's output, line by line; it may keep counts across lines.
pub trait OutputParser: Send {
    fn line(&mut self, line: &str) -> LineReport;
}

pub trait Runner: Send + Sync {
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

/// What the agent tells a runner about working unattended, so that it knows how to
/// ask a person something.
pub fn unattended_instructions() -> String {
    format!(
        "You are running unattended for buildd: nobody watches this session. If you \
         cannot go on without a decision or information from a person, stop and end \
         your final message with one line that starts with `{QUESTION_MARKER}` followed \
         by your question. The answer will come as the next message of this session."
    )
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
