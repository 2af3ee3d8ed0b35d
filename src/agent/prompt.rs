//! What a task's first run is told, and where it runs: the task itself, what its
//! dependencies produced, the task it follows up, the plan it revises.
//!
//! A run that carries on a session (a follow-up, a revised plan) resumes it when this
//! machine holds it, in the directory the session ran in, since that is where the
//! runner looks for it; otherwise it starts fresh and is told in words what the
//! session would have remembered.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::runner::Runner;
use crate::api::{Plan, RunResult, Task, TaskMode};
use crate::client::Client;

/// Where and how the first run of a task starts.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstRun {
    pub prompt: String,
    /// The session to resume, when this machine has it.
    pub resume: Option<String>,
    pub worktree: PathBuf,
}

/// The first run of `task`, whose own worktree would be `worktree`.
pub async fn first_run(
    client: &Client,
    runner: &dyn Runner,
    task: &Task,
    worktree: PathBuf,
) -> FirstRun {
    let root = worktree.parent().unwrap_or(&worktree).to_path_buf();
    let resumable = task.resume_session_id.as_deref().and_then(|session| {
        let dir = runner.session_dir(session)?;
        // The session's directory must be one of this agent's worktrees, free (a
        // run's worktree is removed when it ends) or this task's own.
        let usable = within(&dir, &root) && (dir == worktree || !dir.exists());
        usable.then(|| (session.to_owned(), dir))
    });
    if let (Some(session), None) = (&task.resume_session_id, &resumable) {
        info!(task = %task.id, session = %session, "the session to carry on is not on this machine; starting afresh");
    }
    let parent = match (&task.parent_id, &resumable) {
        (Some(parent), None) if task.mode == TaskMode::Run => match client.get_task(parent).await {
            Ok(detail) => Some(detail.task),
            Err(e) => {
                warn!(task = %task.id, error = %e, "cannot read the parent task");
                None
            }
        },
        _ => None,
    };
    let mut prompt = match (&resumable, &task.feedback) {
        (Some(_), Some(feedback)) => revision(feedback),
        (Some(_), None) => task.description.clone(),
        (None, Some(feedback)) => {
            let earlier = task.result.as_ref().and_then(|r| r.get("plan")).cloned();
            format!(
                "{}\n\nYou proposed this plan before:\n{}\n\n{}",
                own_words(task),
                earlier.unwrap_or_default(),
                revision(feedback)
            )
        }
        (None, None) => match &parent {
            Some(parent) if task.resume_session_id.is_some() => continuation(parent, task),
            _ => own_words(task),
        },
    };
    let outcomes = dependency_outcomes(client, task).await;
    if !outcomes.is_empty() {
        prompt.push_str("\n\n");
        prompt.push_str(&outcomes);
    }
    if task.mode == TaskMode::Plan {
        prompt.push_str("\n\n");
        prompt.push_str(PLAN_INSTRUCTIONS);
    }
    match resumable {
        Some((session, dir)) => FirstRun {
            prompt,
            resume: Some(session),
            worktree: dir,
        },
        None => FirstRun {
            prompt,
            resume: None,
            worktree,
        },
    }
}

/// The task's title, then its description.
fn own_words(task: &Task) -> String {
    if task.description.trim().is_empty() {
        task.title.clone()
    } else {
        format!("{}\n\n{}", task.title, task.description)
    }
}

fn revision(feedback: &str) -> String {
    format!(
        "A person reviewed the plan and asks for changes:\n{feedback}\n\nPropose the whole plan again, changed accordingly."
    )
}

/// A follow-up that cannot resume its parent's session: what the session held.
fn continuation(parent: &Task, task: &Task) -> String {
    let result = parent
        .result
        .as_ref()
        .and_then(|r| serde_json::from_value::<RunResult>(r.clone()).ok())
        .map(|r| r.text)
        .unwrap_or_else(|| "(no result)".into());
    format!(
        "This continues an earlier task, whose work is already in this checkout.\n\n\
         The earlier task: {}\n{}\n\nHow it ended ({}): {}\n\nNow: {}",
        parent.title, parent.description, parent.status, result, task.description
    )
}

/// What the task's dependencies produced, for its prompt; empty without any.
async fn dependency_outcomes(client: &Client, task: &Task) -> String {
    let mut lines = Vec::new();
    for id in &task.depends_on {
        let dep = match client.get_task(id).await {
            Ok(detail) => detail.task,
            Err(e) => {
                warn!(task = %task.id, dependency = %id, error = %e, "cannot read a dependency");
                continue;
            }
        };
        let result = dep
            .result
            .as_ref()
            .and_then(|r| serde_json::from_value::<RunResult>(r.clone()).ok());
        let mut line = format!("- {} ({}, {})", dep.title, dep.id, dep.status);
        if let Some(r) = result {
            line.push_str(&format!("\n  branch: {}", r.branch));
            if let Some(commit) = r.commit_sha {
                line.push_str(&format!(", commit: {commit}"));
            }
            line.push_str(&format!("\n  result: {}", r.text.trim()));
        }
        lines.push(line);
    }
    if lines.is_empty() {
        return String::new();
    }
    let intro = match task.depends_on.len() {
        1 => "This task builds on a task that has completed:",
        _ => "This task builds on tasks that have completed:",
    };
    format!("{intro}\n{}", lines.join("\n"))
}

/// What a planning run is asked for, beside the schema its structured output must
/// follow.
pub const PLAN_INSTRUCTIONS: &str = "Do not change any files: make a plan only. Split \
     the task into steps that can each be done as a task of its own, by someone who sees \
     only that step. Give each step a short unique `ref`, a `title`, a `description` \
     precise enough to do the step without the plan, and `dependsOn`: the refs of the \
     steps that must be done before it. Return the plan as structured output.";

/// The JSON Schema of a plan, for the runner's structured output.
pub fn plan_schema() -> String {
    use utoipa::PartialSchema;
    serde_json::to_string(&Plan::schema()).unwrap_or_default()
}

/// The plan a planning run returned: its structured output, else JSON in its final
/// text (bare or in a fenced block), checked like an approval would check it.
pub fn plan_from(structured: Option<&serde_json::Value>, text: &str) -> Result<Plan, String> {
    let plan: Plan = match structured {
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|e| format!("the run's plan does not fit the schema: {e}"))?,
        None => {
            let json = text
                .split("```")
                .map(|block| block.trim_start_matches("json").trim())
                .find(|block| block.starts_with('{'))
                .unwrap_or(text.trim());
            serde_json::from_str(json)
                .map_err(|e| format!("the run returned no plan (structured output or JSON): {e}"))?
        }
    };
    crate::core::plan::validate(&plan).map_err(|e| format!("the run's plan is not valid: {e}"))?;
    Ok(plan)
}

/// Whether `dir` is inside `root`: a session that ran elsewhere (a person's own
/// project) is not carried on, or the agent would make a worktree there.
fn within(dir: &Path, root: &Path) -> bool {
    dir.starts_with(root) && dir != root
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_plan_comes_from_structured_output_or_the_text() {
        let value =
            json!({"steps": [{"ref": "a", "title": "A", "description": "do a", "dependsOn": []}]});
        assert_eq!(plan_from(Some(&value), "").unwrap().steps.len(), 1);
        let text = format!("Here it is:\n```json\n{value}\n```\n");
        assert_eq!(plan_from(None, &text).unwrap().steps[0].title, "A");
        let cyclic = json!({"steps": [{"ref": "a", "title": "A", "dependsOn": ["a"]}]});
        assert!(plan_from(Some(&cyclic), "").unwrap_err().contains("cycle"));
        assert!(plan_from(None, "no plan here").is_err());
        let schema: serde_json::Value = serde_json::from_str(&plan_schema()).unwrap();
        assert_eq!(schema["properties"]["steps"]["type"], "array");
        assert!(schema["properties"]["steps"]["items"]["properties"]["ref"].is_object());
    }
}
