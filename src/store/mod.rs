//! Storage: one trait, two databases.
//!
//! Each method is one transaction. The store moves rows; every decision about what a
//! row should become is made by [`crate::core`]. The queries and write sequences are
//! written once (`queries.rs`) against a small interface (`sql.rs`) that SQLite
//! (`sqlite.rs`) and Postgres (`postgres.rs`) implement, so the two cannot drift. The
//! shared suite in `tests/store.rs` runs against both.

mod listing;
mod postgres;
mod queries;
mod sql;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::watch;

use crate::core::RuleError;
use crate::core::actions::{Action, Outcome};
use crate::core::claim::Backlog;
use crate::core::diff::Diff;
use crate::core::events::StoredEvent;
use crate::core::github;
use crate::core::lease::Cutoffs;
use crate::core::model::{
    Account, Agent, Attachment, Comment, Delivery, GithubReaction, Grant, Message,
    RecordedArtifact, Schedule, Source, Task, TaskRef, TaskStatus, Trigger, Webhook, Worker,
    WorkerStatus, Workspace,
};
use crate::core::page::{Page, PageRequest};
use crate::core::plan::Plan;
use crate::core::time::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The database failed or is out of reach. The message is for the log, never for
    /// the client, because it can name internals.
    #[error("database error: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which tasks `list_tasks` returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub workspace_id: Option<String>,
    pub status: Option<TaskStatus>,
    pub source_id: Option<String>,
    /// Only tasks of workspaces this account has been granted.
    pub visible_to: Option<String>,
    /// Only tasks whose title or description contains this, ignoring case.
    pub search: Option<String>,
    pub page: PageRequest,
}

/// A task's neighbours in the workflow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskLinks {
    pub dependencies: Vec<TaskRef>,
    pub children: Vec<TaskRef>,
}

/// Which workers `list_workers` returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct WorkerFilter {
    pub task_id: Option<String>,
    pub status: Option<WorkerStatus>,
    /// Only workers of workspaces this account has been granted.
    pub visible_to: Option<String>,
    pub page: PageRequest,
}

/// What a claim asks for, already checked by the caller.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub max_tasks: u32,
    pub workspace_id: Option<String>,
    /// The runners the claiming agent has: it takes tasks that name one or none.
    pub runners: Vec<String>,
}

/// What a GitHub delivery did: in each workspace, what and why; and the tasks it
/// made, for the server to announce.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub reactions: Vec<GithubReaction>,
    pub created: Vec<Task>,
}

/// A task a claim took, with the worker that carries the attempt and that worker's
/// token in plain text: the claim's answer shows it to the agent once, and the
/// database keeps only its digest.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub worker: Worker,
    pub task: Task,
    pub token: String,
}

/// What one reading of the events into deliveries did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Queued {
    pub deliveries: usize,
    /// It read a full batch: more task events may wait.
    pub more: bool,
}

/// An issue's comment taken to be sent: posted when it has no `comment_id` yet,
/// else edited.
#[derive(Debug, Clone, PartialEq)]
pub struct IssueReport {
    pub source_id: String,
    /// `owner/name`.
    pub repo: String,
    pub issue_number: i64,
    pub comment_id: Option<i64>,
    pub body: String,
}

/// A delivery taken to be sent: what to send, where, and the webhook's sealed secret.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub delivery: Delivery,
    pub body: String,
    pub url: String,
    pub sealed_secret: Option<String>,
}

/// Row counts for the metrics endpoint.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Every status, with zero for those no task is in.
    pub tasks_by_status: Vec<(TaskStatus, i64)>,
    /// Workers in an [`WorkerStatus::ACTIVE`] status.
    pub active_workers: i64,
}

impl Counts {
    /// Builds the counts from `(status, count)` rows, naming every status once.
    fn from_rows(rows: Vec<(String, i64)>, active_workers: i64) -> Result<Self> {
        Ok(Counts {
            tasks_by_status: by_status(rows)?,
            active_workers,
        })
    }
}

/// `(status, count)` rows as a count for every status, zero for those not named.
fn by_status(rows: Vec<(String, i64)>) -> Result<Vec<(TaskStatus, i64)>> {
    let mut counts: Vec<(TaskStatus, i64)> = TaskStatus::ALL.iter().map(|s| (*s, 0)).collect();
    for (status, n) in rows {
        let status: TaskStatus = parse_column(&status)?;
        if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == status) {
            entry.1 = n;
        }
    }
    Ok(counts)
}

/// An account's usage counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub active_workers: i64,
    pub cost_usd: f64,
}

/// What one `append_messages` stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Messages stored; those of a repeated batch are not counted.
    pub appended: usize,
    /// The number of the worker's last message.
    pub last_seq: i64,
}

/// The rows an action left behind, and what it produced.
#[derive(Debug, Clone)]
pub struct Applied {
    pub task: Task,
    pub worker: Option<Worker>,
    pub outcome: Outcome,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_account(&self, account: &Account, key_hash: &str) -> Result<()>;
    /// The account whose key hashes to `key_hash`.
    async fn account_by_key_hash(&self, key_hash: &str) -> Result<Option<Account>>;
    async fn get_account(&self, id: &str) -> Result<Option<Account>>;
    /// Replaces the account's key: the old one stops working with this commit.
    /// False when there is no such account.
    async fn set_account_key(&self, id: &str, key_hash: &str) -> Result<bool>;
    /// Accounts, oldest first.
    async fn list_accounts(&self, page: &PageRequest) -> Result<Page<Account>>;

    async fn create_workspace(&self, workspace: &Workspace) -> Result<()>;
    async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>>;
    /// All workspaces, or those granted to `visible_to`.
    async fn list_workspaces(&self, visible_to: Option<&str>) -> Result<Vec<Workspace>>;

    /// Creates or replaces the grant of an account on a workspace.
    async fn put_grant(&self, grant: &Grant) -> Result<()>;
    /// Whether there was a grant to remove.
    async fn delete_grant(&self, account_id: &str, workspace_id: &str) -> Result<bool>;
    async fn get_grant(&self, account_id: &str, workspace_id: &str) -> Result<Option<Grant>>;
    /// The workspaces the account may claim in (`canClaim`).
    async fn claimable_workspaces(&self, account_id: &str) -> Result<Vec<String>>;

    /// Stores a new task. With a `source`, the task is linked to the workspace's source
    /// of the same type and external id, which is created if there is none yet; the
    /// task is returned with its `source_id` set.
    async fn create_task(&self, task: &Task, source: Option<&Source>) -> Result<Task>;
    async fn get_source(&self, id: &str) -> Result<Option<Source>>;
    async fn get_task(&self, id: &str) -> Result<Option<Task>>;
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Page<Task>>;
    /// How many tasks are in each status (every status named, zero or not), of one
    /// workspace or all, and only of workspaces granted to `visible_to`.
    async fn task_counts(
        &self,
        workspace_id: Option<&str>,
        visible_to: Option<&str>,
    ) -> Result<Vec<(TaskStatus, i64)>>;
    /// The task's dependencies and children (the steps of its plan, its follow-ups),
    /// each with its status, oldest first.
    async fn task_links(&self, id: &str) -> Result<TaskLinks>;

    /// Puts a failed or cancelled task back in the queue (or to `blocked`), with its
    /// attempts counted afresh, and the dependents that failed because of it back to
    /// `blocked` ([`crate::core::workflow::retry`]).
    async fn retry(&self, id: &str, now: Timestamp) -> Result<Task>;
    /// Approves a planned task's plan (`edited`, or the one it proposed): creates the
    /// child tasks and completes the plan task, all in one transaction
    /// ([`crate::core::plan::approve`]). Returns the plan task and its children.
    async fn approve(
        &self,
        id: &str,
        edited: Option<Plan>,
        now: Timestamp,
    ) -> Result<(Task, Vec<Task>)>;

    /// Atomically picks the highest-priority, oldest pending tasks `account` may take
    /// (grants, routing, worker and daily-cost limits) and creates their workers. A task
    /// is never handed out twice, also under contention and across server processes.
    async fn claim(
        &self,
        account: &Account,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<Vec<Claimed>>;

    /// What the queue holds for `account` (in `request`'s workspace, if it names one)
    /// as of `now`: why a claim that took nothing did ([`crate::core::claim::why_empty`]).
    async fn backlog(
        &self,
        account: &Account,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<Backlog>;

    /// Claims the one task `task_id` for `account` under every rule of a claim
    /// ([`crate::core::claim::check_explicit`]).
    async fn claim_task(&self, account: &Account, task_id: &str, now: Timestamp)
    -> Result<Claimed>;

    async fn get_worker(&self, id: &str) -> Result<Option<Worker>>;
    /// The worker whose token hashes to `token_hash`, while it has not ended (a
    /// worker's token is cleared when it ends).
    async fn worker_by_token_hash(&self, token_hash: &str) -> Result<Option<Worker>>;
    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Page<Worker>>;

    /// Locks the task (and its worker), applies [`crate::core::actions::apply`] and
    /// writes back the result with its events. `id` is a worker id for actions that
    /// target a worker, a task id otherwise.
    async fn apply(&self, id: &str, action: Action, now: Timestamp) -> Result<Applied>;

    /// Appends to a worker's message stream (numbered on from its last entry) and
    /// renews its lease. With `from`, the batch is the agent's messages numbered from
    /// there, and those the worker already has are skipped
    /// ([`crate::core::messages::fresh`]).
    async fn append_messages(
        &self,
        worker_id: &str,
        messages: &[Value],
        from: Option<i64>,
        now: Timestamp,
    ) -> Result<Appended>;
    /// The worker's messages in order; a position's `at` is a message's `seq`.
    async fn list_messages(&self, worker_id: &str, page: &PageRequest) -> Result<Page<Message>>;

    /// Records what the worker's run changed, replacing what was recorded before.
    async fn put_diff(&self, diff: &Diff) -> Result<()>;
    /// What the worker's run changed, if its agent recorded it.
    async fn get_diff(&self, worker_id: &str) -> Result<Option<Diff>>;

    /// Everything the task's workers produced, oldest first.
    async fn list_artifacts(
        &self,
        task_id: &str,
        page: &PageRequest,
    ) -> Result<Page<RecordedArtifact>>;

    async fn add_comment(
        &self,
        task_id: &str,
        author: &str,
        body: &str,
        now: Timestamp,
    ) -> Result<Comment>;
    /// The task's comments, oldest first.
    async fn list_comments(&self, task_id: &str, page: &PageRequest) -> Result<Page<Comment>>;

    async fn add_attachment(&self, attachment: &Attachment, data: &[u8]) -> Result<()>;
    /// The worker's attachments (without their bytes), oldest first.
    async fn list_attachments(&self, worker_id: &str) -> Result<Vec<Attachment>>;
    /// One attachment and its bytes.
    async fn get_attachment(&self, id: &str) -> Result<Option<(Attachment, Vec<u8>)>>;

    async fn create_schedule(&self, schedule: &Schedule) -> Result<()>;
    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>>;
    /// Schedules, oldest first: of one workspace or all, and only of workspaces
    /// granted to `visible_to`.
    async fn list_schedules(
        &self,
        workspace_id: Option<&str>,
        visible_to: Option<&str>,
    ) -> Result<Vec<Schedule>>;
    /// Pauses ([`crate::core::schedule::pause`]) or resumes
    /// ([`crate::core::schedule::resume`], the next run counted from `now`) the
    /// schedule, and returns it.
    async fn set_schedule_paused(&self, id: &str, paused: bool, now: Timestamp)
    -> Result<Schedule>;
    /// Whether there was a schedule to delete. Its tasks stay.
    async fn delete_schedule(&self, id: &str) -> Result<bool>;
    /// Acts on a GitHub delivery (its id, its event) in `workspaces`, those whose
    /// repository it names, in one transaction with the id: `None` when that id was
    /// received before, and nothing is done again.
    async fn receive_github(
        &self,
        delivery_id: &str,
        event: &str,
        workspaces: Vec<Workspace>,
        delivery: github::Delivery,
        now: Timestamp,
    ) -> Result<Option<Received>>;
    /// Whether the GitHub delivery `id` was acted on already.
    async fn github_delivery_seen(&self, id: &str) -> Result<bool>;
    /// When the first schedule that is not paused is due.
    async fn next_schedule_due(&self) -> Result<Option<Timestamp>>;
    /// Runs every schedule due at `now` ([`crate::core::schedule::run`]), each once
    /// across a cluster, and returns them after their runs with the tasks they made.
    async fn run_due_schedules(&self, now: Timestamp) -> Result<Vec<(Schedule, Option<Task>)>>;

    async fn create_trigger(&self, trigger: &Trigger, token_hash: &str) -> Result<()>;
    async fn get_trigger(&self, id: &str) -> Result<Option<Trigger>>;
    /// The trigger whose token hashes to `token_hash`.
    async fn trigger_by_token_hash(&self, token_hash: &str) -> Result<Option<Trigger>>;
    /// Triggers, oldest first, as [`Store::list_schedules`] lists schedules.
    async fn list_triggers(
        &self,
        workspace_id: Option<&str>,
        visible_to: Option<&str>,
    ) -> Result<Vec<Trigger>>;
    /// Whether there was a trigger to delete. Its tasks stay.
    async fn delete_trigger(&self, id: &str) -> Result<bool>;
    /// Fires the trigger `id` whose token hashes to `token_hash` (else `NotFound`):
    /// makes its task with `payload` ([`crate::core::trigger::task`]) and counts the
    /// firing, in one transaction.
    async fn fire_trigger(
        &self,
        id: &str,
        token_hash: &str,
        payload: &Value,
        now: Timestamp,
    ) -> Result<Task>;

    /// Stores a webhook (its secret sealed, if it has one); it is told of events from
    /// the newest one on.
    async fn create_webhook(&self, webhook: &Webhook, sealed_secret: Option<&str>) -> Result<()>;
    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>>;
    async fn list_webhooks(&self) -> Result<Vec<Webhook>>;
    /// Whether there was a webhook to delete; its deliveries go with it.
    async fn delete_webhook(&self, id: &str) -> Result<bool>;
    /// The webhook's newest `limit` deliveries, newest first.
    async fn list_deliveries(&self, webhook_id: &str, limit: u32) -> Result<Vec<Delivery>>;
    /// Reads the events after the cluster's notification cursor (at most 500) into
    /// deliveries ([`crate::core::notify`]) and moves the cursor past them, in one
    /// transaction; `None` when another server of the cluster is reading them at that
    /// moment. With `report_issues`, the comments of the issues whose tasks moved on
    /// are queued too ([`crate::core::github::issue_report`]).
    async fn queue_deliveries(&self, report_issues: bool, now: Timestamp)
    -> Result<Option<Queued>>;
    /// Takes up to `limit` deliveries due at `now` to send, hiding each from the other
    /// servers for `lease`.
    async fn take_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<Outgoing>>;
    /// Records how a try of the delivery `id` went ([`crate::core::notify::after_attempt`]).
    async fn record_attempt(
        &self,
        id: &str,
        attempt: crate::core::notify::Attempt,
        now: Timestamp,
    ) -> Result<Delivery>;
    /// When the first pending delivery (or issue comment) is due.
    async fn next_delivery_due(&self) -> Result<Option<Timestamp>>;
    /// Takes up to `limit` issue comments due at `now` to send, hiding each from the
    /// other servers for `lease`.
    async fn take_issue_reports(
        &self,
        now: Timestamp,
        limit: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<IssueReport>>;
    /// Records how sending `report` went: the comment's id, or why it failed.
    async fn record_issue_report(
        &self,
        report: &IssueReport,
        sent: std::result::Result<i64, String>,
        now: Timestamp,
    ) -> Result<()>;

    /// Retention: deletes up to `limit` events older than `before`, oldest first, but
    /// never the newest event (ids go on from it), and records the newest id deleted.
    /// Returns how many were deleted.
    async fn purge_events(&self, before: Timestamp, limit: u32) -> Result<u64>;
    /// The newest event id retention has deleted (0: none yet).
    async fn events_purged_through(&self) -> Result<i64>;
    /// Retention: deletes up to `limit` messages and attachments of workers that
    /// finished before `before`, and marks each worker whose output is all gone.
    /// Returns how many rows were deleted.
    async fn purge_worker_output(&self, before: Timestamp, limit: u32) -> Result<u64>;

    /// Up to `limit` events with ids above `after`, in id order.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>>;
    /// The id of the newest event (0 when there is none).
    async fn last_event_id(&self) -> Result<i64>;
    /// Changes whenever events may have been written: by this process (SQLite), or by
    /// any server of the cluster (Postgres, through `LISTEN`). The value means nothing.
    fn event_signal(&self) -> watch::Receiver<u64>;

    /// The account's usage counters, as claims read them: workers holding a slot, and
    /// the cost of its workers started on `day` (UTC, `YYYY-MM-DD`).
    async fn usage(&self, account_id: &str, day: &str) -> Result<Usage>;

    /// How many tasks are in each status and how many workers hold a slot, for
    /// `/metrics`: the whole cluster's figures, whichever server is asked.
    async fn counts(&self) -> Result<Counts>;
    /// Answers when the database does; for `/readyz`.
    async fn ping(&self) -> Result<()>;

    /// Ids of leased workers whose last heartbeat is older than `cutoffs.leased`, and
    /// of paused ones older than `cutoffs.paused`. The sweeper expires each with
    /// [`Action::Expire`], which re-checks under lock, so two servers sweeping at once
    /// act on a worker only once.
    async fn stale_workers(&self, cutoffs: Cutoffs) -> Result<Vec<String>>;

    /// Records an agent's report of itself, seen at `agent.last_seen_at`. An agent
    /// that was gone (not seen since `seen_after`) or new starts a new connection; an
    /// id that an agent of another account still holds is refused.
    async fn report_agent(&self, agent: &Agent, seen_after: Timestamp) -> Result<Agent>;
    /// Marks the agents `(id, account)` seen at `now`, in one transaction: those whose
    /// event streams a server holds. Returns how many rows it found.
    async fn touch_agents(&self, agents: Vec<(String, String)>, now: Timestamp) -> Result<u64>;
    /// The agents seen since `seen_after`, all or one account's, by account and host.
    async fn list_agents(
        &self,
        account_id: Option<&str>,
        seen_after: Timestamp,
    ) -> Result<Vec<Agent>>;
    /// Deletes the agents not seen since `seen_after`; returns how many.
    async fn forget_agents(&self, seen_after: Timestamp) -> Result<u64>;
}

/// Opens the database `url` names (`sqlite:PATH` or `postgres://…`) and brings its
/// schema up to date.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(queries::shared(postgres::Postgres::connect(url).await?))
    } else if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        Ok(queries::shared(sqlite::Sqlite::open(path.as_ref()).await?))
    } else {
        Err(StoreError::Backend(format!(
            "unsupported database URL {url:?}: use sqlite:PATH or postgres://…"
        )))
    }
}

/// Parses a status or enum column, turning a value no version of buildd writes into an
/// error instead of a panic.
fn parse_column<T: std::str::FromStr<Err = String>>(text: &str) -> Result<T> {
    text.parse().map_err(StoreError::Backend)
}

/// The SQL list `'a', 'b', …` of statuses, for `IN (…)`: built from the core's
/// constants so the database never holds a second copy of the rule.
fn status_list(statuses: &[WorkerStatus]) -> String {
    statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}
