//! The tools of `/mcp`: what each takes (its input schema, derived from the type its
//! arguments are read into), what it is for (its description, written for a model),
//! and what it does, which is to call the API's handler for the same request with
//! the caller. A run acts as its worker's account, inside what
//! [`policy::run_may_read`] and [`workflow::subtask_room`] leave it.

use std::collections::VecDeque;
use std::future::Future;

use axum::Json;
use axum::extract::{Path, State};
use rmcp::model::{CallToolResult, ContentBlock, ErrorData, JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::McpCaller;
use crate::api::{
    CommentBody, MessageBody, MessagesQuery, NewTask, PageQuery, TaskDetail, TaskQuery, WorkerQuery,
};
use crate::core::actions::WorkerUpdate;
use crate::core::model::{
    Artifact, ArtifactKind, RecordedArtifact, RunnerPreference, Task, TaskMode, TaskStatus, Worker,
};
use crate::core::policy;
use crate::core::time::Timestamp;
use crate::core::transcript::{Transcript, attempt_header};
use crate::core::workflow;
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, Body, Params, from_value};
use crate::server::routes::{tasks, workers, workspaces};

/// What the server tells every MCP client about itself.
pub const INSTRUCTIONS: &str = "buildd queues coding tasks for a fleet of AI coding agents \
    (Claude Code on laptops, CI jobs and VMs), which claim them, work on them in git \
    worktrees on branches named buildd/<task-id>, and report progress, cost and results. \
    Use these tools to queue work, follow it, answer the questions agents ask and read \
    what they did. A task waits in `pending` until an agent claims it; `waiting_input` \
    means its agent asked something: answer with `reply`.";

/// The tools of a person's session (the admin token or an account key).
const PEOPLE: &[&str] = &[
    "list_workspaces",
    "list_tasks",
    "get_task",
    "get_task_logs",
    "create_task",
    "cancel_task",
    "reply",
    "comment",
    "followup",
];

/// The tools of a run (its worker token).
pub const RUN: &[&str] = &[
    "report_progress",
    "add_artifact",
    "create_subtask",
    "get_task",
];

/// The most characters `get_task_logs` returns.
const MAX_LOG_CHARS: usize = 100_000;
/// What `get_task_logs` returns when not told.
const DEFAULT_LOG_CHARS: usize = 20_000;
/// The most tasks one `list_tasks` page holds.
const MAX_LIST: u32 = 100;

/// The tools `caller` may call, with their schemas and descriptions.
pub fn listed(caller: &McpCaller) -> Vec<Tool> {
    let names = match caller {
        McpCaller::Person(_) => PEOPLE,
        McpCaller::Run { .. } => RUN,
    };
    names.iter().map(|name| describe(name, caller)).collect()
}

/// One tool as listed. A run's `get_task` takes its id as optional: its own task.
fn describe(name: &'static str, caller: &McpCaller) -> Tool {
    let run = matches!(caller, McpCaller::Run { .. });
    match name {
        "list_workspaces" => tool::<NoArguments>(
            name,
            "List the workspaces (repositories) you may see, with their ids, names and \
             repository URLs. Tasks are queued in a workspace.",
            Hint::Read,
        ),
        "list_tasks" => tool::<ListTasks>(
            name,
            "List tasks, newest first, with their status and latest progress line. Filter \
             by workspace, status or text; page with `cursor` (the `nextCursor` of the \
             page before).",
            Hint::Read,
        ),
        "get_task" if run => tool::<OwnTask>(
            name,
            "Read a task: your own (leave `id` out), one your task depends on, or one of \
             the subtasks you created. Shows its status, description, result, workers \
             (branch, commit, pull request, cost, progress), dependencies and children.",
            Hint::Read,
        ),
        "get_task" => tool::<TaskId>(
            name,
            "Read one task whole: status, description, result, its workers (every \
             attempt, with branch, commit, pull request, cost and progress line), what it \
             produced (artifacts), its dependencies and its children (plan steps, \
             follow-ups, subtasks).",
            Hint::Read,
        ),
        "get_task_logs" => tool::<TaskLogs>(
            name,
            "Read what the agents working on a task did: every attempt's transcript, \
             readable (messages, tool calls with their main argument, short results, \
             questions and answers, the final result with turns and cost). Long \
             transcripts are cut from the start: the end is kept.",
            Hint::Read,
        ),
        "create_task" => tool::<CreateTask>(
            name,
            "Queue a coding task for the team's agents. Write the description as a \
             complete brief: the agent that takes it sees only the title and description \
             (plus what its dependencies produced). Returns the task; follow it with \
             get_task or get_task_logs.",
            Hint::Write,
        ),
        "cancel_task" => tool::<TaskId>(
            name,
            "Cancel a task that has not ended. Its running agent is told to stop; tasks \
             that depend on it fail.",
            Hint::Destroy,
        ),
        "reply" => tool::<Reply>(
            name,
            "Answer the question of a task in `waiting_input` (the question is the \
             `question` of its current worker, shown by get_task). The agent carries on \
             in the same session.",
            Hint::Write,
        ),
        "comment" => tool::<NewComment>(
            name,
            "Add a comment to a task, for the people following it.",
            Hint::Write,
        ),
        "followup" => tool::<Followup>(
            name,
            "Continue a task that has ended: a new task that starts from the branch its \
             last run left and carries on that run's session, with `message` as what to \
             do next.",
            Hint::Write,
        ),
        "report_progress" => tool::<Progress>(
            name,
            "Tell the people watching what you are doing now, in one short line (for \
             example \"Tests pass; updating the docs\"). It is shown on your task in \
             buildd's dashboard. Call it at milestones, not for every step.",
            Hint::Write,
        ),
        "add_artifact" => tool::<NewArtifact>(
            name,
            "Record something your run produced that people should find from the task: \
             a link (a deployed preview, a CI run, a document) or a file in the \
             repository (a report, a screenshot's path). Branches and commits are \
             recorded for you.",
            Hint::Write,
        ),
        "create_subtask" => tool::<NewSubtask>(
            name,
            "Queue a separate piece of work as a subtask of your task, for another agent \
             to do (in parallel, on its own branch). Use it for work that is independent \
             of what you are doing, not for your own next steps. Write the description as \
             a complete brief: its agent sees nothing of your session.",
            Hint::Write,
        ),
        other => unreachable!("no description for tool {other}"),
    }
}

/// What a tool does to buildd's state, for the client to decide how careful to be.
enum Hint {
    Read,
    Write,
    Destroy,
}

fn tool<A: JsonSchema + 'static>(
    name: &'static str,
    description: &'static str,
    hint: Hint,
) -> Tool {
    let annotations = match hint {
        Hint::Read => ToolAnnotations::new().read_only(true),
        Hint::Write => ToolAnnotations::new().read_only(false).destructive(false),
        Hint::Destroy => ToolAnnotations::new().read_only(false).destructive(true),
    };
    Tool::new(name, description, JsonObject::new())
        .with_input_schema::<A>()
        .annotate(annotations.open_world(false))
}

/// Calls the tool `name` for `caller`. An unknown tool (or one of the other kind of
/// caller's) is the protocol's invalid-params error; everything else, bad arguments
/// included, is the tool's own result, failed or not.
pub async fn call(
    state: &AppState,
    caller: &McpCaller,
    name: &str,
    arguments: JsonObject,
) -> Result<CallToolResult, ErrorData> {
    let state = state.clone();
    match caller {
        McpCaller::Person(person) => {
            let person = person.clone();
            Ok(match name {
                "list_workspaces" => {
                    run(name, arguments, |_: NoArguments| async move {
                        workspaces::list(State(state), person)
                            .await
                            .map(|Json(w)| w)
                    })
                    .await
                }
                "list_tasks" => run(name, arguments, |a| list_tasks(state, person, a)).await,
                "get_task" => {
                    run(name, arguments, |a: TaskId| task_view(state, person, a.id)).await
                }
                "get_task_logs" => run_text(name, arguments, |a| logs(state, person, a)).await,
                "create_task" => run(name, arguments, |a| create_task(state, person, a)).await,
                "cancel_task" => {
                    run(name, arguments, |a: TaskId| async move {
                        tasks::cancel(State(state), person, Path(a.id))
                            .await
                            .map(|Json(t)| t)
                    })
                    .await
                }
                "reply" => {
                    run(name, arguments, |a: Reply| async move {
                        let body = MessageBody { message: a.message };
                        tasks::reply(State(state), person, Path(a.id), Body(body))
                            .await
                            .map(|Json(t)| t)
                    })
                    .await
                }
                "comment" => {
                    run(name, arguments, |a: NewComment| async move {
                        let body = CommentBody { body: a.body };
                        tasks::comment(State(state), person, Path(a.id), Body(body))
                            .await
                            .map(|(_, Json(c))| c)
                    })
                    .await
                }
                "followup" => {
                    run(name, arguments, |a: Followup| async move {
                        let body = MessageBody { message: a.message };
                        tasks::followup(State(state), person, Path(a.id), Body(body))
                            .await
                            .map(|(_, Json(t))| t)
                    })
                    .await
                }
                _ => return Err(unknown(name, PEOPLE)),
            })
        }
        McpCaller::Run { worker, account } => {
            let (worker, account) = (*worker.clone(), Caller::Account(account.clone()));
            Ok(match name {
                "report_progress" => {
                    run(name, arguments, |a: Progress| async move {
                        let update = WorkerUpdate {
                            progress: Some(a.message),
                            ..WorkerUpdate::default()
                        };
                        let Json(worker) =
                            workers::update(State(state), account, Path(worker.id), Body(update))
                                .await?;
                        Ok(Reported {
                            progress: worker.progress,
                        })
                    })
                    .await
                }
                "add_artifact" => {
                    run(name, arguments, |a: NewArtifact| async move {
                        let artifact = Artifact {
                            kind: a.kind,
                            value: a.value,
                        };
                        let update = WorkerUpdate {
                            artifacts: vec![artifact.clone()],
                            ..WorkerUpdate::default()
                        };
                        let Json(_) =
                            workers::update(State(state), account, Path(worker.id), Body(update))
                                .await?;
                        Ok(Recorded { recorded: artifact })
                    })
                    .await
                }
                "create_subtask" => {
                    run(name, arguments, |a| subtask(state, account, worker, a)).await
                }
                "get_task" => {
                    run(name, arguments, |a: OwnTask| async move {
                        let own = task_of(&state, &worker.task_id).await?;
                        let id = a.id.unwrap_or_else(|| own.id.clone());
                        let target = task_of(&state, &id).await?;
                        policy::run_may_read(&own, &target)
                            .map_err(|d| ApiError::Forbidden(d.0))?;
                        task_view(state, account, id).await
                    })
                    .await
                }
                _ => return Err(unknown(name, RUN)),
            })
        }
    }
}

/// The protocol's error for a tool this caller does not have.
fn unknown(name: &str, tools: &[&str]) -> ErrorData {
    ErrorData::invalid_params(
        format!(
            "unknown tool {name:?}; the tools here are: {}",
            tools.join(", ")
        ),
        None,
    )
}

/// Runs a tool whose answer is JSON: its arguments read into `A` (a failed result that
/// says what does not fit, if they do not), then `work`.
async fn run<A, R, F>(
    tool: &str,
    arguments: JsonObject,
    work: impl FnOnce(A) -> F,
) -> CallToolResult
where
    A: DeserializeOwned,
    R: Serialize,
    F: Future<Output = ApiResult<R>>,
{
    let arguments = match read(tool, arguments) {
        Ok(arguments) => arguments,
        Err(refused) => return CallToolResult::error(vec![ContentBlock::text(refused)]),
    };
    match work(arguments).await.and_then(|answer| {
        serde_json::to_value(answer).map_err(|e| ApiError::BadRequest(e.to_string()))
    }) {
        Ok(answer) => CallToolResult::structured(answer),
        Err(e) => failed(e),
    }
}

/// Runs a tool whose answer is text for a model to read.
async fn run_text<A, F>(
    tool: &str,
    arguments: JsonObject,
    work: impl FnOnce(A) -> F,
) -> CallToolResult
where
    A: DeserializeOwned,
    F: Future<Output = ApiResult<String>>,
{
    let arguments = match read(tool, arguments) {
        Ok(arguments) => arguments,
        Err(refused) => return CallToolResult::error(vec![ContentBlock::text(refused)]),
    };
    match work(arguments).await {
        Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
        Err(e) => failed(e),
    }
}

/// A tool's arguments, read as the API reads a body (NUL refused, `3.0` read as 3),
/// or what does not fit.
fn read<A: DeserializeOwned>(tool: &str, arguments: JsonObject) -> Result<A, String> {
    from_value(serde_json::Value::Object(arguments)).map_err(|e| {
        format!("invalid arguments for {tool}: {e} (the tool's input schema lists what it takes)")
    })
}

/// A failed call, told to the model: what the API would have answered.
fn failed(error: ApiError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(error.message())])
}

async fn task_of(state: &AppState, id: &str) -> ApiResult<Task> {
    state
        .store
        .get_task(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {id} not found")))
}

// ---- arguments ----

/// No arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskId {
    /// The task's id, `task-…`.
    id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OwnTask {
    /// The task's id, `task-…`; leave it out for your own task.
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListTasks {
    /// Only tasks of this workspace: its id (`ws-…`) or its name.
    #[serde(default)]
    workspace: Option<String>,
    /// Only tasks in this status.
    #[serde(default)]
    status: Option<TaskStatus>,
    /// Only tasks whose title or description contains this text, ignoring case.
    #[serde(default)]
    #[schemars(length(max = 500))]
    text: Option<String>,
    /// How many tasks to return, 1 to 100 (default 20).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    limit: Option<u32>,
    /// The `nextCursor` of the page before, for the next page.
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskLogs {
    /// The task's id, `task-…`.
    id: String,
    /// The most characters to return, 1000 to 100000 (default 20000); a longer
    /// transcript keeps its end.
    #[serde(default)]
    #[schemars(range(min = 1000, max = 100000))]
    max_chars: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateTask {
    /// The workspace to queue it in: its id (`ws-…`) or its name. May be left out
    /// when you can see only one workspace.
    #[serde(default)]
    workspace: Option<String>,
    /// A short title, 1 to 500 characters.
    #[schemars(length(min = 1, max = 500))]
    title: String,
    /// The brief: what to do, where, how to check it is done.
    #[serde(default)]
    #[schemars(length(max = 262144))]
    description: String,
    /// Higher is taken first; default 0.
    #[serde(default)]
    priority: i32,
    /// Which kind of agent may take it: `any` (default), `user` (people's own
    /// machines), `service` (always-on agents) or `action` (CI jobs).
    #[serde(default)]
    runner_preference: Option<RunnerPreference>,
    /// What runs it: `claude`, `codex`, `gemini`, or a command's name an agent
    /// declares (default: whatever the agent that takes it runs).
    #[serde(default)]
    #[schemars(length(max = 32))]
    runner: Option<String>,
    /// The model its runner uses (default: the agent's).
    #[serde(default)]
    #[schemars(length(max = 200))]
    model: Option<String>,
    /// Ids of tasks (in the same workspace) that must complete first; it waits as
    /// `blocked` until they have.
    #[serde(default)]
    #[schemars(length(max = 100))]
    depends_on: Vec<String>,
    /// The git branch to start from (default: the agent's checkout).
    #[serde(default)]
    base_branch: Option<String>,
    /// True: the agent first proposes a plan of steps for a person to approve.
    #[serde(default)]
    plan: bool,
    /// How many attempts before the task fails, 1 to 100 (default 3).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    max_attempts: Option<i32>,
    /// The most the task may cost, in US dollars; the agent stops past it.
    #[serde(default)]
    #[schemars(range(min = 0))]
    max_cost_usd: Option<f64>,
    /// A task (of the same workspace) this one is part of.
    #[serde(default)]
    parent_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Reply {
    /// The waiting task's id, `task-…`.
    id: String,
    /// The answer to its question.
    #[schemars(length(min = 1, max = 65536))]
    message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewComment {
    /// The task's id, `task-…`.
    id: String,
    /// The comment.
    #[schemars(length(min = 1, max = 65536))]
    body: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Followup {
    /// The id of a task that has ended, `task-…`.
    id: String,
    /// What to do next.
    #[schemars(length(min = 1, max = 65536))]
    message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Progress {
    /// One short status line, at most 500 characters.
    #[schemars(length(min = 1, max = 500))]
    message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewArtifact {
    /// `link` for an http(s) URL, `file` for a path in the repository; also `pr`,
    /// `branch` or `commit` for ones you made yourself.
    kind: ArtifactKind,
    /// The URL, path, branch, commit SHA or pull request URL.
    #[schemars(length(min = 1, max = 2048))]
    value: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewSubtask {
    /// A short title, 1 to 500 characters.
    #[schemars(length(min = 1, max = 500))]
    title: String,
    /// The brief: what to do, where, how to check it is done.
    #[serde(default)]
    #[schemars(length(max = 262144))]
    description: String,
    /// Higher is taken first; default: your task's.
    #[serde(default)]
    priority: Option<i32>,
    /// Ids of tasks (your other subtasks, say) that must complete first.
    #[serde(default)]
    #[schemars(length(max = 100))]
    depends_on: Vec<String>,
}

// ---- answers ----

/// A task as a list shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskLine {
    id: String,
    title: String,
    status: TaskStatus,
    workspace_id: String,
    priority: i32,
    created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskLines {
    tasks: Vec<TaskLine>,
    next_cursor: Option<String>,
}

/// A task whole: the API's task page, its workers and what they produced.
#[derive(Debug, Serialize)]
struct TaskView {
    #[serde(flatten)]
    detail: TaskDetail,
    /// Every attempt, newest first.
    workers: Vec<Worker>,
    artifacts: Vec<RecordedArtifact>,
}

#[derive(Debug, Serialize)]
struct Reported {
    progress: Option<String>,
}

#[derive(Debug, Serialize)]
struct Recorded {
    recorded: Artifact,
}

// ---- the tools that do more than one call ----

async fn list_tasks(state: AppState, caller: Caller, a: ListTasks) -> ApiResult<TaskLines> {
    let workspace_id = match a.workspace {
        Some(wanted) => Some(workspace_id(&state, &caller, &wanted).await?),
        None => None,
    };
    let limit = a.limit.unwrap_or(20);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIST}"
        )));
    }
    let query = TaskQuery {
        workspace_id,
        status: a.status,
        q: a.text,
        limit: Some(limit),
        cursor: a.cursor,
        ..TaskQuery::default()
    };
    let Json(list) = tasks::list(State(state), caller, Params(query)).await?;
    Ok(TaskLines {
        tasks: list
            .tasks
            .into_iter()
            .map(|t| TaskLine {
                id: t.id,
                title: t.title,
                status: t.status,
                workspace_id: t.workspace_id,
                priority: t.priority,
                created_at: t.created_at,
                progress: t.progress,
                parent_id: t.parent_id,
                error: t.error,
            })
            .collect(),
        next_cursor: list.next_cursor,
    })
}

/// The id of the workspace `wanted` names, by id or by name among those the caller
/// sees.
async fn workspace_id(state: &AppState, caller: &Caller, wanted: &str) -> ApiResult<String> {
    let Json(visible) = workspaces::list(State(state.clone()), caller.clone()).await?;
    let wanted = wanted.trim();
    let named: Vec<_> = visible
        .workspaces
        .iter()
        .filter(|w| w.id == wanted || w.name.eq_ignore_ascii_case(wanted))
        .collect();
    let listing = || {
        visible
            .workspaces
            .iter()
            .map(|w| format!("{} ({})", w.name, w.id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match named.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(ApiError::NotFound(format!(
            "no workspace {wanted:?} that you may see; yours: {}",
            listing()
        ))),
        _ => Err(ApiError::BadRequest(format!(
            "several workspaces are named {wanted:?}; give one's id: {}",
            listing()
        ))),
    }
}

async fn task_view(state: AppState, caller: Caller, id: String) -> ApiResult<TaskView> {
    let Json(detail) = tasks::show(State(state.clone()), caller.clone(), Path(id.clone())).await?;
    let query = WorkerQuery {
        task_id: Some(id.clone()),
        ..WorkerQuery::default()
    };
    let Json(workers) = workers::list(State(state.clone()), caller.clone(), Params(query)).await?;
    let Json(artifacts) =
        tasks::artifacts(State(state), caller, Path(id), Params(PageQuery::default())).await?;
    Ok(TaskView {
        detail,
        workers: workers.workers,
        artifacts: artifacts.artifacts,
    })
}

async fn create_task(state: AppState, caller: Caller, a: CreateTask) -> ApiResult<Task> {
    let workspace_id = match a.workspace {
        Some(wanted) => workspace_id(&state, &caller, &wanted).await?,
        None => only_workspace(&state, &caller).await?,
    };
    let task = NewTask {
        workspace_id,
        title: a.title,
        description: a.description,
        runner_preference: a.runner_preference,
        runner: a.runner,
        model: a.model,
        priority: a.priority,
        max_attempts: a.max_attempts,
        max_cost_usd: a.max_cost_usd,
        depends_on: a.depends_on,
        base_branch: a.base_branch,
        mode: a.plan.then_some(TaskMode::Plan),
        parent_id: a.parent_id,
        ..NewTask::default()
    };
    let (_, Json(task)) = tasks::create(State(state), caller, Body(task)).await?;
    Ok(task)
}

/// The caller's one workspace, when a tool's workspace is left out.
async fn only_workspace(state: &AppState, caller: &Caller) -> ApiResult<String> {
    let Json(visible) = workspaces::list(State(state.clone()), caller.clone()).await?;
    match visible.workspaces.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(ApiError::Forbidden(
            "you may see no workspace; an admin must grant you one".into(),
        )),
        several => Err(ApiError::BadRequest(format!(
            "say which workspace: {}",
            several
                .iter()
                .map(|w| format!("{} ({})", w.name, w.id))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A run's subtask: queued in its workspace, as its task's child, like its task in
/// how it runs (runner preference, runner and model, priority, attempts, cost cap,
/// base branch).
async fn subtask(
    state: AppState,
    account: Caller,
    worker: Worker,
    a: NewSubtask,
) -> ApiResult<Task> {
    let own = task_of(&state, &worker.task_id).await?;
    let children = state.store.task_links(&own.id).await?.children.len();
    workflow::subtask_room(&own, children)?;
    let task = NewTask {
        workspace_id: own.workspace_id.clone(),
        title: a.title,
        description: a.description,
        runner_preference: Some(own.runner_preference),
        runner: own.runner.clone(),
        model: own.model.clone(),
        fallback_runner: own.fallback_runner.clone(),
        priority: a.priority.unwrap_or(own.priority),
        max_attempts: Some(own.max_attempts),
        max_cost_usd: own.max_cost_usd,
        depends_on: a.depends_on,
        base_branch: own.base_branch.clone(),
        parent_id: Some(own.id),
        ..NewTask::default()
    };
    let (_, Json(task)) = tasks::create(State(state), account, Body(task)).await?;
    Ok(task)
}

/// Every attempt's transcript, oldest first, cut from the start to `maxChars`.
async fn logs(state: AppState, caller: Caller, a: TaskLogs) -> ApiResult<String> {
    let max_chars = a.max_chars.unwrap_or(DEFAULT_LOG_CHARS);
    if !(1000..=MAX_LOG_CHARS).contains(&max_chars) {
        return Err(ApiError::BadRequest(format!(
            "maxChars must be between 1000 and {MAX_LOG_CHARS}"
        )));
    }
    let Json(detail) =
        tasks::show(State(state.clone()), caller.clone(), Path(a.id.clone())).await?;
    let query = WorkerQuery {
        task_id: Some(a.id.clone()),
        ..WorkerQuery::default()
    };
    let Json(list) = workers::list(State(state.clone()), caller.clone(), Params(query)).await?;
    let mut tail = Tail::new(max_chars);
    for (attempt, worker) in list.workers.iter().rev().enumerate() {
        tail.push(attempt_header(worker, attempt + 1));
        let mut transcript = Transcript::new(false);
        let mut after = 0;
        loop {
            let query = MessagesQuery {
                after,
                ..MessagesQuery::default()
            };
            let page = workers::messages(
                State(state.clone()),
                caller.clone(),
                Path(worker.id.clone()),
                Params(query),
            )
            .await?
            .0
            .messages;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for message in &page {
                for line in transcript.lines(&message.message) {
                    tail.push(line);
                }
            }
        }
    }
    let task = &detail.task;
    let mut text = format!("{} · {} · {}\n", task.id, task.status, task.title);
    if list.workers.is_empty() {
        text += "No agent has worked on it yet.\n";
    }
    if tail.dropped > 0 {
        text += &format!(
            "… {} earlier characters left out (maxChars is {max_chars})\n",
            tail.dropped
        );
    }
    for line in tail.lines {
        text += &line;
        text.push('\n');
    }
    Ok(text)
}

/// The last lines of a transcript that fit in a number of characters.
struct Tail {
    room: usize,
    kept: usize,
    lines: VecDeque<String>,
    /// Characters of the lines that gave way.
    dropped: usize,
}

impl Tail {
    fn new(room: usize) -> Self {
        Tail {
            room,
            kept: 0,
            lines: VecDeque::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, line: String) {
        self.kept += line.chars().count() + 1;
        self.lines.push_back(line);
        while self.kept > self.room {
            let Some(first) = self.lines.pop_front() else {
                break;
            };
            let length = first.chars().count() + 1;
            self.kept -= length;
            self.dropped += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Account, AccountType};
    use crate::core::time;

    fn run_caller() -> McpCaller {
        let now = time::now();
        let account = Account::new(AccountType::Service, "svc", now);
        let mut task = Task::new("ws-1".into(), "t", now);
        let worker = crate::core::claim::assign(&mut task, &account, now).worker;
        McpCaller::Run {
            worker: Box::new(worker),
            account,
        }
    }

    /// Every listed tool has an object schema, a description, and a place in its
    /// caller's list; the two lists meet only in `get_task`.
    #[test]
    fn every_tool_is_described_for_a_model() {
        let callers = [McpCaller::Person(Caller::Admin), run_caller()];
        for caller in &callers {
            for tool in listed(caller) {
                assert_eq!(
                    tool.input_schema.get("type"),
                    Some(&"object".into()),
                    "{}",
                    tool.name
                );
                let description = tool.description.as_deref().unwrap_or("");
                assert!(description.len() > 40, "{}: {description}", tool.name);
            }
        }
        let shared: Vec<_> = PEOPLE.iter().filter(|t| RUN.contains(t)).collect();
        assert_eq!(shared, [&"get_task"]);
        let run_get = describe("get_task", &callers[1]);
        let required = |tool: &Tool| tool.input_schema.get("required").cloned();
        assert_eq!(required(&run_get), None, "a run's id is optional");
        let create = describe("create_task", &callers[0]);
        assert_eq!(required(&create), Some(serde_json::json!(["title"])));
        let properties = &create.input_schema["properties"];
        assert_eq!(
            properties["runnerPreference"]["enum"],
            serde_json::json!(["any", "user", "service", "action", null])
        );
    }

    #[test]
    fn a_long_transcript_keeps_its_end() {
        let mut tail = Tail::new(10);
        for line in ["aaaa", "bbbb", "cccc"] {
            tail.push(line.into());
        }
        assert_eq!(tail.lines, ["bbbb", "cccc"]);
        assert_eq!(tail.dropped, 5);
        tail.push("x".repeat(20));
        assert!(tail.lines.is_empty());
        assert_eq!(tail.dropped, 36);
    }
}
