//! The HTTP API's bodies: every request and answer, as one set of types.
//!
//! The server's handlers take and return these, the OpenAPI description is derived
//! from them, and the client sends and reads them, so a field renamed here is renamed
//! everywhere at once and nothing indexes JSON by name. Rows the API shows as they are
//! (a task, a worker, a workspace, …) are the core's own types, re-exported here.
//!
//! Request bodies accept what the contract promises (unknown fields ignored unless
//! stated); limits stated with `schema(...)` are enforced by [`crate::core::validate`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

pub use crate::core::actions::{HeartbeatAnswer, RunControl, WorkerUpdate};
pub use crate::core::claim::EmptyClaim;
pub use crate::core::diff::{Diff, FileChange, NewDiff, ReviewBody, ReviewComment};
pub use crate::core::model::{
    Account, AccountType, Agent, AgentState, Artifact, Attachment, AuthType, Comment, Delivery,
    DeliveryState, GithubAction, GithubOutcome, GithubReaction, Grant, Message, NotifyEvent,
    RecordedArtifact, RunnerPreference, Schedule, Source, Task, TaskMode, TaskRef, TaskStatus,
    TaskTemplate, Trigger, Webhook, Worker, WorkerStatus, Workspace,
};
pub use crate::core::plan::{Plan, PlanStep};

// ---- accounts ----

/// `POST /api/accounts`. Unknown fields are ignored so the original README's bodies
/// work as they are; the Claude credentials those carry are read only to be refused.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewAccount {
    #[serde(rename = "type")]
    pub account_type: AccountType,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub name: String,
    /// Default: `oauth` for user accounts, `api` for the others; action accounts
    /// cannot be `oauth`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<AuthType>,
    /// Default 3.
    #[schema(minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_workers: Option<i64>,
    #[schema(minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_sessions: Option<i64>,
    /// US dollars per UTC day.
    #[schema(minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cost_per_day: Option<f64>,
    /// `owner/repo`, for action accounts.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_repo: Option<String>,
    /// The original README's name for `githubRepo`.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_id: Option<String>,
    /// Refused: never stored (a warning says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anthropic_api_key: Option<Value>,
    /// Refused: never stored (a warning says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth_token: Option<Value>,
}

/// A new account, or an account with a new key: the key is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedAccount {
    #[serde(flatten)]
    pub account: Account,
    pub api_key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountList {
    pub accounts: Vec<Account>,
    /// Send as `cursor=` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /api/accounts/:id/usage`: the account's limits and what it uses of them now,
/// counted by the server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountUsage {
    pub account_id: String,
    /// The UTC day `costToday` counts (`YYYY-MM-DD`).
    pub day: String,
    /// Workers holding one of its slots (starting, running, waiting for input, paused).
    pub active_workers: i64,
    pub max_concurrent_workers: i64,
    /// What its workers started today have cost, in US dollars.
    pub cost_today: f64,
    pub max_cost_per_day: Option<f64>,
}

/// `limit` and `cursor`, for lists that take nothing else.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the page before.
    #[param(pattern = r"^p1\.-?[0-9]{1,18}\.[A-Za-z0-9_-]{0,64}$")]
    pub cursor: Option<String>,
}

/// Who `GET /api/me` says the caller is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Me {
    Admin { admin: bool },
    Account(Account),
}

/// `POST /api/accounts/:id/workspaces`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewGrant {
    pub workspace_id: String,
    #[serde(default)]
    pub can_claim: bool,
    #[serde(default)]
    pub can_create: bool,
}

// ---- workspaces ----

/// `POST /api/workspaces`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewWorkspace {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub name: String,
    #[serde(alias = "repo", skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 2048)]
    pub repo_url: Option<String>,
    /// Default `main`.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    /// The GitHub label that makes an issue a task (default `buildd`).
    #[schema(
        min_length = 1,
        max_length = 50,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_label: Option<String>,
    /// Fix tasks one task's failing CI may make (default 3; 0: none).
    #[schema(minimum = 0, maximum = 20)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ci_retries: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceList {
    pub workspaces: Vec<Workspace>,
}

// ---- tasks ----

/// `POST /api/tasks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewTask {
    pub workspace_id: String,
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub title: String,
    #[serde(default)]
    #[schema(max_length = 262144)]
    pub description: String,
    /// Default `any`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_preference: Option<RunnerPreference>,
    /// Higher goes first; default 0.
    #[serde(default)]
    pub priority: i32,
    /// Default 3.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i32>,
    /// The agent stops the run past this many US dollars.
    #[schema(minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<NewSource>,
    /// Tasks of the same workspace that must complete first (at most 100). The task
    /// is `blocked` until they have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 100)]
    pub depends_on: Vec<String>,
    /// The branch the run starts from (fetched from `origin` when the agent's
    /// checkout lacks it); default: the checkout's current commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 200,
        pattern = r"^[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*(/[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*)*$"
    )]
    pub base_branch: Option<String>,
    /// `plan`: the run proposes a plan for a person to approve instead of doing the
    /// work. Default `run`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<TaskMode>,
    /// The task (of the same workspace) this one is a part of: it is listed among
    /// that task's `children`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// What runs it: `claude`, `codex`, `gemini`, or a name an agent declares for a
    /// command. Default: any runner the claiming agent has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 32, pattern = r"^[a-z0-9][a-z0-9._-]*$")]
    pub runner: Option<String>,
    /// The runner's model. Default: the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\s\x00-\x1f\x7f]+$")]
    pub model: Option<String>,
    /// The runner of the next attempt after one fails because its runner's quota,
    /// authentication or account budget ran out (once; with a `runner` to fall back
    /// from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 32, pattern = r"^[a-z0-9][a-z0-9._-]*$")]
    pub fallback_runner: Option<String>,
}

/// Where a new task came from, e.g. `{"type": "github_issue", "externalId":
/// "my-org/my-repo#12", "url": "https://github.com/my-org/my-repo/issues/12"}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewSource {
    #[serde(rename = "type")]
    #[schema(pattern = r"^[a-z0-9_]{1,50}$")]
    pub source_type: String,
    #[schema(max_length = 200)]
    pub external_id: Option<String>,
    #[schema(max_length = 2048)]
    pub url: Option<String>,
}

/// `GET /api/tasks` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    pub workspace_id: Option<String>,
    pub status: Option<TaskStatus>,
    pub source_id: Option<String>,
    /// Only tasks whose title or description contains this text, ignoring case.
    #[param(max_length = 500)]
    pub q: Option<String>,
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the page before.
    #[param(pattern = r"^p1\.-?[0-9]{1,18}\.[A-Za-z0-9_-]{0,64}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskList {
    pub tasks: Vec<Task>,
    /// Send as `cursor=` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /api/tasks/counts` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct CountsQuery {
    /// Only this workspace's tasks; default: every workspace the caller may see.
    pub workspace_id: Option<String>,
}

/// How many tasks there are in each status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskCounts {
    pub total: i64,
    /// Every status, with 0 for those no task is in.
    pub by_status: Vec<StatusCount>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusCount {
    pub status: TaskStatus,
    pub count: i64,
}

/// `GET /api/tasks/:id`: the task, with where it stands in its workflow.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: Task,
    /// The dependencies that have not completed yet.
    pub blocked_by: Vec<String>,
    /// The dependencies, with their titles and statuses.
    pub dependencies: Vec<TaskRef>,
    /// The tasks whose `parentId` is this one: its plan's steps, its follow-ups.
    pub children: Vec<TaskRef>,
}

/// `POST /api/tasks/:id/approve`; without a body (or without `plan`), the plan the
/// planning run proposed is approved.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ApproveBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

/// The answer to an approval: the plan task, completed, and the tasks it made.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Approved {
    pub task: Task,
    pub children: Vec<Task>,
}

/// `POST /api/tasks/:id/revise`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviseBody {
    /// What to change in the plan.
    #[schema(
        min_length = 1,
        max_length = 65536,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub feedback: String,
}

/// `POST /api/tasks/:id/reply` (the answer), `/followup` (what to do next) and
/// `POST /api/workers/:id/instruct` (the instruction).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageBody {
    #[schema(
        min_length = 1,
        max_length = 65536,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub message: String,
}

/// `GET /api/workers/:id/diff` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// `patch`: the unified diff as text (`text/x-diff`) instead of JSON.
    pub format: Option<DiffFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiffFormat {
    Json,
    Patch,
}

/// The answer to `POST /api/workers/:id/review`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Reviewed {
    /// The review, kept on the reviewed task.
    pub comment: Comment,
    /// The follow-up that carries the review to the agent.
    pub followup: Task,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactList {
    pub artifacts: Vec<RecordedArtifact>,
    /// Send as `cursor=` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /api/tasks/:id/comments`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommentBody {
    #[schema(
        min_length = 1,
        max_length = 65536,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub body: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentList {
    pub comments: Vec<Comment>,
    /// Send as `cursor=` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

// ---- schedules and triggers ----

/// `POST /api/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewSchedule {
    pub workspace_id: String,
    /// 5 fields (minute hour day-of-month month day-of-week, e.g. `0 9 * * 1-5`), or 6
    /// with seconds first; numbers, names (`MON`, `JAN`), `*`, lists, ranges, `*/N`
    /// and `A-B/N` steps, `L`, `W` and `#`, as Vixie cron and croner read them.
    #[schema(
        max_length = 200,
        pattern = r"^\s*[0-9A-Za-z*?,/#-]+(\s+[0-9A-Za-z*?,/#-]+){4,5}\s*$"
    )]
    pub cron: String,
    /// The IANA time zone the cron is read in; default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = timezone_schema)]
    pub timezone: Option<String>,
    pub task: TaskTemplate,
    /// Failed tasks in a row that pause the schedule, 1–100; default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_failures: Option<i32>,
}

/// Every IANA time zone name the server knows, as the description's enum.
fn timezone_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())))
        .build()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

/// `GET /api/schedules` and `GET /api/triggers` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct WorkspaceQuery {
    /// Only this workspace's; default: every workspace the caller may see.
    pub workspace_id: Option<String>,
}

/// `POST /api/triggers`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewTrigger {
    pub workspace_id: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub name: String,
    /// `{{payload.PATH}}` in the title and description is filled from the body each
    /// firing sends.
    pub task: TaskTemplate,
}

/// A new trigger: its token is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedTrigger {
    #[serde(flatten)]
    pub trigger: Trigger,
    /// `buildd_trigger_…`: fires this trigger (`POST /api/triggers/:id/fire`), nothing
    /// else.
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TriggerList {
    pub triggers: Vec<Trigger>,
}

// ---- notifications ----

/// `POST /api/webhooks` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewWebhook {
    /// Where deliveries are POSTed: an `http(s)` URL (a Slack or Discord incoming
    /// webhook shows the `text` line as it is).
    #[schema(max_length = 2048)]
    pub url: String,
    /// The task events it is told of, at least one.
    #[schema(min_items = 1)]
    pub events: Vec<NotifyEvent>,
    /// Signs each delivery (`X-Buildd-Signature-256: sha256=HMAC-SHA256(secret,
    /// body)`); stored sealed, never shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub secret: Option<String>,
    /// Only this workspace's tasks; default: every workspace's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
}

/// `GET /api/webhooks/:id/deliveries` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// The newest this many, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

// ---- workers ----

/// `POST /api/workers/claim`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimBody {
    /// How many tasks to take at most (default 1).
    #[schema(minimum = 1, maximum = 50)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tasks: Option<u32>,
    /// Only claim in this workspace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Seconds to hold the request open until a task fits (default 0).
    #[schema(minimum = 0, maximum = 30)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
    /// The runners the claiming agent has (`claude`, `codex`, …): it gets tasks that
    /// name one of them or none. Without it, only tasks that name no runner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 32, inline, value_type = Vec<String>)]
    pub runners: Vec<String>,
    /// The claiming agent's id, when its event stream takes offers (`GET
    /// /api/events?agentId=…&offers=true`): a claim that leaves it room puts it back
    /// among the agents offered the next task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The task of the `task.offered` event this claim answers. If the claim does not
    /// take it and it is still pending, it is offered to the next agent at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<String>,
}

/// The answer to a claim.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimAnswer {
    #[schema(value_type = Vec<ClaimedWorker>)]
    pub workers: Vec<ClaimEntry>,
    /// The server's lease: heartbeat well inside it.
    pub lease_ttl_secs: f64,
    /// Why no task was claimed; only when `workers` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EmptyClaim>,
}

/// One claimed worker as an agent reads it. An entry it cannot read (from a server
/// newer than it, say) does not spoil the others: the agent gives that worker back by
/// its id, and runs the rest.
#[derive(Debug, Clone)]
pub enum ClaimEntry {
    Readable(Box<ClaimedWorker>),
    Unreadable {
        worker_id: Option<String>,
        error: String,
    },
}

impl Serialize for ClaimEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Id<'a> {
            id: Option<&'a str>,
        }
        match self {
            ClaimEntry::Readable(claimed) => claimed.serialize(serializer),
            ClaimEntry::Unreadable { worker_id, .. } => Id {
                id: worker_id.as_deref(),
            }
            .serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ClaimEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        let value = Value::deserialize(deserializer)?;
        Ok(match ClaimedWorker::deserialize(&value) {
            Ok(claimed) => ClaimEntry::Readable(Box::new(claimed)),
            Err(e) => ClaimEntry::Unreadable {
                worker_id: Id::deserialize(&value).ok().map(|w| w.id),
                error: e.to_string(),
            },
        })
    }
}

/// `POST /api/workers`: claim this one pending task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewWorker {
    pub task_id: String,
}

/// A new worker with the task it holds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimedWorker {
    #[serde(flatten)]
    pub worker: Worker,
    pub task: Task,
    /// The worker's own token (`buildd_worker_…`), shown this once: for the run, not
    /// the agent. It opens only the run's own tools at `/mcp` (`report_progress`,
    /// `add_artifact`, `create_subtask`, `get_task`) and stops working when the
    /// worker ends. (Absent from servers older than `/mcp`.)
    #[schema(pattern = r"^buildd_worker_[0-9A-Za-z]+$")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_token: Option<String>,
}

/// `GET /api/workers` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct WorkerQuery {
    pub task_id: Option<String>,
    pub status: Option<WorkerStatus>,
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the page before.
    #[param(pattern = r"^p1\.-?[0-9]{1,18}\.[A-Za-z0-9_-]{0,64}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerList {
    pub workers: Vec<Worker>,
    /// Send as `cursor=` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The `result` buildd's agent reports for a completed run (a worker's `result` is
/// any JSON; other agents may report other shapes).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// The runner's closing words.
    pub text: String,
    pub branch: String,
    pub commit_sha: Option<String>,
    pub pr_url: Option<String>,
    /// What a planning run proposes (`mode: plan` tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

/// `POST /api/workers/:id/messages`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessagesBody {
    /// Any JSON values, 1–1000 of them.
    #[schema(min_items = 1, max_items = 1000)]
    pub messages: Vec<Value>,
    /// The sender's number for the first message of this batch, when it numbers its
    /// messages 1, 2, … per worker: messages under numbers the worker already has
    /// are skipped, so a batch sent again is stored once. Without it, every message
    /// is stored.
    #[schema(minimum = 1)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Appended {
    /// How many messages were stored (a repeated batch stores none).
    pub appended: usize,
    /// The number of the worker's last message.
    pub last_seq: i64,
}

/// `GET /api/workers/:id/messages` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// Only messages numbered above this (default 0: from the start); `cursor` wins.
    #[serde(default)]
    pub after: i64,
    /// 1–1000, default 1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the page before.
    #[param(pattern = r"^p1\.-?[0-9]{1,18}\.[A-Za-z0-9_-]{0,64}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageList {
    pub messages: Vec<Message>,
    /// Send as `cursor=` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /api/workers/:id/attachments` query.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AttachQuery {
    /// The file's name: no directories, no control characters, not only dots.
    #[param(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^/\\\x00-\x1f\x7f-\x9f]*[^/\\\x00-\x1f\x7f-\x9f.\s][^/\\\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// The message it belongs to.
    pub message_seq: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttachmentList {
    pub attachments: Vec<Attachment>,
}

// ---- events and operations ----

/// `GET /api/events` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this workspace's events.
    pub workspace_id: Option<String>,
    /// Resume after this event id (the `Last-Event-ID` header wins); 0 or below
    /// replays all.
    pub last_event_id: Option<i64>,
    /// The id of the agent following the stream (`PUT /api/agents/:id`): while the
    /// stream is open, the agent stays in `GET /api/agents`.
    pub agent_id: Option<String>,
    /// With `agentId`: the stream takes offers. The agent is queued among those
    /// waiting for work, and a task it may take is offered to it alone, as a
    /// `task.offered` event (no `id:`; `{"task":{…}}`, or `{}` for "look for work"),
    /// instead of every idle agent claiming on every `task.created`. It answers with a
    /// claim naming `agentId` and the `offer`; an offer unanswered for 3 s goes to the
    /// next agent. Such a stream carries only what the agent's own runs need: events
    /// of its account's tasks and workers, people's replies and instructions, and
    /// `stream.reset`.
    pub offers: Option<bool>,
    /// With `offers`: the runners the agent has, comma-separated (as a claim's
    /// `runners`), so it is offered only tasks it can run.
    pub runners: Option<String>,
}

/// `{"status": …}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub status: String,
}

// ---- agents ----

/// `PUT /api/agents/:id`: an agent's account of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub hostname: String,
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub version: String,
    /// The runners it can run tasks with (each 1 to 64 characters, not blank).
    #[schema(max_items = 16)]
    #[serde(default)]
    pub runners: Vec<String>,
    pub state: AgentState,
    /// The ids of the tasks it is running.
    #[schema(max_items = 50)]
    #[serde(default)]
    pub running: Vec<String>,
}

/// `GET /api/agents`: the connected agents the caller may see, by account and host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<Agent>,
}

// ---- GitHub ----

/// `POST /api/github/webhook`'s answer: what buildd made of the delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GithubDeliveryAnswer {
    /// `X-GitHub-Delivery`.
    pub delivery: String,
    /// `X-GitHub-Event`.
    pub event: String,
    pub outcome: GithubOutcome,
    /// What was done in each workspace whose `repoUrl` names the repository.
    pub reactions: Vec<GithubReaction>,
}
