//! Tasks that wait for other tasks: dependencies, retries and follow-ups.
//!
//! A task with an unfinished dependency is `blocked` and never claimed. Whenever a
//! task ends (or is retried), the stores re-settle the tasks that depend on it with
//! [`settle`], in the same transaction, walking on to their dependents when one of
//! them changes. Because dependencies must exist before the task that names them, the
//! graph has no cycles and the walk ends.

use chrono::Duration;

use super::RuleError;
use super::model::{Task, TaskMode, TaskStatus, Worker};
use super::time::Timestamp;

/// The most dependencies one task may name.
pub const MAX_DEPENDENCIES: usize = 100;

/// How long a follow-up waits for the account that ran its parent (whose machine
/// holds the session to resume) before any account may claim it.
pub const FOLLOWUP_PREFERENCE: Duration = Duration::seconds(120);

/// The most subtasks a run may give its task (`create_subtask`): enough to split
/// work as a plan would, few enough that a run gone astray cannot flood the queue.
pub const MAX_SUBTASKS: usize = 50;

/// One dependency as the rules need it: its id and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub id: String,
    pub status: TaskStatus,
}

impl Dependency {
    fn broken(&self) -> bool {
        matches!(self.status, TaskStatus::Failed | TaskStatus::Cancelled)
    }
}

/// The dependencies as asked for, in order and without repeats, checked against
/// [`MAX_DEPENDENCIES`]. Whether they exist (in the task's workspace) is for the
/// store to find out.
pub fn requested(depends_on: &[String]) -> Result<Vec<String>, RuleError> {
    let mut ids: Vec<String> = Vec::with_capacity(depends_on.len());
    for id in depends_on {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    if ids.len() > MAX_DEPENDENCIES {
        return Err(RuleError::Invalid(format!(
            "a task may depend on at most {MAX_DEPENDENCIES} tasks"
        )));
    }
    Ok(ids)
}

/// The status a new task starts in, given its dependencies: `pending` when they have
/// all completed (or there are none), `blocked` while one is unfinished, and `failed`
/// (with the reason) when one has failed or was cancelled already.
pub fn start(task: &mut Task, dependencies: &[Dependency], now: Timestamp) {
    task.status = TaskStatus::Blocked;
    settle(task, dependencies, now);
}

/// Re-settles a task that waits on `dependencies` (all of them, as they are now).
/// Returns whether the task changed:
/// - `blocked` → `failed` when a dependency failed or was cancelled;
/// - `blocked` → `pending` when all have completed;
/// - `failed` → `blocked` when no dependency is failed or cancelled any more (one was
///   retried). A failed task whose dependencies are not all complete cannot have run,
///   so it failed because of one of them.
pub fn settle(task: &mut Task, dependencies: &[Dependency], now: Timestamp) -> bool {
    let broken = dependencies.iter().find(|d| d.broken());
    match (task.status, broken) {
        (TaskStatus::Blocked, Some(dep)) => {
            task.status = TaskStatus::Failed;
            task.error = Some(format!("dependency {} is {}", dep.id, dep.status));
            task.completed_at = Some(now);
            true
        }
        (TaskStatus::Blocked, None) => {
            if dependencies
                .iter()
                .all(|d| d.status == TaskStatus::Completed)
            {
                task.status = TaskStatus::Pending;
                return true;
            }
            false
        }
        (TaskStatus::Failed, None)
            if dependencies
                .iter()
                .any(|d| d.status != TaskStatus::Completed) =>
        {
            task.status = TaskStatus::Blocked;
            task.error = None;
            task.completed_at = None;
            true
        }
        _ => false,
    }
}

/// Whether a change of a task's status from `before` to its status now may change
/// the tasks that depend on it: it ended, or it was brought back from failure.
pub fn moves_dependents(before: TaskStatus, task: &Task) -> bool {
    before != task.status
        && (task.status.is_terminal()
            || matches!(before, TaskStatus::Failed | TaskStatus::Cancelled))
}

/// `POST /api/tasks/:id/retry`: a failed or cancelled task goes back to the queue
/// with its attempts counted afresh, or to `blocked` while a dependency is unfinished.
/// A dependency that is itself failed or cancelled must be retried first.
pub fn retry(
    task: &mut Task,
    dependencies: &[Dependency],
    now: Timestamp,
) -> Result<(), RuleError> {
    if !matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
        return Err(RuleError::Conflict(format!(
            "task {} is {}; only a failed or cancelled task can be retried",
            task.id, task.status
        )));
    }
    if let Some(dep) = dependencies.iter().find(|d| d.broken()) {
        return Err(RuleError::Conflict(format!(
            "dependency {} is {}: retry it first",
            dep.id, dep.status
        )));
    }
    task.attempts = 0;
    task.error = None;
    task.completed_at = None;
    task.claimed_by = None;
    task.worker_id = None;
    task.claimed_at = None;
    // `pending` at once unless a dependency is still unfinished.
    task.status = TaskStatus::Blocked;
    settle(task, dependencies, now);
    Ok(())
}

/// `POST /api/tasks/:id/followup`: a continuation of `parent`, which has ended. It
/// starts from the branch of the parent's last worker and carries on its session,
/// preferring that worker's account for [`FOLLOWUP_PREFERENCE`].
pub fn followup(
    parent: &Task,
    last_worker: Option<&Worker>,
    message: &str,
    now: Timestamp,
) -> Result<Task, RuleError> {
    if !parent.status.is_terminal() {
        return Err(RuleError::Conflict(format!(
            "task {} is {}; only a task that has ended can be followed up",
            parent.id, parent.status
        )));
    }
    let message = message.trim();
    if message.is_empty() {
        return Err(RuleError::Invalid("message must not be empty".into()));
    }
    let title = followup_title(message);
    let worker = last_worker.filter(|w| w.task_id == parent.id);
    Ok(Task {
        description: message.to_owned(),
        runner_preference: parent.runner_preference,
        priority: parent.priority,
        max_attempts: parent.max_attempts,
        max_cost_usd: parent.max_cost_usd,
        mode: TaskMode::Run,
        base_branch: worker
            .and_then(|w| w.branch.clone())
            .or_else(|| parent.base_branch.clone()),
        parent_id: Some(parent.id.clone()),
        resume_session_id: worker.and_then(|w| w.session_id.clone()),
        // The session is its runner's: only that runner can carry it on.
        runner: worker
            .and_then(|w| w.runner.clone())
            .or_else(|| parent.runner.clone()),
        model: parent.model.clone(),
        fallback_runner: parent.fallback_runner.clone(),
        preferred_account_id: worker.map(|w| w.account_id.clone()),
        preferred_until: worker.map(|_| now + FOLLOWUP_PREFERENCE),
        ..Task::new(parent.workspace_id.clone(), &title, now)
    })
}

/// A follow-up's title: its message's first line, shortened.
fn followup_title(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    let mut title: String = first.chars().take(120).collect();
    if title.chars().count() < first.chars().count() {
        title.push('…');
    }
    format!("Follow-up: {title}")
}

/// Whether a run may give `parent` one more subtask, `parent` having `children`
/// already (its plan's steps and follow-ups count too).
pub fn subtask_room(parent: &Task, children: usize) -> Result<(), RuleError> {
    if children >= MAX_SUBTASKS {
        return Err(RuleError::Conflict(format!(
            "task {} has {children} subtasks already; a run may give its task at most \
             {MAX_SUBTASKS}",
            parent.id
        )));
    }
    Ok(())
}

/// Whether `account_id` may claim `task` now, as far as a follow-up's preference goes.
pub fn preference_allows(task: &Task, account_id: &str, now: Timestamp) -> bool {
    match (&task.preferred_account_id, task.preferred_until) {
        (Some(preferred), Some(until)) => preferred == account_id || until <= now,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_may_split_its_task_so_far() {
        let parent = task();
        assert!(subtask_room(&parent, 0).is_ok());
        assert!(subtask_room(&parent, MAX_SUBTASKS - 1).is_ok());
        let err = subtask_room(&parent, MAX_SUBTASKS).unwrap_err();
        assert!(matches!(err, RuleError::Conflict(_)), "{err}");
        assert!(err.to_string().contains("at most 50"), "{err}");
    }
    use crate::core::time;

    fn dep(id: &str, status: TaskStatus) -> Dependency {
        Dependency {
            id: id.into(),
            status,
        }
    }

    fn task() -> Task {
        Task::new("ws-1".into(), "t", time::now())
    }

    #[test]
    fn a_new_task_waits_for_unfinished_dependencies() {
        let now = time::now();
        let mut t = task();
        start(&mut t, &[], now);
        assert_eq!(t.status, TaskStatus::Pending);
        let mut t = task();
        start(
            &mut t,
            &[
                dep("a", TaskStatus::Completed),
                dep("b", TaskStatus::Running),
            ],
            now,
        );
        assert_eq!(t.status, TaskStatus::Blocked);
        let mut t = task();
        start(&mut t, &[dep("a", TaskStatus::Cancelled)], now);
        assert_eq!(t.status, TaskStatus::Failed);
        assert_eq!(t.error.as_deref(), Some("dependency a is cancelled"));
    }

    #[test]
    fn the_last_dependency_completing_unblocks() {
        let now = time::now();
        let mut t = task();
        start(&mut t, &[dep("a", TaskStatus::Pending)], now);
        assert!(!settle(&mut t, &[dep("a", TaskStatus::Running)], now));
        assert!(settle(&mut t, &[dep("a", TaskStatus::Completed)], now));
        assert_eq!(t.status, TaskStatus::Pending);
        // A pending (or running) task is not the dependencies' business any more.
        assert!(!settle(&mut t, &[dep("a", TaskStatus::Failed)], now));
    }

    #[test]
    fn failure_propagates_and_retry_brings_dependents_back() {
        let now = time::now();
        let mut t = task();
        start(
            &mut t,
            &[dep("a", TaskStatus::Running), dep("b", TaskStatus::Pending)],
            now,
        );
        assert!(settle(
            &mut t,
            &[dep("a", TaskStatus::Failed), dep("b", TaskStatus::Pending)],
            now
        ));
        assert_eq!(t.status, TaskStatus::Failed);
        assert!(t.completed_at.is_some());
        // `a` retried: back to waiting.
        assert!(settle(
            &mut t,
            &[dep("a", TaskStatus::Pending), dep("b", TaskStatus::Pending)],
            now
        ));
        assert_eq!(t.status, TaskStatus::Blocked);
        assert_eq!(t.error, None);
        // Still failed while another dependency is failed.
        let mut t = task();
        start(
            &mut t,
            &[dep("a", TaskStatus::Failed), dep("b", TaskStatus::Failed)],
            now,
        );
        assert!(!settle(
            &mut t,
            &[dep("a", TaskStatus::Pending), dep("b", TaskStatus::Failed)],
            now
        ));
        assert_eq!(t.status, TaskStatus::Failed);
    }

    #[test]
    fn retry_counts_attempts_afresh_and_refuses_live_or_broken() {
        let now = time::now();
        let mut t = task();
        t.status = TaskStatus::Failed;
        t.attempts = 3;
        t.worker_id = Some("wrk-1".into());
        retry(&mut t, &[], now).unwrap();
        assert_eq!(
            (t.status, t.attempts, t.worker_id.clone()),
            (TaskStatus::Pending, 0, None)
        );
        assert!(matches!(
            retry(&mut t, &[], now),
            Err(RuleError::Conflict(_))
        ));
        let mut t = task();
        t.status = TaskStatus::Cancelled;
        retry(&mut t, &[dep("a", TaskStatus::Running)], now).unwrap();
        assert_eq!(t.status, TaskStatus::Blocked);
        let mut t = task();
        t.status = TaskStatus::Failed;
        let err = retry(&mut t, &[dep("a", TaskStatus::Failed)], now).unwrap_err();
        assert!(err.to_string().contains("retry it first"), "{err}");
    }

    #[test]
    fn dependencies_are_deduplicated_and_bounded() {
        let ids: Vec<String> = ["a", "b", "a"].iter().map(|s| s.to_string()).collect();
        assert_eq!(requested(&ids).unwrap(), ["a", "b"]);
        let many: Vec<String> = (0..=MAX_DEPENDENCIES).map(|i| format!("t{i}")).collect();
        assert!(requested(&many).is_err());
    }

    #[test]
    fn a_followup_carries_on_its_parents_branch_and_session() {
        let now = time::now();
        let mut parent = task();
        let err = followup(&parent, None, "more", now).unwrap_err();
        assert!(matches!(err, RuleError::Conflict(_)));
        parent.status = TaskStatus::Completed;
        let worker = Worker {
            branch: Some("buildd/p".into()),
            session_id: Some("s-1".into()),
            ..crate::core::claim::assign(
                &mut parent.clone(),
                &crate::core::model::Account::new(crate::core::model::AccountType::User, "u", now),
                now,
            )
            .worker
        };
        let child = followup(&parent, Some(&worker), "also add tests\nplease", now).unwrap();
        assert_eq!(child.title, "Follow-up: also add tests");
        assert_eq!(child.parent_id.as_deref(), Some(parent.id.as_str()));
        assert_eq!(child.base_branch.as_deref(), Some("buildd/p"));
        assert_eq!(child.resume_session_id.as_deref(), Some("s-1"));
        assert!(!preference_allows(&child, "someone-else", now));
        assert!(preference_allows(&child, &worker.account_id, now));
        assert!(preference_allows(
            &child,
            "someone-else",
            now + FOLLOWUP_PREFERENCE
        ));
        assert!(followup(&parent, Some(&worker), "  ", now).is_err());
    }
}
