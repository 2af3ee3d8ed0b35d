//! Workers: claimed by agents, reported on by their own account, steered by people.

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::{
    Appended, AttachQuery, AttachmentList, ClaimAnswer, ClaimBody, ClaimEntry, ClaimedWorker,
    DiffFormat, DiffQuery, EmptyClaim, MessageBody, MessageList, MessagesBody, MessagesQuery,
    NewWorker, Reviewed, WorkerList, WorkerQuery,
};
use crate::core::actions::{Action, HeartbeatAnswer, WorkerUpdate};
use crate::core::claim;
use crate::core::diff::{self, Diff, NewDiff, ReviewBody};
use crate::core::ids::{IdKind, new_id};
use crate::core::model::Task;
use crate::core::model::{Account, Attachment, Worker};
use crate::core::page::{MAX_LIMIT, PageRequest, Position};
use crate::core::policy::Deed;
use crate::core::validate::{self, MAX_MESSAGES_PER_BATCH};
use crate::core::version;
use crate::core::{agents, runners, time, workflow};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, Body, Params};
use crate::server::waiters;
use crate::store::{ClaimRequest, Claimed, WorkerFilter};

#[utoipa::path(post, path = "/api/workers/claim", tag = "workers", request_body = Option<ClaimBody>,
    responses((status = 200, description = "The claimed workers, each with its task; empty when nothing fits", body = ClaimAnswer), ApiError))]
pub async fn claim(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body<ClaimBody>,
) -> ApiResult<Json<ClaimAnswer>> {
    let account = caller.require_account()?.clone();
    refuse_old_agent(&headers)?;
    let (max_tasks, wait) = claim::bounds(body.max_tasks, body.wait)?;
    if let Some(ws) = &body.workspace_id {
        caller.may_in_named(&state, Deed::Claim, ws).await?;
    }
    runners::check_advertised(&body.runners)?;
    if let Some(agent_id) = &body.agent_id {
        agents::check_id(agent_id)?;
    }
    if body.offer.is_some() && body.agent_id.is_none() {
        return Err(ApiError::BadRequest(
            "offer answers an offer to an agent's stream: give agentId too".into(),
        ));
    }
    let request = ClaimRequest {
        max_tasks,
        workspace_id: body.workspace_id,
        runners: body.runners,
    };
    let claimed = if wait == 0 {
        claim_now(&state, &account, &request).await?
    } else {
        claim_waiting(&state, &account, &request, Duration::from_secs(wait)).await?
    };
    let reason = if claimed.is_empty() {
        Some(why_empty(&state, &account, &request).await?)
    } else {
        None
    };
    if let Some(agent_id) = &body.agent_id {
        let offer = body.offer.as_deref();
        let has_room = claimed.len() < max_tasks as usize;
        let stream = state
            .waiters
            .answered(agent_id, &account.id, offer, has_room);
        if let (Some(stream), Some(offer)) = (stream, offer)
            && !claimed.iter().any(|c| c.task.id == offer)
        {
            let limited = reason.is_some_and(EmptyClaim::account_limited);
            waiters::pass_on(&state, &stream, offer, limited).await?;
        }
    }
    let workers = claimed
        .into_iter()
        .map(|claimed| ClaimEntry::Readable(Box::new(ClaimedWorker::from(claimed))))
        .collect();
    // The lease tells agents how often to heartbeat: one that knows it can stay well
    // inside it whatever the server was started with.
    Ok(Json(ClaimAnswer {
        workers,
        lease_ttl_secs: state.lease_ttl.as_secs_f64(),
        reason,
    }))
}

/// Why a claim of `account` took nothing: its limits (the account was read for this
/// request), else what the queue holds for it.
async fn why_empty(
    state: &AppState,
    account: &Account,
    request: &ClaimRequest,
) -> ApiResult<EmptyClaim> {
    if let Some(limit) = limit_reached(state, account).await? {
        return Ok(limit);
    }
    let backlog = state.store.backlog(account, request, time::now()).await?;
    Ok(claim::why_empty(&backlog))
}

/// The limit of its own `account` is at, if any (the account was read for this
/// request).
async fn limit_reached(state: &AppState, account: &Account) -> ApiResult<Option<EmptyClaim>> {
    let usage = state
        .store
        .usage(&account.id, &time::utc_day(time::now()))
        .await?;
    Ok(claim::limit_reached(
        account,
        usage.active_workers,
        usage.cost_usd,
    ))
}

#[utoipa::path(post, path = "/api/workers", tag = "workers", request_body = NewWorker,
    responses((status = 201, description = "The task, claimed: its worker, as a claim answers", body = ClaimAnswer), ApiError))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body<NewWorker>,
) -> ApiResult<(StatusCode, Json<ClaimAnswer>)> {
    let account = caller.require_account()?.clone();
    refuse_old_agent(&headers)?;
    let task = state
        .store
        .get_task(&body.task_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {} not found", body.task_id)))?;
    caller
        .may_in(&state, Deed::Claim, &task.workspace_id)
        .await?;
    let started = Instant::now();
    let claimed = state
        .store
        .claim_task(&account, &body.task_id, time::now())
        .await?;
    state.metrics.claimed(started.elapsed(), 1);
    let claimed = ClaimedWorker::from(claimed);
    Ok((
        StatusCode::CREATED,
        Json(ClaimAnswer {
            workers: vec![ClaimEntry::Readable(Box::new(claimed))],
            lease_ttl_secs: state.lease_ttl.as_secs_f64(),
            reason: None,
        }),
    ))
}

#[utoipa::path(post, path = "/api/workers/{id}/instruct", tag = "workers", params(("id" = String, Path, description = "The worker's id")), request_body = MessageBody,
    responses((status = 200, description = "The worker; its agent gets the instruction at once and passes it to the run", body = Worker), ApiError))]
pub async fn instruct(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<MessageBody>,
) -> ApiResult<Json<Worker>> {
    let worker = worker_for(&state, &caller, Deed::Read, &id).await?;
    if !matches!(&caller, Caller::Account(a) if a.id == worker.account_id) {
        caller
            .may_in(&state, Deed::Steer, &worker.workspace_id)
            .await?;
    }
    let action = Action::Instruct {
        message: body.message,
    };
    let applied = state.store.apply(&id, action, time::now()).await?;
    applied
        .worker
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("worker {id} not found")))
}

/// A claimed task as its agent reads it, with the worker's token.
impl From<Claimed> for ClaimedWorker {
    fn from(claimed: Claimed) -> Self {
        ClaimedWorker {
            worker: claimed.worker,
            task: claimed.task,
            worker_token: Some(claimed.token),
        }
    }
}

/// 426 for an agent too old for this server ([`version::refuse_agent`]), before it
/// claims anything.
fn refuse_old_agent(headers: &HeaderMap) -> ApiResult<()> {
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    match version::refuse_agent(user_agent) {
        Some(reason) => Err(ApiError::UpgradeRequired(reason)),
        None => Ok(()),
    }
}

/// One claim transaction, timed for `/metrics`.
async fn claim_now(
    state: &AppState,
    account: &Account,
    request: &ClaimRequest,
) -> ApiResult<Vec<Claimed>> {
    let started = Instant::now();
    let claimed = state.store.claim(account, request, time::now()).await?;
    state.metrics.claimed(started.elapsed(), claimed.len());
    Ok(claimed)
}

/// Claims, and while nothing fits, waits until `wait` is up to be offered a task it
/// may take ([`crate::server::waiters`]): one created or requeued anywhere in the
/// cluster, or anything after a new grant.
///
/// A task offered to this claim that it does not take goes on to the next waiter,
/// unless it came while this claim was looking: then the look may have missed it,
/// and this claim looks once more first.
async fn claim_waiting(
    state: &AppState,
    account: &Account,
    request: &ClaimRequest,
    wait: Duration,
) -> ApiResult<Vec<Claimed>> {
    let deadline = tokio::time::Instant::now() + wait;
    // Enlist before looking, so a task created between the look and the wait still
    // wakes this claim.
    let enlisted = state
        .waiters
        .enlist(
            state,
            account,
            request.workspace_id.as_deref(),
            &request.runners,
        )
        .await?;
    let waiter = &enlisted.waiter;
    let mut woken_for: Option<Task> = None;
    loop {
        let claimed = claim_now(state, account, request).await?;
        let arrived = waiter.take_offer();
        let took = |task: &Task| claimed.iter().any(|c| c.task.id == task.id);
        let over = tokio::time::Instant::now() >= deadline;
        // A task passed on after a claim that took nothing goes past this account's
        // other waiters when the account's own limits were in the way.
        let passing = woken_for.is_some() || (arrived.is_some() && over);
        let limited =
            passing && claimed.is_empty() && limit_reached(state, account).await?.is_some();
        if let Some(task) = woken_for.take().filter(|t| !took(t)) {
            waiters::pass_on(state, waiter, &task.id, limited).await?;
        }
        if let Some(task) = arrived.filter(|t| !took(t)) {
            if claimed.is_empty() && !over {
                woken_for = Some(task);
                continue;
            }
            waiters::pass_on(state, waiter, &task.id, limited).await?;
        }
        if !claimed.is_empty() || over {
            return Ok(claimed);
        }
        state.waiters.requeue(waiter);
        tokio::select! {
            _ = waiter.woken() => woken_for = waiter.take_offer(),
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.shutdown.cancelled() => return Ok(Vec::new()),
        }
    }
}

#[utoipa::path(get, path = "/api/workers", tag = "workers", params(WorkerQuery),
    responses((status = 200, description = "Workers the caller may see, newest first", body = WorkerList), ApiError))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(query): Params<WorkerQuery>,
) -> ApiResult<Json<WorkerList>> {
    let filter = WorkerFilter {
        task_id: query.task_id,
        status: query.status,
        visible_to: caller.scope(),
        page: PageRequest::from_query(query.limit, query.cursor.as_deref())?,
    };
    let page = state.store.list_workers(&filter).await?;
    Ok(Json(WorkerList {
        next_cursor: page.next_cursor(),
        workers: page.items,
    }))
}

async fn find(state: &AppState, id: &str) -> ApiResult<Worker> {
    state
        .store
        .get_worker(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("worker {id} not found")))
}

/// The worker, if the caller may do `deed` to it (see [`crate::core::policy`]).
async fn worker_for(state: &AppState, caller: &Caller, deed: Deed, id: &str) -> ApiResult<Worker> {
    let worker = find(state, id).await?;
    caller.may_on(state, deed, &worker).await?;
    Ok(worker)
}

#[utoipa::path(get, path = "/api/workers/{id}", tag = "workers", params(("id" = String, Path, description = "The worker's id")),
    responses((status = 200, description = "The worker", body = Worker), ApiError))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Worker>> {
    Ok(Json(worker_for(&state, &caller, Deed::Read, &id).await?))
}

#[utoipa::path(patch, path = "/api/workers/{id}", tag = "workers", params(("id" = String, Path, description = "The worker's id")), request_body = Option<WorkerUpdate>,
    responses((status = 200, description = "The worker after the report (also a heartbeat)", body = Worker), ApiError))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(update): Body<WorkerUpdate>,
) -> ApiResult<Json<Worker>> {
    worker_for(&state, &caller, Deed::Report, &id).await?;
    let applied = state
        .store
        .apply(&id, Action::update(update), time::now())
        .await?;
    applied
        .worker
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("worker {id} not found")))
}

#[utoipa::path(post, path = "/api/workers/{id}/heartbeat", tag = "workers", params(("id" = String, Path, description = "The worker's id")),
    responses((status = 200, description = "What to do with the run (`action`), and a person's answer once", body = HeartbeatAnswer), ApiError))]
pub async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<HeartbeatAnswer>> {
    let worker = worker_for(&state, &caller, Deed::Report, &id).await?;
    let now = time::now();
    // Only accounts with a budget pay for reading their spend.
    let over_budget = match &caller {
        Caller::Account(account) if account.max_cost_per_day.is_some() => {
            let usage = state.store.usage(&account.id, &time::utc_day(now)).await?;
            claim::over_budget(account, usage.cost_usd)
        }
        _ => None,
    };
    let action = match over_budget {
        Some(reason) => {
            tracing::info!(worker = %id, account = %worker.account_id, "{reason}: stopping the run");
            Action::StopOverBudget { reason }
        }
        _ => Action::Heartbeat,
    };
    let outcome = state.store.apply(&id, action, now).await?.outcome;
    Ok(Json(HeartbeatAnswer::from_outcome(outcome)))
}

/// Pause and start: a person steering a worker, so the admin may too.
async fn steer(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: Action,
) -> ApiResult<Json<Worker>> {
    worker_for(state, caller, Deed::Steer, id).await?;
    let applied = state.store.apply(id, action, time::now()).await?;
    applied
        .worker
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("worker {id} not found")))
}

#[utoipa::path(post, path = "/api/workers/{id}/pause", tag = "workers", params(("id" = String, Path, description = "The worker's id")),
    responses((status = 200, description = "The worker, paused", body = Worker), ApiError))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Worker>> {
    steer(&state, &caller, &id, Action::Pause).await
}

#[utoipa::path(post, path = "/api/workers/{id}/start", tag = "workers", params(("id" = String, Path, description = "The worker's id")),
    responses((status = 200, description = "The worker, starting again", body = Worker), ApiError))]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Worker>> {
    steer(&state, &caller, &id, Action::Start).await
}

#[utoipa::path(post, path = "/api/workers/{id}/messages", tag = "workers", params(("id" = String, Path, description = "The worker's id")), request_body = MessagesBody,
    responses((status = 200, description = "How many were appended, and the last one's number", body = Appended), ApiError))]
pub async fn append_messages(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<MessagesBody>,
) -> ApiResult<Json<Appended>> {
    worker_for(&state, &caller, Deed::Report, &id).await?;
    let count = body.messages.len();
    if count == 0 || count > MAX_MESSAGES_PER_BATCH {
        return Err(ApiError::BadRequest(format!(
            "messages must hold between 1 and {MAX_MESSAGES_PER_BATCH} entries"
        )));
    }
    if body.from.is_some_and(|from| from < 1) {
        return Err(ApiError::BadRequest("from must be ≥ 1".into()));
    }
    let stored = state
        .store
        .append_messages(&id, &body.messages, body.from, time::now())
        .await?;
    Ok(Json(Appended {
        appended: stored.appended,
        last_seq: stored.last_seq,
    }))
}

#[utoipa::path(get, path = "/api/workers/{id}/messages", tag = "workers", params(("id" = String, Path, description = "The worker's id"), MessagesQuery),
    responses((status = 200, description = "The runner's stream after `after`, in order", body = MessageList), ApiError))]
pub async fn messages(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Params(query): Params<MessagesQuery>,
) -> ApiResult<Json<MessageList>> {
    let mut page = PageRequest::with_default(query.limit, query.cursor.as_deref(), MAX_LIMIT)?;
    if page.after.is_none() {
        page.after = Some(Position::new(query.after, ""));
    }
    worker_for(&state, &caller, Deed::Read, &id).await?;
    let page = state.store.list_messages(&id, &page).await?;
    Ok(Json(MessageList {
        next_cursor: page.next_cursor(),
        messages: page.items,
    }))
}

/// `POST /api/workers/:id/attachments?name=shot.png[&messageSeq=N]`: the body is the
/// file itself, its `Content-Type` header its type.
#[utoipa::path(post, path = "/api/workers/{id}/attachments", tag = "workers", params(("id" = String, Path, description = "The worker's id"), AttachQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file; its Content-Type header is kept as its type"),
    responses((status = 201, description = "The attachment's description", body = Attachment), ApiError))]
pub async fn attach(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Params(query): Params<AttachQuery>,
    headers: HeaderMap,
    data: Bytes,
) -> ApiResult<(StatusCode, Json<Attachment>)> {
    let worker = worker_for(&state, &caller, Deed::Report, &id).await?;
    validate::file_name(&query.name)?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => "application/octet-stream".to_owned(),
        Some(v) => v
            .to_str()
            .map_err(|_| ApiError::BadRequest("Content-Type is not readable text".into()))?
            .to_owned(),
    };
    validate::content_type(&content_type)?;
    if data.is_empty() {
        return Err(ApiError::BadRequest("the attachment is empty".into()));
    }
    let attachment = Attachment {
        id: new_id(IdKind::Attachment),
        worker_id: worker.id,
        task_id: worker.task_id,
        message_seq: query.message_seq,
        name: query.name,
        content_type,
        size: data.len() as i64,
        created_at: time::now(),
    };
    state.store.add_attachment(&attachment, &data).await?;
    Ok((StatusCode::CREATED, Json(attachment)))
}

#[utoipa::path(get, path = "/api/workers/{id}/attachments", tag = "workers", params(("id" = String, Path, description = "The worker's id")),
    responses((status = 200, description = "The worker's attachments, oldest first", body = AttachmentList), ApiError))]
pub async fn attachments(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<AttachmentList>> {
    worker_for(&state, &caller, Deed::Read, &id).await?;
    let attachments = state.store.list_attachments(&id).await?;
    Ok(Json(AttachmentList { attachments }))
}

/// `GET /api/attachments/:id`: the bytes, always as a download and never sniffed, so a
/// file a run produced cannot run as a page of this server.
#[utoipa::path(get, path = "/api/attachments/{id}", tag = "workers", params(("id" = String, Path, description = "The attachment's id")),
    responses((status = 200, description = "The bytes, as a download, with the type they were uploaded with", content_type = "application/octet-stream", body = Vec<u8>), ApiError))]
pub async fn attachment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (attachment, data) = state
        .store
        .get_attachment(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("attachment {id} not found")))?;
    worker_for(&state, &caller, Deed::Read, &attachment.worker_id).await?;
    let file_name: String = attachment
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .map(|c| if c == '"' || c == '\\' { '_' } else { c })
        .collect();
    let headers = [
        (header::CONTENT_TYPE, attachment.content_type),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}\""),
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
    ];
    Ok((headers, data).into_response())
}

/// `PUT /api/workers/:id/diff`: the agent records what its run changed. Taken also
/// after the worker ended (a cancelled or stopped run reports its change too), from
/// the account that ran it; a second recording replaces the first.
#[utoipa::path(put, path = "/api/workers/{id}/diff", tag = "workers", params(("id" = String, Path, description = "The worker's id")), request_body = NewDiff,
    responses((status = 200, description = "The diff as recorded", body = Diff), ApiError))]
pub async fn put_diff(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<NewDiff>,
) -> ApiResult<Json<Diff>> {
    let worker = worker_for(&state, &caller, Deed::Report, &id).await?;
    diff::check(&body)?;
    let recorded = Diff::new(
        &worker.id,
        &worker.task_id,
        worker.branch.clone(),
        body,
        time::now(),
    );
    state.store.put_diff(&recorded).await?;
    Ok(Json(recorded))
}

#[utoipa::path(get, path = "/api/workers/{id}/diff", tag = "workers", params(("id" = String, Path, description = "The worker's id"), DiffQuery),
    responses((status = 200, description = "What the run changed: files with their counts and the unified diff (JSON), or the diff alone (`format=patch`, text/x-diff)", body = Diff), ApiError))]
pub async fn diff(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Params(query): Params<DiffQuery>,
) -> ApiResult<Response> {
    worker_for(&state, &caller, Deed::Read, &id).await?;
    let recorded = state
        .store
        .get_diff(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("worker {id} has no recorded diff")))?;
    Ok(match query.format {
        Some(DiffFormat::Patch) => (
            [(header::CONTENT_TYPE, "text/x-diff; charset=utf-8")],
            recorded.change.patch,
        )
            .into_response(),
        _ => Json(recorded).into_response(),
    })
}

/// `POST /api/workers/:id/review`: a person's comments on the run's diff. The review
/// is kept as a comment on the task, and a follow-up on the run's branch and session
/// carries every comment with its file and line.
#[utoipa::path(post, path = "/api/workers/{id}/review", tag = "workers", params(("id" = String, Path, description = "The id of the worker whose change is reviewed")), request_body = ReviewBody,
    responses((status = 201, description = "The review as kept, and the follow-up task that addresses it", body = Reviewed), ApiError))]
pub async fn review(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<ReviewBody>,
) -> ApiResult<(StatusCode, Json<Reviewed>)> {
    let prompt = diff::review_prompt(&body)?;
    let worker = worker_for(&state, &caller, Deed::Read, &id).await?;
    caller
        .may_in(&state, Deed::Create, &worker.workspace_id)
        .await?;
    let parent = state
        .store
        .get_task(&worker.task_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {} not found", worker.task_id)))?;
    let now = time::now();
    let followup = workflow::followup(&parent, Some(&worker), &prompt, now)?;
    let followup = state.store.create_task(&followup, None).await?;
    let kept = format!(
        "Review of worker {id}, addressed by {}:\n{prompt}",
        followup.id
    );
    let comment = state
        .store
        .add_comment(&parent.id, caller.name(), &kept, now)
        .await?;
    Ok((StatusCode::CREATED, Json(Reviewed { comment, followup })))
}
