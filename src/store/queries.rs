//! The store, written once: every query, row mapping and write sequence, for any
//! [`Backend`].
//!
//! The write-backs that matter most (a claim, an applied [`Outcome`], a batch of
//! messages) load rows, let [`crate::core`] decide what they become, and save the
//! result with its usage, artifacts, messages and events. They live here once, so a
//! new field or outcome is wired in one place and both databases get it.
//!
//! Locks are taken in one order everywhere: task, then worker, then (to move the
//! usage counters) the account. A claim locks its account first but never waits for
//! a task (`SKIP LOCKED`), so no two transactions wait for each other in a cycle. On
//! SQLite the locks are no-ops: a write transaction holds the file's write lock.

mod agents;
mod claims;
mod github;

use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use serde_json::Value;
use tokio::sync::watch;

use super::listing::{Conditions, Key, Order, contains_pattern};
use super::sql::{Arg, Backend, FromCell, Reader, Tx, args};
use super::{
    Appended, Applied, ClaimRequest, Claimed, Counts, IssueReport, Outgoing, Queued, Received,
    Result, Store, StoreError, TaskFilter, TaskLinks, Usage, WorkerFilter, by_status, status_list,
};
use crate::core::actions::{self, Action, Outcome, UsageChange};
use crate::core::claim::{self, Backlog};
use crate::core::diff::{Diff, NewDiff};
use crate::core::events::{Event, EventData, StoredEvent};
use crate::core::ids::{IdKind, new_id};
use crate::core::lease::Cutoffs;
use crate::core::model::{
    Account, Agent, Artifact, Attachment, Comment, Delivery, Grant, Message, RecordedArtifact,
    Schedule, Source, Task, TaskRef, TaskStatus, TaskTemplate, Trigger, Webhook, Worker,
    WorkerStatus, Workspace,
};
use crate::core::page::{Page, PageRequest, Position};
use crate::core::plan::{self, Plan};
use crate::core::runners;
use crate::core::time::{self, Timestamp};
use crate::core::workflow::{self, Dependency};
use crate::core::{keys, messages, notify, schedule, trigger};

/// Column lists, the same in both schemas, in the order the row readers read them.
const ACCOUNT_COLUMNS: &str = "id, type, name, auth_type, max_concurrent_workers, \
     max_concurrent_sessions, max_cost_per_day, github_repo, created_at";
const WORKSPACE_COLUMNS: &str =
    "id, name, repo_url, default_branch, github_label, max_ci_retries, created_at";
const TASK_COLUMNS: &str = "id, workspace_id, title, description, runner_preference, \
     priority, status, attempts, max_attempts, max_cost_usd, claimed_by, worker_id, \
     created_at, claimed_at, completed_at, result, source_id, mode, depends_on, base_branch, \
     parent_id, resume_session_id, preferred_account_id, preferred_until, error, feedback, \
     progress, branch, runner, model, fallback_runner";
const ATTACHMENT_COLUMNS: &str =
    "id, worker_id, task_id, message_seq, name, content_type, size, created_at";
const SOURCE_COLUMNS: &str = "id, workspace_id, type, external_id, url, created_at";
const WORKER_COLUMNS: &str = "id, task_id, workspace_id, account_id, status, cost_usd, \
     turns, session_id, branch, commit_sha, pr_url, question, error, pending_reply, \
     started_at, heartbeat_at, finished_at, pending_instructions, progress, runner, model";
const GRANT_COLUMNS: &str = "account_id, workspace_id, can_claim, can_create";
const COMMENT_COLUMNS: &str = "id, task_id, author, body, created_at";
const SCHEDULE_COLUMNS: &str = "id, workspace_id, cron, timezone, task, paused, paused_reason, \
     max_failures, consecutive_failures, next_run_at, last_run_at, last_task_id, runs, skipped, \
     created_by, created_at";
const TRIGGER_COLUMNS: &str =
    "id, workspace_id, name, task, fired, last_fired_at, created_by, created_at";
/// The condition of a listing of one workspace's rows (`$1`, or all when null) among
/// those granted to an account (`$2`, or all when null).
const VISIBLE_IN_WORKSPACE: &str = "(CAST($1 AS TEXT) IS NULL OR workspace_id = $1) \
     AND (CAST($2 AS TEXT) IS NULL OR workspace_id IN \
          (SELECT workspace_id FROM account_workspaces WHERE account_id = $2))";
const DIFF_COLUMNS: &str =
    "worker_id, task_id, base_sha, head_sha, files, patch, truncated, created_at";

fn account_from_row(r: &mut Reader) -> Result<Account> {
    Ok(Account {
        id: r.get()?,
        account_type: r.parse()?,
        name: r.get()?,
        auth_type: r.parse()?,
        max_concurrent_workers: r.get()?,
        max_concurrent_sessions: r.get()?,
        max_cost_per_day: r.get()?,
        github_repo: r.get()?,
        created_at: r.get()?,
    })
}

fn workspace_from_row(r: &mut Reader) -> Result<Workspace> {
    Ok(Workspace {
        id: r.get()?,
        name: r.get()?,
        repo_url: r.get()?,
        default_branch: r.get()?,
        github_label: r.get()?,
        max_ci_retries: r.get()?,
        created_at: r.get()?,
    })
}

fn task_from_row(r: &mut Reader) -> Result<Task> {
    Ok(Task {
        id: r.get()?,
        workspace_id: r.get()?,
        title: r.get()?,
        description: r.get()?,
        runner_preference: r.parse()?,
        priority: r.get()?,
        status: r.parse()?,
        attempts: r.get()?,
        max_attempts: r.get()?,
        max_cost_usd: r.get()?,
        claimed_by: r.get()?,
        worker_id: r.get()?,
        created_at: r.get()?,
        claimed_at: r.get()?,
        completed_at: r.get()?,
        result: r.json()?,
        source_id: r.get()?,
        mode: r.parse()?,
        depends_on: r.list()?,
        base_branch: r.get()?,
        parent_id: r.get()?,
        resume_session_id: r.get()?,
        preferred_account_id: r.get()?,
        preferred_until: r.get()?,
        error: r.get()?,
        feedback: r.get()?,
        progress: r.get()?,
        branch: r.get()?,
        runner: r.get()?,
        model: r.get()?,
        fallback_runner: r.get()?,
    })
}

fn task_args(t: &Task) -> Vec<Arg> {
    args![
        &t.id,
        &t.workspace_id,
        &t.title,
        &t.description,
        t.runner_preference.as_str(),
        t.priority,
        t.status.as_str(),
        t.attempts,
        t.max_attempts,
        t.max_cost_usd,
        &t.claimed_by,
        &t.worker_id,
        t.created_at,
        t.claimed_at,
        t.completed_at,
        t.result.as_ref(),
        &t.source_id,
        t.mode.as_str(),
        t.depends_on.as_slice(),
        &t.base_branch,
        &t.parent_id,
        &t.resume_session_id,
        &t.preferred_account_id,
        t.preferred_until,
        &t.error,
        &t.feedback,
        &t.progress,
        &t.branch,
        &t.runner,
        &t.model,
        &t.fallback_runner,
    ]
}

fn worker_from_row(r: &mut Reader) -> Result<Worker> {
    Ok(Worker {
        id: r.get()?,
        task_id: r.get()?,
        workspace_id: r.get()?,
        account_id: r.get()?,
        status: r.parse()?,
        cost_usd: r.get()?,
        turns: r.get()?,
        session_id: r.get()?,
        branch: r.get()?,
        commit_sha: r.get()?,
        pr_url: r.get()?,
        question: r.get()?,
        error: r.get()?,
        pending_reply: r.get()?,
        started_at: r.get()?,
        heartbeat_at: r.get()?,
        finished_at: r.get()?,
        pending_instructions: r.list()?,
        progress: r.get()?,
        runner: r.get()?,
        model: r.get()?,
    })
}

fn worker_args(w: &Worker) -> Vec<Arg> {
    args![
        &w.id,
        &w.task_id,
        &w.workspace_id,
        &w.account_id,
        w.status.as_str(),
        w.cost_usd,
        w.turns,
        &w.session_id,
        &w.branch,
        &w.commit_sha,
        &w.pr_url,
        &w.question,
        &w.error,
        &w.pending_reply,
        w.started_at,
        w.heartbeat_at,
        w.finished_at,
        w.pending_instructions.as_slice(),
        &w.progress,
        &w.runner,
        &w.model,
    ]
}

/// A task template, stored as the JSON text serde wrote.
fn template_from(text: &str) -> Result<TaskTemplate> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Backend(format!("stored task template unreadable: {e}")))
}

fn template_arg(template: &TaskTemplate) -> Arg {
    Arg::Text(Some(
        serde_json::to_string(template).unwrap_or_else(|_| "{}".into()),
    ))
}

fn schedule_from_row(r: &mut Reader) -> Result<Schedule> {
    Ok(Schedule {
        id: r.get()?,
        workspace_id: r.get()?,
        cron: r.get()?,
        timezone: r.get()?,
        task: template_from(&r.get::<String>()?)?,
        paused: r.get()?,
        paused_reason: r.get()?,
        max_failures: r.get()?,
        consecutive_failures: r.get()?,
        next_run_at: r.get()?,
        last_run_at: r.get()?,
        last_task_id: r.get()?,
        runs: r.get()?,
        skipped: r.get()?,
        created_by: r.get()?,
        created_at: r.get()?,
    })
}

fn schedule_args(s: &Schedule) -> Vec<Arg> {
    let mut values = args![&s.id, &s.workspace_id, &s.cron, &s.timezone];
    values.push(template_arg(&s.task));
    values.extend(args![
        s.paused,
        &s.paused_reason,
        s.max_failures,
        s.consecutive_failures,
        s.next_run_at,
        s.last_run_at,
        &s.last_task_id,
        s.runs,
        s.skipped,
        &s.created_by,
        s.created_at,
    ]);
    values
}

fn trigger_from_row(r: &mut Reader) -> Result<Trigger> {
    Ok(Trigger {
        id: r.get()?,
        workspace_id: r.get()?,
        name: r.get()?,
        task: template_from(&r.get::<String>()?)?,
        fired: r.get()?,
        last_fired_at: r.get()?,
        created_by: r.get()?,
        created_at: r.get()?,
    })
}

/// Writes back every field of a schedule that can change after it was created.
async fn save_schedule<T: Tx>(tx: &mut T, s: &Schedule) -> Result<()> {
    let sql = "UPDATE schedules SET paused = $2, paused_reason = $3, consecutive_failures = $4, \
         next_run_at = $5, last_run_at = $6, last_task_id = $7, runs = $8, skipped = $9 \
         WHERE id = $1";
    let values = args![
        &s.id,
        s.paused,
        &s.paused_reason,
        s.consecutive_failures,
        s.next_run_at,
        s.last_run_at,
        &s.last_task_id,
        s.runs,
        s.skipped,
    ];
    tx.execute(sql, values).await.map(drop)
}

/// The schedule `id`, locked until commit.
async fn lock_schedule<T: Tx>(tx: &mut T, id: &str) -> Result<Schedule> {
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1{}",
        T::DIALECT.for_update
    );
    tx.query_optional(&sql, args![id], schedule_from_row)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("schedule {id}")))
}

/// Where a schedule's or a trigger's tasks come from: one source per schedule or
/// trigger, so `GET /api/tasks?sourceId=` lists them.
fn source_of(source_type: &str, owner_id: &str, task: &Task) -> Source {
    Source {
        id: new_id(IdKind::Source),
        workspace_id: task.workspace_id.clone(),
        source_type: source_type.to_owned(),
        external_id: Some(owner_id.to_owned()),
        url: None,
        created_at: task.created_at,
    }
}

/// See [`Store::run_due_schedules`]. Each due schedule is locked (passed over when
/// another server holds it) and its next run moved on in the same transaction as the
/// task it makes, so a run happens once across a cluster.
async fn run_due_schedules<T: Tx>(
    tx: &mut T,
    now: Timestamp,
) -> Result<Vec<(Schedule, Option<Task>)>> {
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE NOT paused AND next_run_at <= $1 \
         ORDER BY next_run_at LIMIT 100{}",
        T::DIALECT.skip_locked
    );
    let due = tx.query(&sql, args![now], schedule_from_row).await?;
    let mut ran = Vec::with_capacity(due.len());
    for mut due_schedule in due {
        let previous = match &due_schedule.last_task_id {
            Some(id) => load_task(tx, id, false).await?.map(|t| t.status),
            None => None,
        };
        let made = match schedule::run(&mut due_schedule, previous, now) {
            Ok(Some(task)) => {
                let source = source_of("schedule", &due_schedule.id, &task);
                Some(create_task(tx, task, Some(source)).await?)
            }
            Ok(None) => None,
            // A schedule whose template no longer makes a task pauses, saying why,
            // rather than failing every run of every schedule after it.
            Err(e) => {
                due_schedule.paused = true;
                due_schedule.paused_reason = Some(format!("paused: {e}"));
                due_schedule.next_run_at = None;
                None
            }
        };
        save_schedule(tx, &due_schedule).await?;
        ran.push((due_schedule, made));
    }
    Ok(ran)
}

/// See [`Store::fire_trigger`].
async fn fire_trigger<T: Tx>(
    tx: &mut T,
    id: &str,
    token_hash: &str,
    payload: &Value,
    now: Timestamp,
) -> Result<Task> {
    let sql = format!(
        "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = $1 AND token_hash = $2{}",
        T::DIALECT.for_update
    );
    let trigger = tx
        .query_optional(&sql, args![id, token_hash], trigger_from_row)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("trigger {id}")))?;
    let task = trigger::task(&trigger.task, trigger.workspace_id.clone(), payload, now)?;
    let source = source_of("trigger", &trigger.id, &task);
    let task = create_task(tx, task, Some(source)).await?;
    let sql = "UPDATE triggers SET fired = fired + 1, last_fired_at = $2 WHERE id = $1";
    tx.execute(sql, args![id, now]).await?;
    Ok(task)
}

const WEBHOOK_COLUMNS: &str = "id, workspace_id, url, events, sealed_secret, created_at";
const DELIVERY_COLUMNS: &str = "id, webhook_id, event, task_id, state, attempts, last_status, \
     last_error, next_attempt_at, created_at, delivered_at";

fn webhook_from_row(r: &mut Reader) -> Result<Webhook> {
    let id = r.get()?;
    let workspace_id = r.get()?;
    let url = r.get()?;
    let events = r
        .list()?
        .iter()
        .map(|e| e.parse())
        .collect::<std::result::Result<_, String>>()
        .map_err(StoreError::Backend)?;
    let sealed: Option<String> = r.get()?;
    Ok(Webhook {
        id,
        workspace_id,
        url,
        events,
        has_secret: sealed.is_some(),
        created_at: r.get()?,
    })
}

fn delivery_from_row(r: &mut Reader) -> Result<Delivery> {
    Ok(Delivery {
        id: r.get()?,
        webhook_id: r.get()?,
        event: r.parse()?,
        task_id: r.get()?,
        state: r.parse()?,
        attempts: r.get()?,
        last_status: r.get::<Option<i64>>()?.map(|s| s as i32),
        last_error: r.get()?,
        next_attempt_at: r.get()?,
        created_at: r.get()?,
        delivered_at: r.get()?,
    })
}

/// Writes back what a try changed.
async fn save_delivery<T: Tx>(tx: &mut T, d: &Delivery) -> Result<()> {
    let sql = "UPDATE webhook_deliveries SET state = $2, attempts = $3, last_status = $4, \
         last_error = $5, next_attempt_at = $6, delivered_at = $7 WHERE id = $1";
    let values = args![
        &d.id,
        d.state.as_str(),
        d.attempts,
        d.last_status.map(i64::from),
        &d.last_error,
        d.next_attempt_at,
        d.delivered_at,
    ];
    tx.execute(sql, values).await.map(drop)
}

/// See [`Store::queue_deliveries`]. The cursor's row is the cluster's one reader of
/// the events into deliveries; a server that finds it held by another passes.
/// Task events read into deliveries by one transaction, at most.
const QUEUE_BATCH: u32 = 500;

async fn queue_deliveries<T: Tx>(
    tx: &mut T,
    id_column: &str,
    report_issues: bool,
    now: Timestamp,
) -> Result<Option<Queued>> {
    let sql = format!(
        "SELECT last_event_id FROM notify_cursor WHERE id = 1{}",
        T::DIALECT.skip_locked
    );
    let Some(cursor) = tx
        .query_optional(&sql, Vec::new(), |r| r.get::<i64>())
        .await?
    else {
        return Ok(None);
    };
    let sql = format!("SELECT {WEBHOOK_COLUMNS}, from_event_id FROM webhooks");
    let webhooks = tx
        .query(&sql, Vec::new(), |r| {
            Ok((webhook_from_row(r)?, r.get::<i64>()?))
        })
        .await?;
    if webhooks.is_empty() && !report_issues {
        // Nobody to tell: the cursor passes every event there is, unread. A webhook
        // made meanwhile waits for this cursor's lock, and starts after it.
        let sql = format!(
            "UPDATE notify_cursor SET last_event_id = \
             COALESCE((SELECT MAX({id_column}) FROM events), last_event_id) WHERE id = 1"
        );
        tx.execute(&sql, Vec::new()).await?;
        return Ok(Some(Queued::default()));
    }
    let sql = format!(
        "SELECT {id_column}, name, workspace_id, data FROM events WHERE {id_column} > $1 \
         AND name IN ('task.created', 'task.updated') ORDER BY {id_column} LIMIT $2"
    );
    let events = tx
        .query(&sql, args![cursor, QUEUE_BATCH], event_from_row)
        .await?;
    let Some(last) = events.last().map(|e| e.id) else {
        return Ok(Some(Queued::default()));
    };
    let mut queued = 0;
    for event in &events {
        let following: Vec<&Webhook> = webhooks
            .iter()
            .filter(|(_, from)| event.id > *from)
            .map(|(w, _)| w)
            .collect();
        if following.is_empty() && !report_issues {
            continue;
        }
        let Some(task) = serde_json::from_str::<EventData>(&event.data)
            .ok()
            .and_then(|data| data.task)
        else {
            continue;
        };
        let Some(kind) = notify::event_of(&event.name, &task) else {
            continue;
        };
        if report_issues {
            queued += github::queue_issue_report(tx, &task, kind, now).await?;
        }
        for webhook in following {
            if !notify::follows(webhook, kind, &task.workspace_id) {
                continue;
            }
            let delivery = notify::delivery(&webhook.id, kind, &task, now);
            let body = notify::body(kind, &task, &delivery.id).to_string();
            let sql = format!(
                "INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}, dedupe_key, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (webhook_id, dedupe_key) DO NOTHING"
            );
            let d = &delivery;
            let values = args![
                &d.id,
                &d.webhook_id,
                d.event.as_str(),
                &d.task_id,
                d.state.as_str(),
                d.attempts,
                d.last_status.map(i64::from),
                &d.last_error,
                d.next_attempt_at,
                d.created_at,
                d.delivered_at,
                notify::dedupe_key(kind, &task),
                body,
            ];
            queued += tx.execute(&sql, values).await? as usize;
        }
    }
    let sql = "UPDATE notify_cursor SET last_event_id = $1 WHERE id = 1";
    tx.execute(sql, args![last]).await?;
    Ok(Some(Queued {
        deliveries: queued,
        more: events.len() == QUEUE_BATCH as usize,
    }))
}

/// See [`Store::create_webhook`]. The webhook is told of events after the newest one,
/// and after what the notification cursor has passed: the cursor's lock is taken
/// first, so a reading that saw no webhook (and so moved the cursor past everything)
/// has finished.
async fn create_webhook<T: Tx>(
    tx: &mut T,
    id_column: &str,
    w: &Webhook,
    sealed_secret: Option<&str>,
) -> Result<()> {
    let sql = format!(
        "SELECT last_event_id FROM notify_cursor WHERE id = 1{}",
        T::DIALECT.for_update
    );
    let passed: i64 = tx.scalar(&sql, Vec::new()).await?;
    let sql = format!("SELECT COALESCE(MAX({id_column}), 0) FROM events");
    let newest: i64 = tx.scalar(&sql, Vec::new()).await?;
    let events: Vec<String> = w.events.iter().map(|e| e.as_str().to_owned()).collect();
    let sql = format!(
        "INSERT INTO webhooks ({WEBHOOK_COLUMNS}, from_event_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    );
    let values = args![
        &w.id,
        &w.workspace_id,
        &w.url,
        events.as_slice(),
        sealed_secret,
        w.created_at,
        passed.max(newest),
    ];
    tx.execute(&sql, values).await.map(drop)
}

/// See [`Store::take_deliveries`].
async fn take_deliveries<T: Tx>(
    tx: &mut T,
    now: Timestamp,
    limit: u32,
    lease: chrono::Duration,
) -> Result<Vec<Outgoing>> {
    let columns = DELIVERY_COLUMNS
        .split(", ")
        .map(|c| format!("d.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {columns}, d.body, w.url, w.sealed_secret FROM webhook_deliveries d \
         JOIN webhooks w ON w.id = d.webhook_id \
         WHERE d.state = 'pending' AND d.next_attempt_at <= $1 \
         ORDER BY d.next_attempt_at LIMIT $2{}",
        T::DIALECT.skip_locked
    );
    let taken = tx
        .query(&sql, args![now, limit], |r| {
            Ok(Outgoing {
                delivery: delivery_from_row(r)?,
                body: r.get()?,
                url: r.get()?,
                sealed_secret: r.get()?,
            })
        })
        .await?;
    // Hidden from the other servers while this one tries; should it die trying, the
    // delivery comes due again when the lease is over.
    for out in &taken {
        let sql = "UPDATE webhook_deliveries SET next_attempt_at = $2 WHERE id = $1";
        tx.execute(sql, args![&out.delivery.id, now + lease])
            .await?;
    }
    Ok(taken)
}

/// See [`Store::record_attempt`].
async fn record_attempt<T: Tx>(
    tx: &mut T,
    id: &str,
    attempt: notify::Attempt,
    now: Timestamp,
) -> Result<Delivery> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1{}",
        T::DIALECT.for_update
    );
    let mut delivery = tx
        .query_optional(&sql, args![id], delivery_from_row)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("delivery {id}")))?;
    notify::after_attempt(&mut delivery, attempt, now);
    save_delivery(tx, &delivery).await?;
    Ok(delivery)
}

/// Stores a worker a claim made, with the digest of its token.
fn attachment_from_row(r: &mut Reader) -> Result<Attachment> {
    Ok(Attachment {
        id: r.get()?,
        worker_id: r.get()?,
        task_id: r.get()?,
        message_seq: r.get()?,
        name: r.get()?,
        content_type: r.get()?,
        size: r.get()?,
        created_at: r.get()?,
    })
}

fn source_from_row(r: &mut Reader) -> Result<Source> {
    Ok(Source {
        id: r.get()?,
        workspace_id: r.get()?,
        source_type: r.get()?,
        external_id: r.get()?,
        url: r.get()?,
        created_at: r.get()?,
    })
}

fn grant_from_row(r: &mut Reader) -> Result<Grant> {
    Ok(Grant {
        account_id: r.get()?,
        workspace_id: r.get()?,
        can_claim: r.get()?,
        can_create: r.get()?,
    })
}

fn comment_from_row(r: &mut Reader) -> Result<Comment> {
    Ok(Comment {
        id: r.get()?,
        task_id: r.get()?,
        author: r.get()?,
        body: r.get()?,
        created_at: r.get()?,
    })
}

fn message_from_row(r: &mut Reader) -> Result<Message> {
    Ok(Message {
        seq: r.get()?,
        message: r.json()?.unwrap_or(Value::Null),
        created_at: r.get()?,
    })
}

fn artifact_from_row(r: &mut Reader) -> Result<RecordedArtifact> {
    Ok(RecordedArtifact {
        worker_id: r.get()?,
        artifact: Artifact {
            kind: r.parse()?,
            value: r.get()?,
        },
        created_at: r.get()?,
    })
}

fn event_from_row(r: &mut Reader) -> Result<StoredEvent> {
    Ok(StoredEvent::new(
        r.get()?,
        r.get()?,
        r.get()?,
        r.get::<String>()?.into(),
    ))
}

/// The task `id`, locked until commit when `lock`.
async fn load_task<T: Tx>(tx: &mut T, id: &str, lock: bool) -> Result<Option<Task>> {
    let lock = if lock { T::DIALECT.for_update } else { "" };
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1{lock}");
    tx.query_optional(&sql, args![id], task_from_row).await
}

/// The worker `id`, locked until commit when `lock`.
async fn load_worker<T: Tx>(tx: &mut T, id: &str, lock: bool) -> Result<Option<Worker>> {
    let lock = if lock { T::DIALECT.for_update } else { "" };
    let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE id = $1{lock}");
    tx.query_optional(&sql, args![id], worker_from_row).await
}

/// Writes back every field of a worker that can change after it was created.
async fn save_worker<T: Tx>(tx: &mut T, w: &Worker) -> Result<()> {
    let sql = "UPDATE workers SET status = $2, cost_usd = $3, turns = $4, session_id = $5, \
         branch = $6, commit_sha = $7, pr_url = $8, question = $9, error = $10, \
         pending_reply = $11, heartbeat_at = $12, finished_at = $13, \
         pending_instructions = $14, progress = $15, \
         token_hash = CASE WHEN $16 THEN NULL ELSE token_hash END, runner = $17, model = $18 \
         WHERE id = $1";
    let values = args![
        &w.id,
        w.status.as_str(),
        w.cost_usd,
        w.turns,
        &w.session_id,
        &w.branch,
        &w.commit_sha,
        &w.pr_url,
        &w.question,
        &w.error,
        &w.pending_reply,
        w.heartbeat_at,
        w.finished_at,
        w.pending_instructions.as_slice(),
        &w.progress,
        // A worker's token dies with it.
        w.status.is_terminal(),
        &w.runner,
        &w.model,
    ];
    tx.execute(sql, values).await.map(drop)
}

/// Writes back every field of a task that can change after it was created.
async fn save_task<T: Tx>(tx: &mut T, t: &Task) -> Result<()> {
    let sql = "UPDATE tasks SET status = $2, attempts = $3, claimed_by = $4, worker_id = $5, \
         claimed_at = $6, completed_at = $7, result = $8, resume_session_id = $9, \
         error = $10, feedback = $11, progress = $12, runner = $13, model = $14 WHERE id = $1";
    let values = args![
        &t.id,
        t.status.as_str(),
        t.attempts,
        &t.claimed_by,
        &t.worker_id,
        t.claimed_at,
        t.completed_at,
        t.result.as_ref(),
        &t.resume_session_id,
        &t.error,
        &t.feedback,
        &t.progress,
        &t.runner,
        &t.model,
    ];
    tx.execute(sql, values).await.map(drop)
}

/// Moves an account's usage counters by `change`. This takes the account's row lock,
/// last in the lock order.
async fn record_usage<T: Tx>(tx: &mut T, account_id: &str, change: &UsageChange) -> Result<()> {
    if change.active_workers != 0 {
        let sql = "UPDATE accounts SET active_workers = active_workers + $2 WHERE id = $1";
        tx.execute(sql, args![account_id, change.active_workers])
            .await?;
    }
    if change.cost_usd != 0.0 {
        let sql = "INSERT INTO account_usage (account_id, day, cost_usd) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id, day) \
             DO UPDATE SET cost_usd = account_usage.cost_usd + excluded.cost_usd";
        tx.execute(sql, args![account_id, &change.day, change.cost_usd])
            .await?;
    }
    Ok(())
}

/// The id of the workspace's source with `src`'s type and external id, made from
/// `src` if there is none. A source without an external id is always new.
async fn upsert_source<T: Tx>(tx: &mut T, src: &Source) -> Result<String> {
    let sql = format!(
        "INSERT INTO sources ({SOURCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (workspace_id, type, external_id) DO NOTHING"
    );
    let values = args![
        &src.id,
        &src.workspace_id,
        &src.source_type,
        &src.external_id,
        &src.url,
        src.created_at,
    ];
    tx.execute(&sql, values).await?;
    match &src.external_id {
        None => Ok(src.id.clone()),
        Some(external) => {
            let sql = "SELECT id FROM sources WHERE workspace_id = $1 AND type = $2 \
                       AND external_id = $3";
            tx.scalar(sql, args![&src.workspace_id, &src.source_type, external])
                .await
        }
    }
}

async fn insert_artifacts<T: Tx>(
    tx: &mut T,
    worker: &Worker,
    artifacts: &[Artifact],
    now: Timestamp,
) -> Result<()> {
    if artifacts.is_empty() {
        return Ok(());
    }
    let rows = artifacts
        .iter()
        .map(|a| args![&worker.task_id, &worker.id, a.kind.as_str(), &a.value, now])
        .collect();
    let columns = "task_id, worker_id, kind, value, created_at";
    tx.insert_many("artifacts", columns, rows).await
}

async fn insert_events<T: Tx>(tx: &mut T, events: &[Event], now: Timestamp) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = events
        .iter()
        .map(|e| args![e.name, &e.workspace_id, e.data.to_string(), now])
        .collect();
    let columns = "name, workspace_id, data, created_at";
    tx.insert_many("events", columns, rows).await
}

/// Appends to a worker's stream, with an event per message; the caller holds the
/// worker's row lock, which keeps sequence numbers unique. Returns the last number.
async fn insert_messages<T: Tx>(
    tx: &mut T,
    worker: &Worker,
    messages: &[Value],
    now: Timestamp,
) -> Result<i64> {
    let sql = "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE worker_id = $1";
    let last: i64 = tx.scalar(sql, args![&worker.id]).await?;
    if messages.is_empty() {
        return Ok(last);
    }
    let rows = (last + 1..)
        .zip(messages)
        .map(|(seq, m)| args![&worker.id, seq, m.to_string(), now])
        .collect();
    let columns = "worker_id, seq, body, created_at";
    tx.insert_many("messages", columns, rows).await?;
    let events: Vec<Event> = messages
        .iter()
        .map(|m| Event::worker_message(worker, m))
        .collect();
    insert_events(tx, &events, now).await?;
    Ok(last + messages.len() as i64)
}

/// Stores a new task, `blocked`, `pending` or `failed` as its dependencies stand.
async fn create_task<T: Tx>(tx: &mut T, mut task: Task, source: Option<Source>) -> Result<Task> {
    if let Some(src) = &source {
        task.source_id = Some(upsert_source(tx, src).await?);
    }
    let dependencies = lock_dependencies(tx, &task).await?;
    check_parent(tx, &task).await?;
    let created_at = task.created_at;
    workflow::start(&mut task, &dependencies, created_at);
    tx.insert_many("tasks", TASK_COLUMNS, vec![task_args(&task)])
        .await?;
    if !task.depends_on.is_empty() {
        let rows = task
            .depends_on
            .iter()
            .map(|dep| args![&task.id, dep])
            .collect();
        tx.insert_many("task_dependencies", "task_id, depends_on", rows)
            .await?;
    }
    insert_events(tx, &[Event::task_created(&task)], task.created_at).await?;
    Ok(task)
}

/// The new task's parent, checked to be a task of its workspace (404 if not, which
/// reveals nothing of other workspaces, as for a dependency).
async fn check_parent<T: Tx>(tx: &mut T, task: &Task) -> Result<()> {
    let Some(parent) = &task.parent_id else {
        return Ok(());
    };
    let sql = "SELECT workspace_id FROM tasks WHERE id = $1";
    let workspace: Option<String> = tx.query_optional(sql, args![parent], |r| r.get()).await?;
    if workspace.as_deref() == Some(task.workspace_id.as_str()) {
        Ok(())
    } else {
        Err(StoreError::NotFound(format!(
            "parentId: task {parent:?} in workspace {}",
            task.workspace_id
        )))
    }
}

/// The new task's dependencies, each checked to exist in its workspace (404 if not) and locked
/// until commit: a dependency that ends meanwhile then waits for this task to be
/// stored, and so finds it among its dependents.
async fn lock_dependencies<T: Tx>(tx: &mut T, task: &Task) -> Result<Vec<Dependency>> {
    let mut ids = task.depends_on.clone();
    ids.sort();
    let sql = format!(
        "SELECT workspace_id, status FROM tasks WHERE id = $1{}",
        T::DIALECT.for_update
    );
    let mut dependencies = Vec::with_capacity(ids.len());
    for id in ids {
        let found = tx
            .query_optional(&sql, args![&id], |r| {
                Ok((r.get::<String>()?, r.parse::<TaskStatus>()?))
            })
            .await?;
        // A task of another workspace is as unknown as none: the caller may not
        // see it, and must not learn that it exists.
        match found {
            Some((workspace, status)) if workspace == task.workspace_id => {
                dependencies.push(Dependency { id, status })
            }
            _ => {
                return Err(StoreError::NotFound(format!(
                    "dependsOn: task {id:?} in workspace {}",
                    task.workspace_id
                )));
            }
        }
    }
    Ok(dependencies)
}

/// The dependencies of task `id` as they stand now.
async fn load_dependencies<T: Tx>(tx: &mut T, id: &str) -> Result<Vec<Dependency>> {
    let sql = "SELECT t.id, t.status FROM task_dependencies d JOIN tasks t ON t.id = d.depends_on \
               WHERE d.task_id = $1 ORDER BY t.id";
    tx.query(sql, args![id], |r| {
        Ok(Dependency {
            id: r.get()?,
            status: r.parse()?,
        })
    })
    .await
}

/// After task `id` ended or came back from failure: re-settles the tasks that depend
/// on it ([`workflow::settle`]), and theirs in turn when they failed or went back to
/// waiting. Each dependent is locked before its dependencies are read, so that two
/// dependencies completing at once cannot both see the other unfinished. Returns the
/// events of the tasks it changed.
async fn settle_dependents<T: Tx>(tx: &mut T, id: &str, now: Timestamp) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    let mut changed = vec![id.to_owned()];
    while let Some(id) = changed.pop() {
        let sql = "SELECT task_id FROM task_dependencies WHERE depends_on = $1 ORDER BY task_id";
        let dependents: Vec<String> = tx.query(sql, args![&id], |r| r.get()).await?;
        for dependent in dependents {
            let Some(mut task) = load_task(tx, &dependent, true).await? else {
                continue;
            };
            if !matches!(task.status, TaskStatus::Blocked | TaskStatus::Failed) {
                continue;
            }
            let dependencies = load_dependencies(tx, &task.id).await?;
            if workflow::settle(&mut task, &dependencies, now) {
                save_task(tx, &task).await?;
                events.push(Event::task_updated(&task));
                if task.status != TaskStatus::Pending {
                    changed.push(task.id.clone());
                }
            }
        }
    }
    Ok(events)
}

/// See [`Store::retry`].
async fn retry<T: Tx>(tx: &mut T, id: &str, now: Timestamp) -> Result<Task> {
    let mut task = load_task(tx, id, true)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("task {id}")))?;
    let dependencies = load_dependencies(tx, id).await?;
    workflow::retry(&mut task, &dependencies, now)?;
    save_task(tx, &task).await?;
    let mut events = vec![Event::task_updated(&task)];
    events.extend(settle_dependents(tx, id, now).await?);
    insert_events(tx, &events, now).await?;
    Ok(task)
}

/// See [`Store::approve`].
async fn approve<T: Tx>(
    tx: &mut T,
    id: &str,
    edited: Option<Plan>,
    now: Timestamp,
) -> Result<(Task, Vec<Task>)> {
    let mut task = load_task(tx, id, true)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("task {id}")))?;
    let planned = plan::approve(&mut task, edited, now)?;
    let mut children = Vec::with_capacity(planned.len());
    for child in planned {
        children.push(create_task(tx, child, None).await?);
    }
    save_task(tx, &task).await?;
    let mut events = vec![Event::task_updated(&task)];
    events.extend(settle_dependents(tx, id, now).await?);
    insert_events(tx, &events, now).await?;
    Ok((task, children))
}

async fn apply<T: Tx>(tx: &mut T, id: &str, action: Action, now: Timestamp) -> Result<Applied> {
    let (mut task, mut worker) = if action.targets_worker() {
        // A worker's task never changes, so it can be read before locking: the locks
        // are then taken task first, like everywhere else.
        let sql = "SELECT task_id FROM workers WHERE id = $1";
        let task_id: String = tx
            .query_optional(sql, args![id], |r| r.get())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("worker {id}")))?;
        let task = load_task(tx, &task_id, true)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("task {task_id}")))?;
        (task, load_worker(tx, id, true).await?)
    } else {
        let task = load_task(tx, id, true)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("task {id}")))?;
        let worker = match &task.worker_id {
            Some(w) => load_worker(tx, w, true).await?,
            None => None,
        };
        (task, worker)
    };
    let before = task.status;
    let mut outcome = actions::apply(action, &mut task, worker.as_mut(), now)?;
    if outcome.changed {
        let dependents = write_outcome(tx, &task, before, worker.as_ref(), &outcome, now).await?;
        outcome.events.extend(dependents);
    }
    Ok(Applied {
        task,
        worker,
        outcome,
    })
}

/// Saves what [`actions::apply`] made of a task (whose status was `before`) and its
/// worker, with everything the outcome produced, and re-settles the task's dependents
/// when it ended or came back; returns the events of those it changed. Dependents are
/// locked before the account, in the order every write takes its locks.
async fn write_outcome<T: Tx>(
    tx: &mut T,
    task: &Task,
    before: TaskStatus,
    worker: Option<&Worker>,
    outcome: &Outcome,
    now: Timestamp,
) -> Result<Vec<Event>> {
    save_task(tx, task).await?;
    let dependents = match workflow::moves_dependents(before, task) {
        true => settle_dependents(tx, &task.id, now).await?,
        false => Vec::new(),
    };
    if let Some(w) = worker {
        save_worker(tx, w).await?;
        record_usage(tx, &w.account_id, &outcome.usage).await?;
        insert_artifacts(tx, w, &outcome.artifacts, now).await?;
        if !outcome.messages.is_empty() {
            insert_messages(tx, w, &outcome.messages, now).await?;
        }
    }
    insert_events(tx, &outcome.events, now).await?;
    insert_events(tx, &dependents, now).await?;
    Ok(dependents)
}

async fn append_messages<T: Tx>(
    tx: &mut T,
    worker_id: &str,
    batch: &[Value],
    from: Option<i64>,
    now: Timestamp,
) -> Result<Appended> {
    let mut worker = load_worker(tx, worker_id, true)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("worker {worker_id}")))?;
    // Only numbered batches need to know, and move, how far the agent got.
    let taken: i64 = match from {
        Some(_) => {
            let sql = "SELECT messages_taken FROM workers WHERE id = $1";
            tx.scalar(sql, args![worker_id]).await?
        }
        None => 0,
    };
    let fresh = messages::fresh(taken, from, batch.len());
    let new = &batch[fresh.skip..];
    let last_seq = insert_messages(tx, &worker, new, now).await?;
    worker.heartbeat_at = now;
    save_worker(tx, &worker).await?;
    if from.is_some() {
        let sql = "UPDATE workers SET messages_taken = $2 WHERE id = $1";
        tx.execute(sql, args![worker_id, fresh.taken]).await?;
    }
    Ok(Appended {
        appended: new.len(),
        last_seq,
    })
}

/// See [`Store::purge_events`]. Works on the id subscribers see; on Postgres, events
/// the sequencer has not numbered yet are never deleted.
async fn purge_events<T: Tx>(tx: &mut T, before: Timestamp, limit: u32) -> Result<u64> {
    // The ids of GitHub's deliveries (which it redelivers for days at most) are kept
    // as long as the events.
    let sql = "DELETE FROM github_deliveries WHERE received_at < $1";
    tx.execute(sql, args![before]).await?;
    let id = T::DIALECT.event_id;
    // The scan starts past what earlier passes deleted: on Postgres their rows stay in
    // the index until a vacuum, and walking them from the start cost each pass more.
    let sql = format!(
        "SELECT MAX({id}) FROM (SELECT {id} FROM events WHERE {id} IS NOT NULL \
         AND {id} > (SELECT purged_through FROM event_retention) \
         AND created_at < $1 AND {id} < (SELECT MAX({id}) FROM events) \
         ORDER BY {id} LIMIT $2) oldest"
    );
    let through: Option<i64> = tx.scalar(&sql, args![before, limit]).await?;
    let Some(through) = through else {
        return Ok(0);
    };
    let sql = format!(
        "DELETE FROM events WHERE {id} <= $1 AND {id} > (SELECT purged_through FROM event_retention)"
    );
    let deleted = tx.execute(&sql, args![through]).await?;
    let sql = "UPDATE event_retention SET purged_through = $1 WHERE purged_through < $1";
    tx.execute(sql, args![through]).await?;
    Ok(deleted)
}

/// See [`Store::purge_worker_output`].
async fn purge_worker_output<T: Tx>(tx: &mut T, before: Timestamp, limit: u32) -> Result<u64> {
    let sql = "SELECT id FROM workers WHERE output_purged_at IS NULL AND finished_at < $1 \
               ORDER BY finished_at LIMIT $2";
    let workers: Vec<String> = tx.query(sql, args![before, limit], |r| r.get()).await?;
    let mut left = i64::from(limit);
    for id in workers {
        for sql in [
            "DELETE FROM messages WHERE worker_id = $1 AND seq IN \
             (SELECT seq FROM messages WHERE worker_id = $1 ORDER BY seq LIMIT $2)",
            "DELETE FROM attachments WHERE id IN \
             (SELECT id FROM attachments WHERE worker_id = $1 LIMIT $2)",
        ] {
            left -= tx.execute(sql, args![&id, left]).await? as i64;
            if left <= 0 {
                return Ok(u64::from(limit));
            }
        }
        let sql = "UPDATE workers SET output_purged_at = $2 WHERE id = $1";
        tx.execute(sql, args![&id, time::now()]).await?;
    }
    Ok((i64::from(limit) - left) as u64)
}

/// A [`Store`] on one database.
pub struct SqlStore<B> {
    backend: Arc<B>,
    claims: Arc<claims::ClaimGroups>,
}

impl<B: Backend> SqlStore<B> {
    pub fn new(backend: B) -> Self {
        SqlStore {
            backend: Arc::new(backend),
            claims: Arc::default(),
        }
    }

    fn event_id() -> &'static str {
        <B::Read as Tx>::DIALECT.event_id
    }

    /// The workspaces granted to `account` (`None` without one: the admin sees all).
    /// Lists read them first and name them, so that the planner sees `workspace_id =
    /// ?` (or a short list) and walks that workspace's index in order: given `IN
    /// (SELECT …)`, SQLite sorted every visible row (300 ms at a million tasks).
    async fn granted(&self, account: Option<&str>) -> Result<Option<Vec<String>>> {
        let Some(account) = account else {
            return Ok(None);
        };
        let sql = "SELECT workspace_id FROM account_workspaces WHERE account_id = $1 \
                   ORDER BY workspace_id";
        let granted = self
            .all(sql.to_owned(), args![account], |r| r.get())
            .await?;
        Ok(Some(granted))
    }

    /// Every row `sql` returns, read on a read connection.
    async fn all<T: Send + 'static>(
        &self,
        sql: String,
        values: Vec<Arg>,
        map: fn(&mut Reader) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.backend
            .read(move |c| async move { c.query(&sql, values, map).await }.boxed())
            .await
    }

    /// The first row `sql` returns, read on a read connection.
    async fn first<T: Send + 'static>(
        &self,
        sql: String,
        values: Vec<Arg>,
        map: fn(&mut Reader) -> Result<T>,
    ) -> Result<Option<T>> {
        Ok(self.all(sql, values, map).await?.into_iter().next())
    }

    /// The first column of the one row `sql` returns.
    async fn scalar<T: FromCell + Send + 'static>(
        &self,
        sql: &'static str,
        values: Vec<Arg>,
    ) -> Result<T> {
        self.backend
            .read(move |c| async move { c.scalar(sql, values).await }.boxed())
            .await
    }

    /// Runs one statement in a transaction of its own; returns the rows it changed.
    async fn execute(&self, sql: String, values: Vec<Arg>) -> Result<u64> {
        self.backend
            .write(move |tx| async move { tx.execute(&sql, values).await }.boxed())
            .await
    }
}

#[async_trait]
impl<B: Backend> Store for SqlStore<B> {
    #[tracing::instrument(level = "debug", skip_all, fields(account = %account.id))]
    async fn create_account(&self, account: &Account, key_hash: &str) -> Result<()> {
        let a = account;
        let sql = format!(
            "INSERT INTO accounts ({ACCOUNT_COLUMNS}, key_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        let values = args![
            &a.id,
            a.account_type.as_str(),
            &a.name,
            a.auth_type.as_str(),
            a.max_concurrent_workers,
            a.max_concurrent_sessions,
            a.max_cost_per_day,
            &a.github_repo,
            a.created_at,
            key_hash,
        ];
        self.execute(sql, values).await.map(drop)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn account_by_key_hash(&self, key_hash: &str) -> Result<Option<Account>> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE key_hash = $1");
        self.first(sql, args![key_hash], account_from_row).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_account(&self, id: &str) -> Result<Option<Account>> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1");
        self.first(sql, args![id], account_from_row).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn set_account_key(&self, id: &str, key_hash: &str) -> Result<bool> {
        let sql = "UPDATE accounts SET key_hash = $2 WHERE id = $1".to_owned();
        Ok(self.execute(sql, args![id, key_hash]).await? > 0)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_accounts(&self, page: &PageRequest) -> Result<Page<Account>> {
        let key = Key::TimeAndId("created_at", "id");
        let mut w = Conditions::default();
        w.after(key, Order::OldestFirst, page.after.as_ref());
        let select = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts");
        let (sql, values) = w.query(&select, key, Order::OldestFirst, page.fetch());
        let rows = self.all(sql, values, account_from_row).await?;
        Ok(paged(rows, page, |a| {
            Position::new(a.created_at.timestamp_millis(), &a.id)
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(workspace = %workspace.id))]
    async fn create_workspace(&self, workspace: &Workspace) -> Result<()> {
        let w = workspace;
        let sql = format!(
            "INSERT INTO workspaces ({WORKSPACE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        );
        let values = args![
            &w.id,
            &w.name,
            &w.repo_url,
            &w.default_branch,
            &w.github_label,
            w.max_ci_retries,
            w.created_at
        ];
        self.execute(sql, values).await.map(drop)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>> {
        let sql = format!("SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1");
        self.first(sql, args![id], workspace_from_row).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_workspaces(&self, visible_to: Option<&str>) -> Result<Vec<Workspace>> {
        let sql = format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE CAST($1 AS TEXT) IS NULL OR id IN \
             (SELECT workspace_id FROM account_workspaces WHERE account_id = $1) \
             ORDER BY created_at, id"
        );
        self.all(sql, args![visible_to], workspace_from_row).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn put_grant(&self, grant: &Grant) -> Result<()> {
        let g = grant;
        let sql = format!(
            "INSERT INTO account_workspaces ({GRANT_COLUMNS}) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id, workspace_id) \
             DO UPDATE SET can_claim = excluded.can_claim, can_create = excluded.can_create"
        );
        let values = args![&g.account_id, &g.workspace_id, g.can_claim, g.can_create];
        self.execute(sql, values).await.map(drop)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn delete_grant(&self, account_id: &str, workspace_id: &str) -> Result<bool> {
        let sql = "DELETE FROM account_workspaces WHERE account_id = $1 AND workspace_id = $2";
        Ok(self
            .execute(sql.to_owned(), args![account_id, workspace_id])
            .await?
            > 0)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_grant(&self, account_id: &str, workspace_id: &str) -> Result<Option<Grant>> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM account_workspaces \
             WHERE account_id = $1 AND workspace_id = $2"
        );
        self.first(sql, args![account_id, workspace_id], grant_from_row)
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn claimable_workspaces(&self, account_id: &str) -> Result<Vec<String>> {
        let sql = "SELECT workspace_id FROM account_workspaces WHERE account_id = $1 AND can_claim";
        self.all(sql.to_owned(), args![account_id], |r| r.get())
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task = %task.id))]
    async fn create_task(&self, task: &Task, source: Option<&Source>) -> Result<Task> {
        let (task, source) = (task.clone(), source.cloned());
        let created = self
            .backend
            .write(move |tx| create_task(tx, task, source).boxed())
            .await?;
        self.backend.events_written();
        Ok(created)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_source(&self, id: &str) -> Result<Option<Source>> {
        let sql = format!("SELECT {SOURCE_COLUMNS} FROM sources WHERE id = $1");
        self.first(sql, args![id], source_from_row).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_task(&self, id: &str) -> Result<Option<Task>> {
        let id = id.to_owned();
        self.backend
            .read(move |c| async move { load_task(c, &id, false).await }.boxed())
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Page<Task>> {
        let f = filter;
        let key = Key::TimeAndId("created_at", "id");
        let granted = self.granted(f.visible_to.as_deref()).await?;
        let mut w = task_conditions(f.workspace_id.as_deref(), granted.as_deref());
        if let Some(status) = f.status {
            w.push("status = ?", args![status.as_str()]);
        }
        if let Some(source) = &f.source_id {
            w.push("source_id = ?", args![source]);
        }
        if let Some(search) = &f.search {
            let pattern = contains_pattern(search);
            w.push(
                "(LOWER(title) LIKE ? ESCAPE '\\' OR LOWER(description) LIKE ? ESCAPE '\\')",
                args![&pattern, &pattern],
            );
        }
        w.after(key, Order::NewestFirst, f.page.after.as_ref());
        let select = format!("SELECT {TASK_COLUMNS} FROM tasks");
        let (sql, values) = w.query(&select, key, Order::NewestFirst, f.page.fetch());
        let rows = self.all(sql, values, task_from_row).await?;
        Ok(paged(rows, &f.page, |t| {
            Position::new(t.created_at.timestamp_millis(), &t.id)
        }))
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn task_counts(
        &self,
        workspace_id: Option<&str>,
        visible_to: Option<&str>,
    ) -> Result<Vec<(TaskStatus, i64)>> {
        let granted = self.granted(visible_to).await?;
        let w = task_conditions(workspace_id, granted.as_deref());
        let sql = format!(
            "SELECT status, COUNT(*) FROM tasks{} GROUP BY status",
            w.filter()
        );
        let rows = self
            .all(sql, w.into_values(), |r| Ok((r.get()?, r.get()?)))
            .await?;
        by_status(rows)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn task_links(&self, id: &str) -> Result<TaskLinks> {
        let refs = |r: &mut Reader| {
            Ok(TaskRef {
                id: r.get()?,
                title: r.get()?,
                status: r.parse()?,
            })
        };
        let sql = "SELECT t.id, t.title, t.status FROM task_dependencies d \
                   JOIN tasks t ON t.id = d.depends_on WHERE d.task_id = $1 \
                   ORDER BY t.created_at, t.id";
        let dependencies = self.all(sql.to_owned(), args![id], refs).await?;
        let sql = "SELECT id, title, status FROM tasks WHERE parent_id = $1 \
                   ORDER BY created_at, id";
        let children = self.all(sql.to_owned(), args![id], refs).await?;
        Ok(TaskLinks {
            dependencies,
            children,
        })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn retry(&self, id: &str, now: Timestamp) -> Result<Task> {
        let id = id.to_owned();
        let task = self
            .backend
            .write(move |tx| async move { retry(tx, &id, now).await }.boxed())
            .await?;
        self.backend.events_written();
        Ok(task)
    }

    #[tracing::instrument(level = "debug", skip(self, edited))]
    async fn approve(
        &self,
        id: &str,
        edited: Option<Plan>,
        now: Timestamp,
    ) -> Result<(Task, Vec<Task>)> {
        let id = id.to_owned();
        let approved = self
            .backend
            .write(move |tx| async move { approve(tx, &id, edited, now).await }.boxed())
            .await?;
        self.backend.events_written();
        Ok(approved)
    }

    #[tracing::instrument(level = "debug", skip(self, account), fields(account = %account.id))]
    async fn claim_task(
        &self,
        account: &Account,
        task_id: &str,
        now: Timestamp,
    ) -> Result<Claimed> {
        let (account_id, task_id) = (account.id.clone(), task_id.to_owned());
        let asked = std::time::Instant::now();
        let claimed = self
            .backend
            .write(move |tx| {
                async move { claims::claim_task(tx, &account_id, &task_id, now, asked).await }
                    .boxed()
            })
            .await?;
        self.backend.events_written();
        Ok(claimed)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(account = %account.id))]
    async fn claim(
        &self,
        account: &Account,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<Vec<Claimed>> {
        let asked = claims::Asked {
            request: request.clone(),
            now,
            asked: std::time::Instant::now(),
        };
        self.claims.claim(&self.backend, &account.id, asked).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(account = %account.id))]
    async fn backlog(
        &self,
        account: &Account,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<Backlog> {
        let [any, own] = claim::preferences_for(account.account_type);
        // The same workspaces and routing as the claim's pick.
        let workspaces = "workspace_id IN (SELECT workspace_id FROM account_workspaces \
                          WHERE account_id = $1 AND can_claim) \
                          AND (CAST($4 AS TEXT) IS NULL OR workspace_id = $4)";
        let routed = "runner_preference IN ($2, $3)";
        let held = "(preferred_account_id IS NULL OR preferred_account_id = $1 \
                    OR preferred_until <= $5)";
        let has_runner = format!(
            "(runner IS NULL OR {}($6, ',' || runner || ',') > 0)",
            <B::Read as Tx>::DIALECT.position
        );
        let flag = |condition: String| format!("CASE WHEN EXISTS ({condition}) THEN 1 ELSE 0 END");
        let sql = format!(
            "SELECT {granted}, {takeable}, {takeable_by_runner}, {routed}, {pending}, {waiting}",
            granted = flag(
                "SELECT 1 FROM account_workspaces WHERE account_id = $1 AND can_claim \
                 AND (CAST($4 AS TEXT) IS NULL OR workspace_id = $4)"
                    .to_owned()
            ),
            takeable = flag(format!(
                "SELECT 1 FROM tasks WHERE status = 'pending' AND {workspaces} AND {routed} \
                 AND {held} AND {has_runner}"
            )),
            takeable_by_runner = flag(format!(
                "SELECT 1 FROM tasks WHERE status = 'pending' AND {workspaces} AND {routed} \
                 AND {held}"
            )),
            routed = flag(format!(
                "SELECT 1 FROM tasks WHERE status = 'pending' AND {workspaces} AND {routed}"
            )),
            pending = flag(format!(
                "SELECT 1 FROM tasks WHERE status = 'pending' AND {workspaces}"
            )),
            waiting = flag(format!(
                "SELECT 1 FROM tasks WHERE status IN ('blocked', 'planned') AND {workspaces}"
            )),
        );
        let values = args![
            &account.id,
            any.as_str(),
            own.as_str(),
            request.workspace_id.as_deref(),
            now,
            runners::as_search_list(&request.runners),
        ];
        let found = self
            .first(sql, values, |r| {
                Ok(Backlog {
                    granted: r.get::<i64>()? == 1,
                    takeable: r.get::<i64>()? == 1,
                    takeable_by_runner: r.get::<i64>()? == 1,
                    routed: r.get::<i64>()? == 1,
                    pending: r.get::<i64>()? == 1,
                    waiting: r.get::<i64>()? == 1,
                })
            })
            .await?;
        found.ok_or_else(|| StoreError::Backend("the backlog query returned no row".into()))
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_worker(&self, id: &str) -> Result<Option<Worker>> {
        let id = id.to_owned();
        self.backend
            .read(move |c| async move { load_worker(c, &id, false).await }.boxed())
            .await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn worker_by_token_hash(&self, token_hash: &str) -> Result<Option<Worker>> {
        let sql = format!("SELECT {WORKER_COLUMNS} FROM workers WHERE token_hash = $1");
        self.first(sql, args![token_hash], worker_from_row).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Page<Worker>> {
        let f = filter;
        let key = Key::TimeAndId("started_at", "id");
        let mut w = Conditions::default();
        if let Some(task) = &f.task_id {
            w.push("task_id = ?", args![task]);
        }
        if let Some(status) = f.status {
            w.push("status = ?", args![status.as_str()]);
        }
        if let Some(granted) = self.granted(f.visible_to.as_deref()).await? {
            w.push_in("workspace_id", granted);
        }
        w.after(key, Order::NewestFirst, f.page.after.as_ref());
        let select = format!("SELECT {WORKER_COLUMNS} FROM workers");
        let (sql, values) = w.query(&select, key, Order::NewestFirst, f.page.fetch());
        let rows = self.all(sql, values, worker_from_row).await?;
        Ok(paged(rows, &f.page, |w| {
            Position::new(w.started_at.timestamp_millis(), &w.id)
        }))
    }

    #[tracing::instrument(level = "debug", skip(self, action), fields(action = action.name()))]
    async fn apply(&self, id: &str, action: Action, now: Timestamp) -> Result<Applied> {
        let id = id.to_owned();
        let applied = self
            .backend
            .write(move |tx| async move { apply(tx, &id, action, now).await }.boxed())
            .await?;
        if applied.outcome.writes_events() {
            self.backend.events_written();
        }
        Ok(applied)
    }

    #[tracing::instrument(level = "debug", skip(self, messages), fields(count = messages.len()))]
    async fn append_messages(
        &self,
        worker_id: &str,
        messages: &[Value],
        from: Option<i64>,
        now: Timestamp,
    ) -> Result<Appended> {
        let (id, batch) = (worker_id.to_owned(), messages.to_vec());
        let appended = self
            .backend
            .write(move |tx| {
                async move { append_messages(tx, &id, &batch, from, now).await }.boxed()
            })
            .await?;
        if appended.appended > 0 {
            self.backend.events_written();
        }
        Ok(appended)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_messages(&self, worker_id: &str, page: &PageRequest) -> Result<Page<Message>> {
        let key = Key::Number("seq");
        let mut w = Conditions::default();
        w.push("worker_id = ?", args![worker_id]);
        w.after(key, Order::OldestFirst, page.after.as_ref());
        let select = "SELECT seq, body, created_at FROM messages";
        let (sql, values) = w.query(select, key, Order::OldestFirst, page.fetch());
        let rows = self.all(sql, values, message_from_row).await?;
        Ok(paged(rows, page, |m| Position::new(m.seq, "")))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(worker = %diff.worker_id))]
    async fn put_diff(&self, diff: &Diff) -> Result<()> {
        let d = diff;
        let files = serde_json::to_string(&d.change.files)
            .map_err(|e| StoreError::Backend(format!("cannot write the diff's files: {e}")))?;
        let sql = format!(
            "INSERT INTO worker_diffs ({DIFF_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (worker_id) DO UPDATE SET base_sha = excluded.base_sha, \
             head_sha = excluded.head_sha, files = excluded.files, patch = excluded.patch, \
             truncated = excluded.truncated, created_at = excluded.created_at"
        );
        let values = args![
            &d.worker_id,
            &d.task_id,
            &d.change.base_sha,
            &d.change.head_sha,
            files,
            &d.change.patch,
            d.change.truncated,
            d.created_at,
        ];
        self.execute(sql, values).await.map(drop)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_diff(&self, worker_id: &str) -> Result<Option<Diff>> {
        let sql = format!(
            "SELECT w.branch, {} FROM worker_diffs d JOIN workers w ON w.id = d.worker_id \
             WHERE d.worker_id = $1",
            DIFF_COLUMNS
                .split(", ")
                .map(|c| format!("d.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.first(sql, args![worker_id], |r| {
            let branch: Option<String> = r.get()?;
            let (worker_id, task_id): (String, String) = (r.get()?, r.get()?);
            let base_sha = r.get()?;
            let head_sha = r.get()?;
            let files = serde_json::from_value(r.json()?.unwrap_or_default())
                .map_err(|e| StoreError::Backend(format!("stored diff files unreadable: {e}")))?;
            let change = NewDiff {
                base_sha,
                head_sha,
                files,
                patch: r.get()?,
                truncated: r.get()?,
            };
            Ok(Diff::new(&worker_id, &task_id, branch, change, r.get()?))
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_artifacts(
        &self,
        task_id: &str,
        page: &PageRequest,
    ) -> Result<Page<RecordedArtifact>> {
        let key = Key::Number("id");
        let mut w = Conditions::default();
        w.push("task_id = ?", args![task_id]);
        w.after(key, Order::OldestFirst, page.after.as_ref());
        let select = "SELECT id, worker_id, kind, value, created_at FROM artifacts";
        let (sql, values) = w.query(select, key, Order::OldestFirst, page.fetch());
        let rows = self
            .all(sql, values, |r| {
                Ok((r.get::<i64>()?, artifact_from_row(r)?))
            })
            .await?;
        Ok(Page::of(
            rows.into_iter()
                .map(|(id, a)| (Position::new(id, ""), a))
                .collect(),
            page,
        ))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(schedule = %schedule.id))]
    async fn create_schedule(&self, schedule: &Schedule) -> Result<()> {
        let sql = format!(
            "INSERT INTO schedules ({SCHEDULE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        self.execute(sql, schedule_args(schedule)).await.map(drop)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1");
        self.first(sql, args![id], schedule_from_row).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_schedules(
        &self,
        workspace_id: Option<&str>,
        visible_to: Option<&str>,
    ) -> Result<Vec<Schedule>> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE {VISIBLE_IN_WORKSPACE} \
             ORDER BY created_at, id"
        );
        self.all(sql, args![workspace_id, visible_to], schedule_from_row)
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn set_schedule_paused(
        &self,
        id: &str,
        paused: bool,
        now: Timestamp,
    ) -> Result<Schedule> {
        let id = id.to_owned();
        self.backend
            .write(move |tx| {
                async move {
                    let mut s = lock_schedule(tx, &id).await?;
                    if paused {
                        schedule::pause(&mut s);
                    } else {
                        schedule::resume(&mut s, now)?;
                    }
                    save_schedule(tx, &s).await?;
                    Ok(s)
                }
                .boxed()
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn delete_schedule(&self, id: &str) -> Result<bool> {
        let sql = "DELETE FROM schedules WHERE id = $1";
        Ok(self.execute(sql.to_owned(), args![id]).await? > 0)
    }

    #[tracing::instrument(level = "debug", skip(self, workspaces, delivery))]
    async fn receive_github(
        &self,
        delivery_id: &str,
        event: &str,
        workspaces: Vec<Workspace>,
        delivery: crate::core::github::Delivery,
        now: Timestamp,
    ) -> Result<Option<Received>> {
        let (id, event) = (delivery_id.to_owned(), event.to_owned());
        let received = self
            .backend
            .write(move |tx| {
                async move { github::receive(tx, &id, &event, &workspaces, &delivery, now).await }
                    .boxed()
            })
            .await?;
        if received.is_some() {
            self.backend.events_written();
        }
        Ok(received)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn github_delivery_seen(&self, id: &str) -> Result<bool> {
        let sql = "SELECT id FROM github_deliveries WHERE id = $1";
        let seen: Option<String> = self.first(sql.to_owned(), args![id], |r| r.get()).await?;
        Ok(seen.is_some())
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn next_schedule_due(&self) -> Result<Option<Timestamp>> {
        let sql = "SELECT next_run_at FROM schedules WHERE NOT paused \
                   AND next_run_at IS NOT NULL ORDER BY next_run_at LIMIT 1";
        self.first(sql.to_owned(), Vec::new(), |r| r.get()).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn run_due_schedules(&self, now: Timestamp) -> Result<Vec<(Schedule, Option<Task>)>> {
        let ran = self
            .backend
            .write(move |tx| async move { run_due_schedules(tx, now).await }.boxed())
            .await?;
        if ran.iter().any(|(_, task)| task.is_some()) {
            self.backend.events_written();
        }
        Ok(ran)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(trigger = %trigger.id))]
    async fn create_trigger(&self, trigger: &Trigger, token_hash: &str) -> Result<()> {
        let t = trigger;
        let sql = format!(
            "INSERT INTO triggers ({TRIGGER_COLUMNS}, token_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        let mut values = args![&t.id, &t.workspace_id, &t.name];
        values.push(template_arg(&t.task));
        values.extend(args![
            t.fired,
            t.last_fired_at,
            &t.created_by,
            t.created_at,
            token_hash
        ]);
        self.execute(sql, values).await.map(drop)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_trigger(&self, id: &str) -> Result<Option<Trigger>> {
        let sql = format!("SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = $1");
        self.first(sql, args![id], trigger_from_row).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn trigger_by_token_hash(&self, token_hash: &str) -> Result<Option<Trigger>> {
        let sql = format!("SELECT {TRIGGER_COLUMNS} FROM triggers WHERE token_hash = $1");
        self.first(sql, args![token_hash], trigger_from_row).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_triggers(
        &self,
        workspace_id: Option<&str>,
        visible_to: Option<&str>,
    ) -> Result<Vec<Trigger>> {
        let sql = format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE {VISIBLE_IN_WORKSPACE} \
             ORDER BY created_at, id"
        );
        self.all(sql, args![workspace_id, visible_to], trigger_from_row)
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn delete_trigger(&self, id: &str) -> Result<bool> {
        let sql = "DELETE FROM triggers WHERE id = $1";
        Ok(self.execute(sql.to_owned(), args![id]).await? > 0)
    }

    #[tracing::instrument(level = "debug", skip(self, token_hash, payload))]
    async fn fire_trigger(
        &self,
        id: &str,
        token_hash: &str,
        payload: &Value,
        now: Timestamp,
    ) -> Result<Task> {
        let (id, token_hash) = (id.to_owned(), token_hash.to_owned());
        let payload = payload.clone();
        let task = self
            .backend
            .write(move |tx| {
                async move { fire_trigger(tx, &id, &token_hash, &payload, now).await }.boxed()
            })
            .await?;
        self.backend.events_written();
        Ok(task)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook = %webhook.id))]
    async fn create_webhook(&self, webhook: &Webhook, sealed_secret: Option<&str>) -> Result<()> {
        let (webhook, sealed) = (webhook.clone(), sealed_secret.map(str::to_owned));
        let id = Self::event_id();
        self.backend
            .write(move |tx| {
                async move { create_webhook(tx, id, &webhook, sealed.as_deref()).await }.boxed()
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1");
        self.first(sql, args![id], webhook_from_row).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id");
        self.all(sql, Vec::new(), webhook_from_row).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn delete_webhook(&self, id: &str) -> Result<bool> {
        let sql = "DELETE FROM webhooks WHERE id = $1";
        Ok(self.execute(sql.to_owned(), args![id]).await? > 0)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_deliveries(&self, webhook_id: &str, limit: u32) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        self.all(sql, args![webhook_id, limit], delivery_from_row)
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn queue_deliveries(
        &self,
        report_issues: bool,
        now: Timestamp,
    ) -> Result<Option<Queued>> {
        let id = Self::event_id();
        self.backend
            .write(move |tx| {
                async move { queue_deliveries(tx, id, report_issues, now).await }.boxed()
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn take_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<Outgoing>> {
        self.backend
            .write(move |tx| async move { take_deliveries(tx, now, limit, lease).await }.boxed())
            .await
    }

    #[tracing::instrument(level = "debug", skip(self, attempt))]
    async fn record_attempt(
        &self,
        id: &str,
        attempt: notify::Attempt,
        now: Timestamp,
    ) -> Result<Delivery> {
        let id = id.to_owned();
        self.backend
            .write(move |tx| async move { record_attempt(tx, &id, attempt, now).await }.boxed())
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn next_delivery_due(&self) -> Result<Option<Timestamp>> {
        let sql = "SELECT next_attempt_at FROM webhook_deliveries WHERE state = 'pending' \
                   UNION ALL SELECT next_attempt_at FROM issue_reports \
                   WHERE next_attempt_at IS NOT NULL ORDER BY 1 LIMIT 1";
        self.first(sql.to_owned(), Vec::new(), |r| r.get()).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn take_issue_reports(
        &self,
        now: Timestamp,
        limit: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<IssueReport>> {
        self.backend
            .write(move |tx| {
                async move { github::take_issue_reports(tx, now, limit, lease).await }.boxed()
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip(self, report), fields(source = %report.source_id))]
    async fn record_issue_report(
        &self,
        report: &IssueReport,
        sent: std::result::Result<i64, String>,
        now: Timestamp,
    ) -> Result<()> {
        let report = report.clone();
        self.backend
            .write(move |tx| {
                async move { github::record_issue_report(tx, &report, sent, now).await }.boxed()
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip(self, body))]
    async fn add_comment(
        &self,
        task_id: &str,
        author: &str,
        body: &str,
        now: Timestamp,
    ) -> Result<Comment> {
        let sql = format!(
            "INSERT INTO comments (task_id, author, body, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING {COMMENT_COLUMNS}"
        );
        let values = args![task_id, author, body, now];
        self.backend
            .write(move |tx| async move { tx.query(&sql, values, comment_from_row).await }.boxed())
            .await?
            .pop()
            .ok_or_else(|| StoreError::Backend("the comment insert returned no row".into()))
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_comments(&self, task_id: &str, page: &PageRequest) -> Result<Page<Comment>> {
        let key = Key::Number("id");
        let mut w = Conditions::default();
        w.push("task_id = ?", args![task_id]);
        w.after(key, Order::OldestFirst, page.after.as_ref());
        let select = format!("SELECT {COMMENT_COLUMNS} FROM comments");
        let (sql, values) = w.query(&select, key, Order::OldestFirst, page.fetch());
        let rows = self.all(sql, values, comment_from_row).await?;
        Ok(paged(rows, page, |c| Position::new(c.id, "")))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(attachment = %attachment.id))]
    async fn add_attachment(&self, attachment: &Attachment, data: &[u8]) -> Result<()> {
        let a = attachment;
        let values = args![
            &a.id,
            &a.worker_id,
            &a.task_id,
            a.message_seq,
            &a.name,
            &a.content_type,
            a.size,
            a.created_at,
            data,
        ];
        let columns = format!("{ATTACHMENT_COLUMNS}, data");
        self.backend
            .write(move |tx| {
                async move { tx.insert_many("attachments", &columns, vec![values]).await }.boxed()
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_attachments(&self, worker_id: &str) -> Result<Vec<Attachment>> {
        let sql = format!(
            "SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE worker_id = $1 \
             ORDER BY created_at, id"
        );
        self.all(sql, args![worker_id], attachment_from_row).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get_attachment(&self, id: &str) -> Result<Option<(Attachment, Vec<u8>)>> {
        let sql = format!("SELECT {ATTACHMENT_COLUMNS}, data FROM attachments WHERE id = $1");
        self.first(sql, args![id], |r| Ok((attachment_from_row(r)?, r.get()?)))
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn purge_events(&self, before: Timestamp, limit: u32) -> Result<u64> {
        self.backend
            .write(move |tx| purge_events(tx, before, limit).boxed())
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn events_purged_through(&self) -> Result<i64> {
        self.scalar("SELECT purged_through FROM event_retention", Vec::new())
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn purge_worker_output(&self, before: Timestamp, limit: u32) -> Result<u64> {
        self.backend
            .write(move |tx| purge_worker_output(tx, before, limit).boxed())
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>> {
        let id = Self::event_id();
        let sql = format!(
            "SELECT {id}, name, workspace_id, data FROM events WHERE {id} > $1 \
             ORDER BY {id} LIMIT $2"
        );
        self.all(sql, args![after, limit], event_from_row).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn last_event_id(&self) -> Result<i64> {
        let sql = format!("SELECT COALESCE(MAX({}), 0) FROM events", Self::event_id());
        self.first(sql, Vec::new(), |r| r.get())
            .await?
            .ok_or_else(|| StoreError::Backend("MAX over events returned no row".into()))
    }

    fn event_signal(&self) -> watch::Receiver<u64> {
        self.backend.event_signal()
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn usage(&self, account_id: &str, day: &str) -> Result<Usage> {
        let sql = "SELECT active_workers, (SELECT cost_usd FROM account_usage \
                   WHERE account_id = $1 AND day = $2) FROM accounts WHERE id = $1";
        let found = self
            .first(sql.to_owned(), args![account_id, day], |r| {
                Ok(Usage {
                    active_workers: r.get()?,
                    cost_usd: r.get::<Option<f64>>()?.unwrap_or(0.0),
                })
            })
            .await?;
        found.ok_or_else(|| StoreError::NotFound(format!("account {account_id}")))
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn counts(&self) -> Result<Counts> {
        let sql = "SELECT status, COUNT(*) FROM tasks GROUP BY status";
        let rows = self
            .all(sql.to_owned(), Vec::new(), |r| Ok((r.get()?, r.get()?)))
            .await?;
        let sql = format!(
            "SELECT COUNT(*) FROM workers WHERE status IN ({})",
            status_list(WorkerStatus::ACTIVE)
        );
        let active = self.first(sql, Vec::new(), |r| r.get()).await?;
        Counts::from_rows(rows, active.unwrap_or(0))
    }

    async fn ping(&self) -> Result<()> {
        self.scalar::<i64>("SELECT 1", Vec::new()).await.map(drop)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn stale_workers(&self, cutoffs: Cutoffs) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT id FROM workers WHERE (status IN ({}) AND heartbeat_at < $1) \
             OR (status = 'paused' AND heartbeat_at < $2)",
            status_list(WorkerStatus::LEASED)
        );
        self.all(sql, args![cutoffs.leased, cutoffs.paused], |r| r.get())
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(agent = %agent.id))]
    async fn report_agent(&self, agent: &Agent, seen_after: Timestamp) -> Result<Agent> {
        let agent = agent.clone();
        self.backend
            .write(move |tx| async move { agents::report(tx, &agent, seen_after).await }.boxed())
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(agents = agents.len()))]
    async fn touch_agents(&self, agents: Vec<(String, String)>, now: Timestamp) -> Result<u64> {
        if agents.is_empty() {
            return Ok(0);
        }
        self.backend
            .write(move |tx| async move { agents::touch(tx, &agents, now).await }.boxed())
            .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_agents(
        &self,
        account_id: Option<&str>,
        seen_after: Timestamp,
    ) -> Result<Vec<Agent>> {
        self.all(
            agents::list_sql(),
            args![seen_after, account_id],
            agents::read,
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn forget_agents(&self, seen_after: Timestamp) -> Result<u64> {
        let sql = "DELETE FROM agents WHERE last_seen_at < $1";
        self.execute(sql.to_owned(), args![seen_after]).await
    }
}

/// The conditions of a task list or count: one workspace, and the workspaces the
/// caller may see (`None`: all).
fn task_conditions(workspace_id: Option<&str>, granted: Option<&[String]>) -> Conditions {
    let mut w = Conditions::default();
    if let Some(workspace) = workspace_id {
        w.push("workspace_id = ?", args![workspace]);
    }
    if let Some(granted) = granted {
        w.push_in("workspace_id", granted.to_vec());
    }
    w
}

/// The page `rows` make, each placed by `position`.
fn paged<T>(rows: Vec<T>, page: &PageRequest, position: impl Fn(&T) -> Position) -> Page<T> {
    Page::of(rows.into_iter().map(|r| (position(&r), r)).collect(), page)
}

/// Shares one store between the server's tasks.
pub fn shared<B: Backend>(backend: B) -> Arc<dyn Store> {
    Arc::new(SqlStore::new(backend))
}
