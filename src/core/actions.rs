//! Everything that changes a task or a worker after the claim, as one pure function.
//!
//! The stores lock the task and its worker, call [`apply`], and write back what it
//! returns in the same transaction. So the transition table, the way a task mirrors its
//! worker, and what cancel, reply, pause, start and lease expiry do are written once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::RuleError;
use super::events::Event;
use super::lease;
use super::model::{Artifact, ArtifactKind, Task, TaskMode, TaskStatus, Worker, WorkerStatus};
use super::runners::{self, RunnerFailure};
use super::time::{self, Timestamp};

/// The longest free text a worker may report (a question, an error).
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// The longest short field (session id, branch, commit, PR URL).
pub const MAX_FIELD_LEN: usize = 2048;
/// The longest progress line: a status line, not a report.
pub const MAX_PROGRESS_LEN: usize = 500;

/// What a worker's owner may report, all optional (`PATCH /api/workers/:id`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<WorkerStatus>,
    #[schema(minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[schema(minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turns: Option<i64>,
    #[schema(max_length = 2048)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[schema(max_length = 2048)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[schema(max_length = 2048)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_sha: Option<String>,
    #[schema(max_length = 2048)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pr_url: Option<String>,
    #[schema(max_length = 65536)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    #[schema(max_length = 65536)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Further artifacts, such as the files the run changed. A `link` is an
    /// `http(s)` URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 1000)]
    pub artifacts: Vec<Artifact>,
    /// A short status line for people watching (the run's `report_progress`); shown
    /// on the worker and on its task. Runs of blanks, line breaks included, become
    /// one space.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The runner the attempt runs with (`claude`, `codex`, …), when the task named
    /// none and the agent picked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 32, pattern = r"^[a-z0-9][a-z0-9._-]*$")]
    pub runner: Option<String>,
    /// The model the runner said it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\s\x00-\x1f\x7f]+$")]
    pub model: Option<String>,
    /// With `status: error` (ignored otherwise): the run failed for its runner's sake
    /// (quota, sign-in), so a task with a `fallbackRunner` tries that next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<RunnerFailure>,
}

/// The most artifacts one update may carry.
pub const MAX_ARTIFACTS_PER_UPDATE: usize = 1000;

/// A change to a task, or to a worker and the task it carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `POST /api/tasks/:id/cancel`.
    Cancel,
    /// `POST /api/tasks/:id/reply`: a person answers the worker's question.
    Reply { message: String },
    /// `PATCH /api/workers/:id`.
    Update(Box<WorkerUpdate>),
    /// `POST /api/workers/:id/heartbeat`.
    Heartbeat,
    /// `POST /api/workers/:id/pause`.
    Pause,
    /// `POST /api/workers/:id/start`.
    Start,
    /// The sweeper found the worker's last heartbeat older than its cutoff.
    Expire { cutoffs: lease::Cutoffs },
    /// `POST /api/workers/:id/instruct`: a person steers a live worker's run.
    Instruct { message: String },
    /// `POST /api/tasks/:id/revise`: plan again, told what to change.
    Revise { feedback: String },
    /// `POST /api/tasks/:id/reject`: the plan is not wanted; the task is cancelled.
    Reject,
    /// A heartbeat of a worker whose account has spent its `maxCostPerDay`
    /// ([`super::claim::over_budget`] says why): the run stops and the worker ends in
    /// `error` with that reason; its task follows as from any error.
    StopOverBudget { reason: String },
}

impl Action {
    pub fn update(update: WorkerUpdate) -> Self {
        Action::Update(Box::new(update))
    }

    /// The action's name, for logs and spans.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Reply { .. } => "reply",
            Action::Update(_) => "update",
            Action::Heartbeat => "heartbeat",
            Action::Pause => "pause",
            Action::Start => "start",
            Action::Expire { .. } => "expire",
            Action::Instruct { .. } => "instruct",
            Action::Revise { .. } => "revise",
            Action::Reject => "reject",
            Action::StopOverBudget { .. } => "stop_over_budget",
        }
    }

    /// Whether the action is about a worker (and so needs one loaded) rather than a task.
    pub fn targets_worker(&self) -> bool {
        !matches!(
            self,
            Action::Cancel | Action::Reply { .. } | Action::Revise { .. } | Action::Reject
        )
    }
}

/// What a heartbeat tells the agent to do with its run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunControl {
    /// Carry on.
    #[default]
    None,
    /// The task was cancelled: stop the run and end the worker.
    Cancel,
    /// The worker was paused: stop the run and wait for `start`.
    Pause,
}

/// The answer to `POST /api/workers/:id/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatAnswer {
    /// True once the task was cancelled or the worker paused: stop the run. Kept for
    /// agents older than `action`.
    pub cancel: bool,
    /// What to do with the run: go on, stop for good, or stop until `start`.
    pub action: RunControl,
    /// A person's answer to the worker's question, sent once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Instructions a person sent the run since the last heartbeat, oldest first,
    /// each sent once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instructions: Vec<String>,
    /// Why the server ended the worker (its account's daily budget is spent): the
    /// run stops, and the worker is `error` already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl HeartbeatAnswer {
    pub fn from_outcome(outcome: Outcome) -> Self {
        HeartbeatAnswer {
            cancel: outcome.control != RunControl::None,
            action: outcome.control,
            reply: outcome.reply,
            instructions: outcome.instructions,
            reason: outcome.stop_reason,
        }
    }
}

/// What applying an action produced, besides the changed rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// False when the action turned out to have nothing to do (an expiry the worker
    /// beat with a late heartbeat): the store then writes nothing.
    pub changed: bool,
    pub events: Vec<Event>,
    /// Entries to append to the worker's message stream in the same transaction.
    pub messages: Vec<Value>,
    /// For a heartbeat: what the agent must do with the run.
    pub control: RunControl,
    /// For a heartbeat: a person's answer the agent has not had yet.
    pub reply: Option<String>,
    /// For a heartbeat: instructions the agent has not had yet.
    pub instructions: Vec<String>,
    /// For a heartbeat that stops the run: why.
    pub stop_reason: Option<String>,
    /// How the worker's account usage changed, for the stores' counters.
    pub usage: UsageChange,
    /// Artifacts to record for the worker's task.
    pub artifacts: Vec<Artifact>,
}

impl Outcome {
    /// Whether applying the outcome writes events (its own, or one per appended
    /// message), so that subscribers must be told.
    pub fn writes_events(&self) -> bool {
        !(self.events.is_empty() && self.messages.is_empty())
    }
}

/// A change to an account's usage counters, which the claim checks against its limits:
/// workers holding a slot, and the cost of workers started on `day` (UTC).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageChange {
    pub active_workers: i64,
    pub cost_usd: f64,
    pub day: String,
}

impl UsageChange {
    pub fn is_empty(&self) -> bool {
        self.active_workers == 0 && self.cost_usd == 0.0
    }

    /// What changed between two versions of one worker.
    fn between(before: &Worker, after: &Worker) -> Self {
        let holds = |w: &Worker| i64::from(WorkerStatus::ACTIVE.contains(&w.status));
        UsageChange {
            active_workers: holds(after) - holds(before),
            cost_usd: after.cost_usd - before.cost_usd,
            day: time::utc_day(after.started_at),
        }
    }
}

/// Whether a worker may go from `from` to `to`. The contract's diagram
/// (idle → starting → running ⟷ waiting_input → completed | error | paused) plus the
/// moves a real agent needs: reporting an error from any live state (a worktree that
/// cannot be made fails before `running`), pausing any live worker, and `start` taking
/// a paused worker back to `starting`.
pub fn can_move(from: WorkerStatus, to: WorkerStatus) -> bool {
    use WorkerStatus::*;
    matches!(
        (from, to),
        (Idle, Starting)
            | (Starting, Running)
            | (Running, WaitingInput)
            | (WaitingInput, Running)
            | (Running | WaitingInput, Completed)
            | (Idle | Starting | Running | WaitingInput | Paused, Error)
            | (Idle | Starting | Running | WaitingInput, Paused)
            | (Paused, Starting)
    )
}

/// Applies `action` to `task` and, for worker actions, `worker` (which must be the
/// task's worker row). Nothing is changed when an error is returned.
pub fn apply(
    action: Action,
    task: &mut Task,
    worker: Option<&mut Worker>,
    now: Timestamp,
) -> Result<Outcome, RuleError> {
    let Some(worker) = worker else {
        return apply_to(action, task, None, now);
    };
    let before = worker.clone();
    let mut outcome = apply_to(action, task, Some(&mut *worker), now)?;
    outcome.usage = UsageChange::between(&before, worker);
    Ok(outcome)
}

fn apply_to(
    action: Action,
    task: &mut Task,
    worker: Option<&mut Worker>,
    now: Timestamp,
) -> Result<Outcome, RuleError> {
    match (action, worker) {
        (Action::Cancel, worker) => cancel(task, worker, now),
        (Action::Reply { message }, worker) => reply(task, worker, message),
        (Action::Update(update), Some(worker)) => update_worker(task, worker, *update, now),
        (Action::Heartbeat, Some(worker)) => heartbeat(task, worker, now),
        (Action::StopOverBudget { reason }, Some(worker)) => {
            stop_over_budget(task, worker, reason, now)
        }
        (Action::Pause, Some(worker)) => move_by_request(task, worker, WorkerStatus::Paused, now),
        (Action::Start, Some(worker)) => {
            if worker.status != WorkerStatus::Paused {
                return Err(RuleError::Conflict(format!(
                    "worker {} is {}; only a paused worker can be started",
                    worker.id, worker.status
                )));
            }
            if task.status == TaskStatus::Cancelled {
                return Err(RuleError::Conflict(format!(
                    "task {} is cancelled; its worker cannot start again",
                    task.id
                )));
            }
            move_by_request(task, worker, WorkerStatus::Starting, now)
        }
        (Action::Expire { cutoffs }, Some(worker)) => Ok(expire(task, worker, cutoffs, now)),
        (Action::Instruct { message }, Some(worker)) => instruct(worker, message),
        (Action::Revise { feedback }, worker) => {
            let session = worker.and_then(|w| w.session_id.clone());
            super::plan::revise(task, &feedback, session)?;
            Ok(Outcome {
                changed: true,
                events: vec![Event::task_updated(task)],
                ..Outcome::default()
            })
        }
        (Action::Reject, worker) => {
            super::plan::reject(task)?;
            cancel(task, worker, now)
        }
        (_, None) => Err(RuleError::Conflict("this action needs a worker".into())),
    }
}

/// Cancels the task. A live run learns of it from its heartbeat and reports its own
/// end; a paused worker is ended here, because its run is stopped already and its
/// agent may be gone, and it must not keep the account's slot.
fn cancel(
    task: &mut Task,
    worker: Option<&mut Worker>,
    now: Timestamp,
) -> Result<Outcome, RuleError> {
    if task.status.is_terminal() {
        return Err(RuleError::Conflict(format!(
            "task {} is already {}",
            task.id, task.status
        )));
    }
    task.status = TaskStatus::Cancelled;
    task.completed_at = Some(now);
    let mut events = vec![Event::task_updated(task)];
    if let Some(worker) = worker.filter(|w| w.status == WorkerStatus::Paused) {
        worker.error = Some("the task was cancelled".into());
        set_status(task, worker, WorkerStatus::Error, now);
        events.push(Event::worker_updated(worker));
    }
    Ok(Outcome {
        changed: true,
        events,
        ..Outcome::default()
    })
}

fn reply(
    task: &mut Task,
    worker: Option<&mut Worker>,
    message: String,
) -> Result<Outcome, RuleError> {
    if message.trim().is_empty() {
        return Err(RuleError::Invalid("message must not be empty".into()));
    }
    if message.chars().count() > MAX_TEXT_LEN {
        return Err(RuleError::Invalid(format!(
            "message is longer than {MAX_TEXT_LEN} characters"
        )));
    }
    let worker = match worker {
        Some(w)
            if task.status == TaskStatus::WaitingInput
                && w.status == WorkerStatus::WaitingInput =>
        {
            w
        }
        _ => {
            return Err(RuleError::Conflict(format!(
                "task {} is {}, not waiting for input",
                task.id, task.status
            )));
        }
    };
    worker.status = WorkerStatus::Running;
    worker.question = None;
    worker.pending_reply = Some(message.clone());
    task.status = TaskStatus::Running;
    Ok(Outcome {
        changed: true,
        events: vec![Event::task_updated(task), Event::worker_updated(worker)],
        messages: vec![super::messages::user_reply(&message)],
        ..Outcome::default()
    })
}

/// Queues an instruction for a live worker; its agent takes it with the next
/// heartbeat, which the `worker.message` event of the instruction prompts at once.
fn instruct(worker: &mut Worker, message: String) -> Result<Outcome, RuleError> {
    refuse_if_finished(worker)?;
    super::validate::text("message", &message, MAX_TEXT_LEN)?;
    worker.pending_instructions.push(message.clone());
    Ok(Outcome {
        changed: true,
        messages: vec![super::messages::instruction(&message)],
        ..Outcome::default()
    })
}

fn refuse_if_finished(worker: &Worker) -> Result<(), RuleError> {
    if worker.status.is_terminal() {
        return Err(RuleError::Conflict(format!(
            "worker {} is {}; it cannot change any more",
            worker.id, worker.status
        )));
    }
    Ok(())
}

fn check_field(name: &str, value: &Option<String>, max: usize) -> Result<(), RuleError> {
    match value {
        Some(v) if v.chars().count() > max => Err(RuleError::Invalid(format!(
            "{name} is longer than {max} characters"
        ))),
        _ => Ok(()),
    }
}

/// A progress line as kept: at most [`MAX_PROGRESS_LEN`] characters as sent, not
/// blank, with its blanks (line breaks included) folded into single spaces.
pub fn progress_line(text: &str) -> Result<String, RuleError> {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return Err(RuleError::Invalid("progress must not be empty".into()));
    }
    // Counted as sent, which is what the description bounds.
    let length = text.chars().count();
    if length > MAX_PROGRESS_LEN {
        return Err(RuleError::Invalid(format!(
            "progress is one short status line: at most {MAX_PROGRESS_LEN} characters, \
             not {length}"
        )));
    }
    Ok(line)
}

fn update_worker(
    task: &mut Task,
    worker: &mut Worker,
    update: WorkerUpdate,
    now: Timestamp,
) -> Result<Outcome, RuleError> {
    refuse_if_finished(worker)?;
    if let Some(cost) = update.cost_usd
        && !(cost.is_finite() && cost >= 0.0)
    {
        return Err(RuleError::Invalid("costUsd must be a number ≥ 0".into()));
    }
    if update.turns.is_some_and(|t| t < 0) {
        return Err(RuleError::Invalid("turns must be ≥ 0".into()));
    }
    check_field("sessionId", &update.session_id, MAX_FIELD_LEN)?;
    check_field("branch", &update.branch, MAX_FIELD_LEN)?;
    check_field("commitSha", &update.commit_sha, MAX_FIELD_LEN)?;
    check_field("prUrl", &update.pr_url, MAX_FIELD_LEN)?;
    check_field("question", &update.question, MAX_TEXT_LEN)?;
    check_field("error", &update.error, MAX_TEXT_LEN)?;
    if update.artifacts.len() > MAX_ARTIFACTS_PER_UPDATE {
        return Err(RuleError::Invalid(format!(
            "at most {MAX_ARTIFACTS_PER_UPDATE} artifacts per update"
        )));
    }
    for a in &update.artifacts {
        if a.value.trim().is_empty() || a.value.chars().count() > MAX_FIELD_LEN {
            return Err(RuleError::Invalid(format!(
                "an artifact's value must be 1 to {MAX_FIELD_LEN} characters"
            )));
        }
        if a.kind == ArtifactKind::Link {
            super::validate::web_url("a link artifact", &a.value)?;
        }
    }
    let progress = match update.progress {
        Some(line) => Some(progress_line(&line)?),
        None => None,
    };
    if let Some(runner) = &update.runner {
        runners::check_name("runner", runner)?;
    }
    if let Some(model) = &update.model {
        runners::check_model(model)?;
    }
    if let Some(to) = update.status
        && to != worker.status
        && !can_move(worker.status, to)
    {
        return Err(RuleError::Conflict(format!(
            "worker {} cannot go from {} to {to}",
            worker.id, worker.status
        )));
    }

    // A branch, commit or PR reported for the first time (or changed) is recorded as
    // an artifact, so the task keeps the history of every attempt. A blank one clears
    // the field and is no artifact, which must name something.
    let mut artifacts = Vec::new();
    for (kind, new, old) in [
        (ArtifactKind::Branch, &update.branch, &worker.branch),
        (ArtifactKind::Commit, &update.commit_sha, &worker.commit_sha),
        (ArtifactKind::Pr, &update.pr_url, &worker.pr_url),
    ] {
        if let Some(value) = new
            && !value.trim().is_empty()
            && Some(value) != old.as_ref()
        {
            artifacts.push(Artifact {
                kind,
                value: value.clone(),
            });
        }
    }
    artifacts.extend(update.artifacts);

    let task_before = task.clone();
    if let Some(v) = update.cost_usd {
        worker.cost_usd = v;
    }
    if let Some(v) = update.turns {
        worker.turns = v;
    }
    worker.session_id = update.session_id.or(worker.session_id.take());
    worker.branch = update.branch.or(worker.branch.take());
    worker.commit_sha = update.commit_sha.or(worker.commit_sha.take());
    worker.pr_url = update.pr_url.or(worker.pr_url.take());
    worker.question = update.question.or(worker.question.take());
    worker.error = update.error.or(worker.error.take());
    worker.runner = update.runner.or(worker.runner.take());
    worker.model = update.model.or(worker.model.take());
    if let Some(failure) = update
        .failure
        .filter(|_| update.status == Some(WorkerStatus::Error))
    {
        fall_back(task, worker, failure.describe());
    }
    if let Some(line) = progress {
        // The task shows its current run's line only.
        if task.worker_id.as_deref() == Some(worker.id.as_str()) {
            task.progress = Some(line.clone());
        }
        worker.progress = Some(line);
    }
    if let Some(result) = update.result {
        task.result = Some(result);
    }
    worker.heartbeat_at = now;
    if let Some(to) = update.status {
        set_status(task, worker, to, now);
    }

    let mut events = vec![Event::worker_updated(worker)];
    if *task != task_before {
        events.insert(0, Event::task_updated(task));
    }
    Ok(Outcome {
        changed: true,
        events,
        artifacts,
        ..Outcome::default()
    })
}

fn heartbeat(task: &Task, worker: &mut Worker, now: Timestamp) -> Result<Outcome, RuleError> {
    refuse_if_finished(worker)?;
    worker.heartbeat_at = now;
    Ok(Outcome {
        changed: true,
        // A cancel wins: a paused worker of a cancelled task has nothing to wait for.
        // So does a task that moved on to another worker (it was cancelled, then
        // retried, before this run stopped).
        control: if task.status == TaskStatus::Cancelled
            || task.worker_id.as_deref() != Some(worker.id.as_str())
        {
            RunControl::Cancel
        } else if worker.status == WorkerStatus::Paused {
            RunControl::Pause
        } else {
            RunControl::None
        },
        reply: worker.pending_reply.take(),
        instructions: std::mem::take(&mut worker.pending_instructions),
        ..Outcome::default()
    })
}

fn stop_over_budget(
    task: &mut Task,
    worker: &mut Worker,
    reason: String,
    now: Timestamp,
) -> Result<Outcome, RuleError> {
    refuse_if_finished(worker)?;
    worker.heartbeat_at = now;
    worker.error = Some(reason.clone());
    fall_back(task, worker, "its account's maxCostPerDay is spent");
    set_status(task, worker, WorkerStatus::Error, now);
    let mut events = vec![Event::worker_updated(worker)];
    events.insert(0, Event::task_updated(task));
    Ok(Outcome {
        changed: true,
        events,
        control: RunControl::Cancel,
        stop_reason: Some(reason),
        ..Outcome::default()
    })
}

/// Pause and start: a person's request, checked against the same transition table.
fn move_by_request(
    task: &mut Task,
    worker: &mut Worker,
    to: WorkerStatus,
    now: Timestamp,
) -> Result<Outcome, RuleError> {
    if !can_move(worker.status, to) {
        return Err(RuleError::Conflict(format!(
            "worker {} is {}; it cannot go to {to}",
            worker.id, worker.status
        )));
    }
    // A started worker gets a fresh lease: its agent may have been idle while paused.
    worker.heartbeat_at = now;
    set_status(task, worker, to, now);
    Ok(Outcome {
        changed: true,
        events: vec![Event::task_updated(task), Event::worker_updated(worker)],
        ..Outcome::default()
    })
}

fn expire(
    task: &mut Task,
    worker: &mut Worker,
    cutoffs: lease::Cutoffs,
    now: Timestamp,
) -> Outcome {
    if !cutoffs.is_lost(worker) {
        return Outcome::default();
    }
    worker.error = Some(format!(
        "lease expired: no heartbeat since {}",
        worker.heartbeat_at.to_rfc3339()
    ));
    set_status(task, worker, WorkerStatus::Error, now);
    Outcome {
        changed: true,
        events: vec![Event::task_updated(task), Event::worker_updated(worker)],
        ..Outcome::default()
    }
}

/// Moves the worker to `to` (already checked) and makes its task mirror it, unless the
/// task has ended or has moved on to another worker.
/// Before a worker ends in `error` for its runner's sake (`why`), moves its task to
/// the task's `fallbackRunner` for the next attempt, if one is left, and says so in
/// the worker's error.
fn fall_back(task: &mut Task, worker: &mut Worker, why: &str) {
    let current = task.worker_id.as_deref() == Some(worker.id.as_str());
    if !current || task.status.is_terminal() || task.attempts >= task.max_attempts {
        return;
    }
    if let Some(said) = runners::fall_back(task, why) {
        worker.error = Some(match worker.error.take() {
            Some(error) => format!("{error}\n{said}"),
            None => said,
        });
    }
}

fn set_status(task: &mut Task, worker: &mut Worker, to: WorkerStatus, now: Timestamp) {
    if worker.status == WorkerStatus::WaitingInput && to != WorkerStatus::WaitingInput {
        worker.question = None;
    }
    worker.status = to;
    if to.is_terminal() {
        worker.finished_at = Some(now);
    }
    if task.status.is_terminal() || task.worker_id.as_deref() != Some(worker.id.as_str()) {
        return;
    }
    match to {
        WorkerStatus::Idle | WorkerStatus::Starting | WorkerStatus::Paused => {
            task.status = TaskStatus::Assigned
        }
        WorkerStatus::Running => task.status = TaskStatus::Running,
        WorkerStatus::WaitingInput => task.status = TaskStatus::WaitingInput,
        // A planning run ends with a plan for a person to approve.
        WorkerStatus::Completed if task.mode == TaskMode::Plan => task.status = TaskStatus::Planned,
        WorkerStatus::Completed => {
            task.status = TaskStatus::Completed;
            task.completed_at = Some(now);
        }
        WorkerStatus::Error => lease::release(task, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::claim::assign;
    use crate::core::model::{Account, AccountType, AuthType};
    use crate::core::time;
    use chrono::Duration;
    use serde_json::json;

    fn claimed(max_attempts: i32) -> (Task, Worker) {
        let now = time::now();
        let mut task = Task {
            id: "task-1".into(),
            max_attempts,
            ..Task::new("ws-1".into(), "t", now)
        };
        let account = Account {
            id: "acc-1".into(),
            account_type: AccountType::User,
            name: "u".into(),
            auth_type: AuthType::Oauth,
            max_concurrent_workers: 3,
            max_concurrent_sessions: None,
            max_cost_per_day: None,
            github_repo: None,
            created_at: now,
        };
        let worker = assign(&mut task, &account, now).worker;
        (task, worker)
    }

    fn to(status: WorkerStatus) -> Action {
        Action::update(WorkerUpdate {
            status: Some(status),
            ..WorkerUpdate::default()
        })
    }

    #[test]
    fn happy_path_mirrors_the_task() {
        let (mut task, mut worker) = claimed(3);
        let now = time::now();
        apply(
            to(WorkerStatus::Starting),
            &mut task,
            Some(&mut worker),
            now,
        )
        .unwrap();
        assert_eq!(task.status, TaskStatus::Assigned);
        apply(to(WorkerStatus::Running), &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(task.status, TaskStatus::Running);
        let done = Action::update(WorkerUpdate {
            status: Some(WorkerStatus::Completed),
            result: Some(json!({"summary": "ok"})),
            ..WorkerUpdate::default()
        });
        let out = apply(done, &mut task, Some(&mut worker), now).unwrap();
        assert!(out.artifacts.is_empty());
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.result, Some(json!({"summary": "ok"})));
        assert!(worker.finished_at.is_some());
        assert_eq!(out.events.len(), 2);
    }

    #[test]
    fn a_progress_line_shows_on_the_worker_and_its_current_task() {
        let (mut task, mut worker) = claimed(3);
        let now = time::now();
        let report = |line: &str| {
            Action::update(WorkerUpdate {
                progress: Some(line.into()),
                ..WorkerUpdate::default()
            })
        };
        let out = apply(
            report("  Tests pass;\n\tnow the docs "),
            &mut task,
            Some(&mut worker),
            now,
        )
        .unwrap();
        assert_eq!(worker.progress.as_deref(), Some("Tests pass; now the docs"));
        assert_eq!(task.progress, worker.progress);
        // The task changed, so people watching the task hear of it too.
        assert_eq!(out.events.len(), 2);
        for bad in ["", " \n ", &"x".repeat(MAX_PROGRESS_LEN + 1)] {
            let err = apply(report(bad), &mut task, Some(&mut worker), now).unwrap_err();
            assert!(matches!(err, RuleError::Invalid(_)), "{bad:?}: {err}");
        }
        assert_eq!(worker.progress.as_deref(), Some("Tests pass; now the docs"));
        // A run whose task moved on to another attempt keeps its line to itself.
        task.worker_id = Some("wrk-next".into());
        apply(report("late"), &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(worker.progress.as_deref(), Some("late"));
        assert_eq!(task.progress.as_deref(), Some("Tests pass; now the docs"));
    }

    #[test]
    fn links_are_web_urls() {
        let (mut task, mut worker) = claimed(3);
        let now = time::now();
        let link = |value: &str| {
            Action::update(WorkerUpdate {
                artifacts: vec![Artifact {
                    kind: ArtifactKind::Link,
                    value: value.into(),
                }],
                ..WorkerUpdate::default()
            })
        };
        let out = apply(
            link("https://ci.example.com/runs/7"),
            &mut task,
            Some(&mut worker),
            now,
        )
        .unwrap();
        assert_eq!(out.artifacts[0].kind, ArtifactKind::Link);
        for bad in [
            "javascript:alert(1)",
            "ci.example.com/runs/7",
            "file:///etc/passwd",
        ] {
            let err = apply(link(bad), &mut task, Some(&mut worker), now).unwrap_err();
            assert!(
                err.to_string().contains("http:// or https://"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn new_branches_commits_and_prs_become_artifacts() {
        let (mut task, mut worker) = claimed(3);
        let now = time::now();
        let report = |commit: &str| {
            Action::update(WorkerUpdate {
                branch: Some("buildd/task-1".into()),
                commit_sha: Some(commit.into()),
                artifacts: vec![Artifact {
                    kind: ArtifactKind::File,
                    value: "src/a.rs".into(),
                }],
                ..WorkerUpdate::default()
            })
        };
        let out = apply(report("c1"), &mut task, Some(&mut worker), now).unwrap();
        let kinds: Vec<ArtifactKind> = out.artifacts.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            [
                ArtifactKind::Branch,
                ArtifactKind::Commit,
                ArtifactKind::File
            ]
        );
        let out = apply(report("c2"), &mut task, Some(&mut worker), now).unwrap();
        let values: Vec<&str> = out.artifacts.iter().map(|a| a.value.as_str()).collect();
        assert_eq!(
            values,
            ["c2", "src/a.rs"],
            "an unchanged branch is not recorded again"
        );
        let blank = Action::update(WorkerUpdate {
            branch: Some(String::new()),
            pr_url: Some(" ".into()),
            ..WorkerUpdate::default()
        });
        let out = apply(blank, &mut task, Some(&mut worker), now).unwrap();
        assert!(out.artifacts.is_empty(), "blank values are no artifacts");
    }

    #[test]
    fn usage_follows_slots_and_cost() {
        let (mut task, mut worker) = claimed(3);
        let now = time::now();
        let report = Action::update(WorkerUpdate {
            status: Some(WorkerStatus::Starting),
            cost_usd: Some(0.5),
            ..WorkerUpdate::default()
        });
        let out = apply(report, &mut task, Some(&mut worker), now).unwrap();
        assert_eq!((out.usage.active_workers, out.usage.cost_usd), (0, 0.5));
        assert_eq!(out.usage.day, time::utc_day(worker.started_at));
        let out = apply(to(WorkerStatus::Paused), &mut task, Some(&mut worker), now).unwrap();
        assert!(out.usage.is_empty(), "a paused worker keeps its slot");
        let out = apply(to(WorkerStatus::Error), &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(out.usage.active_workers, -1);
    }

    #[test]
    fn illegal_moves_conflict_and_change_nothing() {
        let (mut task, mut worker) = claimed(3);
        let before = (task.clone(), worker.clone());
        let err = apply(
            to(WorkerStatus::Completed),
            &mut task,
            Some(&mut worker),
            time::now(),
        );
        assert!(matches!(err, Err(RuleError::Conflict(_))));
        assert_eq!((task, worker), before);
    }

    #[test]
    fn error_requeues_until_attempts_are_spent() {
        let (mut task, mut worker) = claimed(2);
        apply(
            to(WorkerStatus::Error),
            &mut task,
            Some(&mut worker),
            time::now(),
        )
        .unwrap();
        assert_eq!(task.status, TaskStatus::Pending);
        assert_eq!(task.worker_id, None);

        let (mut task, mut worker) = claimed(1);
        apply(
            to(WorkerStatus::Error),
            &mut task,
            Some(&mut worker),
            time::now(),
        )
        .unwrap();
        assert_eq!(task.status, TaskStatus::Failed);
    }

    fn expire_at(cutoff: Timestamp, paused: Timestamp) -> Action {
        Action::Expire {
            cutoffs: lease::Cutoffs {
                leased: cutoff,
                paused,
            },
        }
    }

    #[test]
    fn expiry_only_hits_stale_leased_workers() {
        let (mut task, mut worker) = claimed(3);
        let now = time::now();
        let early = expire_at(worker.heartbeat_at, worker.heartbeat_at);
        assert!(
            !apply(early, &mut task, Some(&mut worker), now)
                .unwrap()
                .changed
        );
        let late = expire_at(
            worker.heartbeat_at + Duration::seconds(1),
            worker.heartbeat_at,
        );
        assert!(
            apply(late, &mut task, Some(&mut worker), now)
                .unwrap()
                .changed
        );
        assert_eq!(worker.status, WorkerStatus::Error);
        assert_eq!(task.status, TaskStatus::Pending);
    }

    #[test]
    fn a_paused_worker_expires_after_its_own_longer_cutoff() {
        let (mut task, mut worker) = claimed(3);
        let now = time::now();
        apply(Action::Pause, &mut task, Some(&mut worker), now).unwrap();
        let beat = worker.heartbeat_at;
        let leased_only = expire_at(beat + Duration::seconds(1), beat);
        assert!(
            !apply(leased_only, &mut task, Some(&mut worker), now)
                .unwrap()
                .changed,
            "one lease is not enough for a paused worker"
        );
        let both = expire_at(beat + Duration::seconds(9), beat + Duration::seconds(1));
        let out = apply(both, &mut task, Some(&mut worker), now).unwrap();
        assert!(out.changed);
        assert_eq!(out.usage.active_workers, -1, "its slot is free again");
        assert_eq!(worker.status, WorkerStatus::Error);
        assert_eq!(task.status, TaskStatus::Pending);

        let cutoffs = lease::Cutoffs::at(now, std::time::Duration::from_secs(10));
        assert_eq!(now - cutoffs.leased, Duration::seconds(10));
        assert_eq!(
            now - cutoffs.paused,
            Duration::seconds(10 * i64::from(lease::PAUSED_LEASES))
        );
    }

    #[test]
    fn cancelling_a_paused_task_ends_its_worker_and_frees_the_slot() {
        let (mut task, mut worker) = claimed(3);
        let now = time::now();
        apply(Action::Pause, &mut task, Some(&mut worker), now).unwrap();
        let out = apply(Action::Cancel, &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(task.status, TaskStatus::Cancelled);
        assert_eq!(worker.status, WorkerStatus::Error);
        assert_eq!(worker.error.as_deref(), Some("the task was cancelled"));
        assert_eq!(out.usage.active_workers, -1);
        assert_eq!(out.events.len(), 2);

        // A running worker is left to its agent, which the heartbeat tells.
        let (mut task, mut worker) = claimed(3);
        apply(
            to(WorkerStatus::Starting),
            &mut task,
            Some(&mut worker),
            now,
        )
        .unwrap();
        let out = apply(Action::Cancel, &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(worker.status, WorkerStatus::Starting);
        assert!(out.usage.is_empty());
    }

    #[test]
    fn cancel_and_pause_reach_the_agent_through_the_heartbeat() {
        let (mut task, mut worker) = claimed(3);
        let now = time::now();
        assert!(apply(Action::Start, &mut task, Some(&mut worker), now).is_err());
        let beat = apply(Action::Heartbeat, &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(beat.control, RunControl::None);
        apply(Action::Pause, &mut task, Some(&mut worker), now).unwrap();
        let beat = apply(Action::Heartbeat, &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(beat.control, RunControl::Pause);
        let answer = HeartbeatAnswer::from_outcome(beat);
        assert!(answer.cancel, "older agents stop on `cancel`");
        apply(Action::Start, &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(worker.status, WorkerStatus::Starting);
        apply(Action::Cancel, &mut task, None, now).unwrap();
        assert_eq!(
            apply(Action::Heartbeat, &mut task, Some(&mut worker), now)
                .unwrap()
                .control,
            RunControl::Cancel
        );
        assert!(apply(Action::Cancel, &mut task, None, now).is_err());
    }

    #[test]
    fn a_worker_whose_task_moved_on_is_told_to_stop() {
        let (mut task, mut worker) = claimed(3);
        let now = time::now();
        apply(Action::Cancel, &mut task, Some(&mut worker), now).unwrap();
        crate::core::workflow::retry(&mut task, &[], now).unwrap();
        assert_eq!(task.status, TaskStatus::Pending);
        let beat = apply(Action::Heartbeat, &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(beat.control, RunControl::Cancel);
    }

    #[test]
    fn reply_resumes_a_waiting_worker_once() {
        let (mut task, mut worker) = claimed(3);
        let now = time::now();
        for s in [WorkerStatus::Starting, WorkerStatus::Running] {
            apply(to(s), &mut task, Some(&mut worker), now).unwrap();
        }
        let ask = Action::update(WorkerUpdate {
            status: Some(WorkerStatus::WaitingInput),
            question: Some("Which DB?".into()),
            ..WorkerUpdate::default()
        });
        apply(ask, &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(task.status, TaskStatus::WaitingInput);
        let answer = Action::Reply {
            message: "Postgres".into(),
        };
        let out = apply(answer.clone(), &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(out.messages.len(), 1);
        assert_eq!(worker.question, None);
        assert_eq!(task.status, TaskStatus::Running);
        let beat = apply(Action::Heartbeat, &mut task, Some(&mut worker), now).unwrap();
        assert_eq!(beat.reply.as_deref(), Some("Postgres"));
        assert!(apply(answer, &mut task, Some(&mut worker), now).is_err());
    }
}
