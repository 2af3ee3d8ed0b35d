//! The resources, exactly as the API shows them (camelCase JSON).
//!
//! They derive [`ToSchema`], so `GET /api/openapi.json` describes the very types the
//! handlers serialise. Timestamps are written `DateTime<Utc>` (the same type as
//! [`super::time::Timestamp`]) because the schema derive knows that name.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A closed set of lowercase names: serialised as the name, stored as the name, parsed
/// from the name with an error that lists the accepted ones.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        /// One of the names, as the API documents it.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        /// One of the names, as MCP tools' input schemas state it.
        impl schemars::JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "enum": [$($text),+] })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?} (expected one of: {})",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(
    /// Who runs an account's agents: a person's machine, an always-on service, or CI.
    AccountType { User = "user", Service = "service", Action = "action" }
);

string_enum!(
    /// How the account's agents pay for Claude: a seat (OAuth) or per token (API key).
    AuthType { Oauth = "oauth", Api = "api" }
);

string_enum!(
    /// Which kind of account may run a task.
    RunnerPreference { Any = "any", User = "user", Service = "service", Action = "action" }
);

string_enum!(
    /// What a run of the task does: the work itself, or a plan of it for a person to
    /// approve ([`super::plan`]).
    TaskMode { Run = "run", Plan = "plan" }
);

string_enum!(
    /// `blocked`: waiting for its dependencies; `planned`: a plan waiting for approval.
    TaskStatus {
        Blocked = "blocked",
        Pending = "pending",
        Assigned = "assigned",
        Running = "running",
        WaitingInput = "waiting_input",
        Planned = "planned",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

string_enum!(
    WorkerStatus {
        Idle = "idle",
        Starting = "starting",
        Running = "running",
        WaitingInput = "waiting_input",
        Completed = "completed",
        Error = "error",
        Paused = "paused",
    }
);

string_enum!(
    /// What a worker produced, or (`merged`, the pull request's URL) what became of it.
    ArtifactKind {
        Branch = "branch",
        Commit = "commit",
        Pr = "pr",
        File = "file",
        Link = "link",
        Merged = "merged",
    }
);

string_enum!(
    /// `acted`: read and acted on (see the reactions); `ignored`: an event or action
    /// buildd does nothing about; `duplicate`: this delivery id was acted on before;
    /// `unknown_repository`: no workspace's `repoUrl` names the repository.
    GithubOutcome {
        Acted = "acted",
        Ignored = "ignored",
        Duplicate = "duplicate",
        UnknownRepository = "unknown_repository",
    }
);

string_enum!(
    /// What buildd did about a GitHub delivery in one workspace.
    GithubAction {
        Created = "created",
        Cancelled = "cancelled",
        Retried = "retried",
        FollowedUp = "followed_up",
        Replied = "replied",
        Instructed = "instructed",
        FixCreated = "fix_created",
        FixExtended = "fix_extended",
        GaveUp = "gave_up",
        Merged = "merged",
        Nothing = "nothing",
    }
);

string_enum!(
    /// A task's status a webhook can follow: the task was queued, or reached it.
    NotifyEvent {
        Created = "task.created",
        Running = "task.running",
        WaitingInput = "task.waiting_input",
        Planned = "task.planned",
        Completed = "task.completed",
        Failed = "task.failed",
        Cancelled = "task.cancelled",
    }
);

string_enum!(
    /// Where a webhook delivery stands: waiting to go (again), taken, or given up.
    DeliveryState { Pending = "pending", Delivered = "delivered", Failed = "failed" }
);

impl TaskStatus {
    /// Completed, failed and cancelled tasks never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl WorkerStatus {
    /// Completed and error workers never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Error)
    }

    /// Statuses that hold one of the account's `maxConcurrentWorkers` slots: every
    /// worker that still owns its task, paused ones included, because `start` resumes
    /// them without a new claim.
    pub const ACTIVE: &'static [WorkerStatus] = &[
        Self::Idle,
        Self::Starting,
        Self::Running,
        Self::WaitingInput,
        Self::Paused,
    ];

    /// Statuses whose lease the sweeper watches. A paused worker is parked by a person
    /// and may have no agent behind it, so it is not expected to heartbeat.
    pub const LEASED: &'static [WorkerStatus] = &[
        Self::Idle,
        Self::Starting,
        Self::Running,
        Self::WaitingInput,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub id: String,
    #[serde(rename = "type")]
    pub account_type: AccountType,
    pub name: String,
    pub auth_type: AuthType,
    pub max_concurrent_workers: i64,
    pub max_concurrent_sessions: Option<i64>,
    pub max_cost_per_day: Option<f64>,
    pub github_repo: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub repo_url: Option<String>,
    pub default_branch: String,
    /// The GitHub label that makes an issue of `repoUrl` a task.
    pub github_label: String,
    /// Fix tasks one task's failing CI may make before buildd gives up on it.
    pub max_ci_retries: i32,
    pub created_at: DateTime<Utc>,
}

/// What an account may do in a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    pub account_id: String,
    pub workspace_id: String,
    pub can_claim: bool,
    pub can_create: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: String,
    pub workspace_id: String,
    pub title: String,
    pub description: String,
    pub runner_preference: RunnerPreference,
    pub priority: i32,
    pub status: TaskStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    pub max_cost_usd: Option<f64>,
    pub claimed_by: Option<String>,
    pub worker_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub result: Option<Value>,
    /// Where the task came from; `None` for a task made by hand.
    pub source_id: Option<String>,
    pub mode: TaskMode,
    /// The tasks (of the same workspace) that must complete before this one runs.
    pub depends_on: Vec<String>,
    /// The branch the run starts from; the checkout's current commit when `None`.
    pub base_branch: Option<String>,
    /// The branch the run commits to and pushes; `buildd/<id>` when `None`. A CI fix
    /// or a review's follow-up carries on the branch of its pull request.
    pub branch: Option<String>,
    /// The plan this task is a step of, or the task this one follows up.
    pub parent_id: Option<String>,
    /// The runner session to carry on (a follow-up's parent's, a revised plan's own).
    pub resume_session_id: Option<String>,
    /// Only this account may claim the task until `preferredUntil`: a follow-up goes
    /// back to the machine that holds its parent's session first.
    pub preferred_account_id: Option<String>,
    pub preferred_until: Option<DateTime<Utc>>,
    /// Why the task failed without a run of its own (a dependency that failed).
    pub error: Option<String>,
    /// What a person asked to change in the plan, for the next planning run.
    pub feedback: Option<String>,
    /// The latest status line its current run reported (`report_progress`).
    pub progress: Option<String>,
    /// What runs it (`claude`, `codex`, `gemini`, or a name an agent declares for a
    /// command); `None`: any runner the claiming agent has.
    pub runner: Option<String>,
    /// The model the runner uses; `None`: the agent's default.
    pub model: Option<String>,
    /// The runner the next attempt uses when one fails because its runner's quota,
    /// authentication or account budget ran out; `runner` then names it.
    pub fallback_runner: Option<String>,
}

/// What each task of a schedule or a trigger is made of: the fields of
/// `POST /api/tasks` that describe the work. A trigger's title and description may
/// hold `{{payload.path}}` placeholders, filled from the body it is fired with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskTemplate {
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_preference: Option<RunnerPreference>,
    #[serde(default)]
    pub priority: i32,
    /// Default 3.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i32>,
    #[schema(minimum = 0)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 200,
        pattern = r"^[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*(/[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*)*$"
    )]
    pub base_branch: Option<String>,
    /// Default `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TaskMode>,
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

/// A task made on a cron cadence ([`super::schedule`]): each due run makes one task
/// from `task`, unless the previous run's task has not ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    pub id: String,
    pub workspace_id: String,
    /// 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first.
    pub cron: String,
    /// The IANA time zone the cron is read in.
    pub timezone: String,
    pub task: TaskTemplate,
    pub paused: bool,
    /// Why the schedule paused itself; `null` when a person paused it.
    pub paused_reason: Option<String>,
    /// Failed tasks in a row that pause the schedule.
    pub max_failures: i32,
    /// How many of its tasks have failed in a row so far.
    pub consecutive_failures: i32,
    /// `null` while paused.
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    /// The task of the last run that made one.
    pub last_task_id: Option<String>,
    /// Runs that made a task.
    pub runs: i64,
    /// Runs skipped because the previous run's task had not ended.
    pub skipped: i64,
    /// The account id that made it, or `admin`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// Where notifications go: an URL told of the task events it follows (signed with its
/// secret, when it has one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: String,
    /// Only this workspace's tasks; `null`: every workspace's.
    pub workspace_id: Option<String>,
    pub url: String,
    pub events: Vec<NotifyEvent>,
    /// Whether deliveries are signed (`X-Buildd-Signature-256`); the secret itself is
    /// never shown again.
    pub has_secret: bool,
    pub created_at: DateTime<Utc>,
}

/// One notification to one webhook, stored before it is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: String,
    pub webhook_id: String,
    pub event: NotifyEvent,
    pub task_id: String,
    pub state: DeliveryState,
    /// Tries so far.
    pub attempts: i32,
    /// The HTTP status of the last try, if it got one.
    pub last_status: Option<i32>,
    /// Why the last try failed.
    pub last_error: Option<String>,
    /// When it is tried next, while `pending`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

string_enum!(
    /// What a connected agent is doing: running tasks, waiting for one, or not
    /// claiming because it is outside its `--hours` or its person is at the machine
    /// (`--when-idle`).
    AgentState {
        Working = "working",
        Waiting = "waiting",
        OutsideHours = "outside_hours",
        PersonActive = "person_active"
    }
);

/// A `buildd agent` connected to the cluster, as it last reported itself
/// ([`super::agents`]). Kept while its event stream is open, forgotten a lease after
/// it goes away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// Chosen by the agent and kept in its state directory, so a restarted agent
    /// stays the same one.
    pub id: String,
    pub account_id: String,
    pub hostname: String,
    /// The buildd version the agent runs.
    pub version: String,
    /// The runners it can run tasks with (`claude`, `command`).
    pub runners: Vec<String>,
    pub state: AgentState,
    /// The tasks it is running now.
    pub running: Vec<String>,
    /// When it connected (its first report since it was last forgotten).
    pub connected_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// A way for another system to make a task: `POST /api/triggers/:id/fire` with the
/// trigger's own token, which can do nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub task: TaskTemplate,
    /// Tasks it has made.
    pub fired: i64,
    pub last_fired_at: Option<DateTime<Utc>>,
    /// The account id that made it, or `admin`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// What buildd did about a GitHub delivery in one workspace whose `repoUrl` names the
/// delivery's repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GithubReaction {
    pub workspace_id: String,
    pub action: GithubAction,
    /// The task made, changed or found.
    pub task_id: Option<String>,
    /// Why, in words: what was made, or why nothing was.
    pub detail: String,
}

/// Another task as a task's page names it: a dependency or a child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRef {
    pub id: String,
    pub title: String,
    pub status: TaskStatus,
}

/// Where tasks come from: a GitHub issue, a pull request, an alert, a schedule…
/// Tasks created for the same `(type, externalId)` in a workspace share one source,
/// so everything done about, say, one issue can be found together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub id: String,
    pub workspace_id: String,
    #[serde(rename = "type")]
    pub source_type: String,
    pub external_id: Option<String>,
    pub url: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One attempt of one task by one account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Worker {
    pub id: String,
    pub task_id: String,
    pub workspace_id: String,
    pub account_id: String,
    pub status: WorkerStatus,
    pub cost_usd: f64,
    pub turns: i64,
    pub session_id: Option<String>,
    pub branch: Option<String>,
    pub commit_sha: Option<String>,
    pub pr_url: Option<String>,
    pub question: Option<String>,
    pub error: Option<String>,
    /// The latest status line the run reported (`report_progress`).
    pub progress: Option<String>,
    /// The runner the attempt runs with: the task's at the claim, or the one the
    /// agent picked and reported for a task that named none.
    pub runner: Option<String>,
    /// The model it runs, as the task or the agent's runner said.
    pub model: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// A person's answer to `question`, held until the agent's next heartbeat takes it.
    #[serde(skip)]
    pub pending_reply: Option<String>,
    /// Instructions sent to the running worker, held until its next heartbeat.
    #[serde(skip)]
    pub pending_instructions: Vec<String>,
}

/// Something a worker produced, kept per task across all its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub kind: ArtifactKind,
    /// The branch name, commit SHA, pull request URL, file path, or a link's
    /// `http(s)` URL.
    #[schema(
        min_length = 1,
        max_length = 2048,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub value: String,
}

/// An artifact as stored: which worker made it, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedArtifact {
    pub worker_id: String,
    #[serde(flatten)]
    pub artifact: Artifact,
    pub created_at: DateTime<Utc>,
}

/// A note on a task, from a person or an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    pub id: i64,
    pub task_id: String,
    /// The account id of the author, or `admin`.
    pub author: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// A file a worker's run produced (a screenshot, a log), stored with the worker. The
/// bytes are fetched separately from this description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub id: String,
    pub worker_id: String,
    pub task_id: String,
    /// The message it belongs to, when the run attached it to one.
    pub message_seq: Option<i64>,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    pub created_at: DateTime<Utc>,
}

/// One entry of a worker's runner stream, numbered from 1 per worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub seq: i64,
    pub message: Value,
    pub created_at: DateTime<Utc>,
}

impl Task {
    /// A new task, pending, with the defaults the API promises: runner `any`,
    /// priority 0, [`super::validate::DEFAULT_MAX_ATTEMPTS`] attempts, no cost cap.
    pub fn new(workspace_id: String, title: &str, now: DateTime<Utc>) -> Task {
        Task {
            id: super::ids::new_id(super::ids::IdKind::Task),
            workspace_id,
            title: title.trim().to_owned(),
            description: String::new(),
            runner_preference: RunnerPreference::Any,
            priority: 0,
            status: TaskStatus::Pending,
            attempts: 0,
            max_attempts: super::validate::DEFAULT_MAX_ATTEMPTS,
            max_cost_usd: None,
            claimed_by: None,
            worker_id: None,
            created_at: now,
            claimed_at: None,
            completed_at: None,
            result: None,
            source_id: None,
            mode: TaskMode::Run,
            depends_on: Vec::new(),
            base_branch: None,
            branch: None,
            parent_id: None,
            resume_session_id: None,
            preferred_account_id: None,
            preferred_until: None,
            error: None,
            feedback: None,
            progress: None,
            runner: None,
            model: None,
            fallback_runner: None,
        }
    }
}

impl Workspace {
    /// A new workspace with the defaults of `POST /api/workspaces`.
    pub fn new(name: &str, repo_url: Option<String>, now: DateTime<Utc>) -> Workspace {
        Workspace {
            id: super::ids::new_id(super::ids::IdKind::Workspace),
            name: name.trim().to_owned(),
            repo_url,
            default_branch: super::validate::DEFAULT_BRANCH.to_owned(),
            github_label: super::github::DEFAULT_LABEL.to_owned(),
            max_ci_retries: super::github::DEFAULT_MAX_CI_RETRIES,
            created_at: now,
        }
    }
}

impl TaskTemplate {
    /// A new task of `workspace_id` made from the template, its fields checked as
    /// `POST /api/tasks` checks them.
    pub fn task(&self, workspace_id: String, now: DateTime<Utc>) -> Result<Task, super::RuleError> {
        use super::validate;
        validate::text("title", &self.title, validate::MAX_TITLE_LEN)?;
        validate::optional_text(
            "description",
            Some(&self.description),
            validate::MAX_DESCRIPTION_LEN,
        )?;
        validate::money("maxCostUsd", self.max_cost_usd)?;
        if let Some(branch) = &self.base_branch {
            validate::branch_name("baseBranch", branch)?;
        }
        super::runners::check_task(
            self.runner.as_deref(),
            self.model.as_deref(),
            self.fallback_runner.as_deref(),
        )?;
        Ok(Task {
            description: self.description.clone(),
            runner_preference: self.runner_preference.unwrap_or(RunnerPreference::Any),
            priority: self.priority,
            max_attempts: validate::max_attempts(self.max_attempts)?,
            max_cost_usd: self.max_cost_usd,
            mode: self.mode.unwrap_or(TaskMode::Run),
            base_branch: self.base_branch.clone(),
            runner: self.runner.clone(),
            model: self.model.clone(),
            fallback_runner: self.fallback_runner.clone(),
            ..Task::new(workspace_id, &self.title, now)
        })
    }
}

impl Account {
    /// A new account with the defaults the API promises:
    /// [`super::validate::DEFAULT_MAX_WORKERS`] workers, no session or cost limit, and
    /// the auth type its kind runs with ([`super::validate::auth_type`]).
    pub fn new(account_type: AccountType, name: &str, now: DateTime<Utc>) -> Account {
        Account {
            id: super::ids::new_id(super::ids::IdKind::Account),
            account_type,
            name: name.trim().to_owned(),
            auth_type: super::validate::default_auth_type(account_type),
            max_concurrent_workers: super::validate::DEFAULT_MAX_WORKERS,
            max_concurrent_sessions: None,
            max_cost_per_day: None,
            github_repo: None,
            created_at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_their_names() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>(), Ok(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        let err = "paused".parse::<TaskStatus>().unwrap_err();
        assert!(err.contains("pending"), "{err}");
    }
}
