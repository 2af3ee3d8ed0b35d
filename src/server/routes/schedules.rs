//! Schedules and triggers: tasks made on a cron cadence, or by another system with a
//! trigger's own token. Made, paused and deleted by the admin or an account that may
//! create tasks in their workspace; seen by anyone granted it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use crate::api::{
    CreatedTrigger, NewSchedule, NewTrigger, Schedule, ScheduleList, Task, Trigger, TriggerList,
    WorkspaceQuery,
};
use crate::core::policy::Deed;
use crate::core::{keys, schedule, time, trigger, validate};
use crate::server::AppState;
use crate::server::auth::{Bearer, Caller, bearer_token, identify, trigger_only};
use crate::server::error::{ApiError, ApiResult, Body, Params};

#[utoipa::path(post, path = "/api/schedules", tag = "schedules", request_body = NewSchedule,
    responses((status = 201, description = "The schedule, with its first run", body = Schedule), ApiError))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewSchedule>,
) -> ApiResult<(StatusCode, Json<Schedule>)> {
    let made = schedule::new(
        body.workspace_id,
        &body.cron,
        body.timezone.as_deref().unwrap_or("UTC"),
        body.task,
        body.max_failures,
        caller.name(),
        time::now(),
    )?;
    caller
        .may_in_named(&state, Deed::Create, &made.workspace_id)
        .await?;
    state.store.create_schedule(&made).await?;
    state.schedules_changed.notify_one();
    Ok((StatusCode::CREATED, Json(made)))
}

#[utoipa::path(get, path = "/api/schedules", tag = "schedules", params(WorkspaceQuery),
    responses((status = 200, description = "The schedules the caller may see, oldest first", body = ScheduleList), ApiError))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(query): Params<WorkspaceQuery>,
) -> ApiResult<Json<ScheduleList>> {
    if let Some(ws) = &query.workspace_id {
        caller.may_in_named(&state, Deed::Read, ws).await?;
    }
    let scope = caller.scope();
    let schedules = state
        .store
        .list_schedules(query.workspace_id.as_deref(), scope.as_deref())
        .await?;
    Ok(Json(ScheduleList { schedules }))
}

/// The schedule, if the caller may do `deed` in its workspace.
async fn schedule_for(
    state: &AppState,
    caller: &Caller,
    deed: Deed,
    id: &str,
) -> ApiResult<Schedule> {
    let found = state
        .store
        .get_schedule(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("schedule {id} not found")))?;
    caller.may_in(state, deed, &found.workspace_id).await?;
    Ok(found)
}

#[utoipa::path(get, path = "/api/schedules/{id}", tag = "schedules", params(("id" = String, Path, description = "The schedule's id")),
    responses((status = 200, description = "The schedule", body = Schedule), ApiError))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Schedule>> {
    Ok(Json(schedule_for(&state, &caller, Deed::Read, &id).await?))
}

#[utoipa::path(post, path = "/api/schedules/{id}/pause", tag = "schedules", params(("id" = String, Path, description = "The schedule's id")),
    responses((status = 200, description = "The schedule, paused: no run until it is resumed", body = Schedule), ApiError))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Schedule>> {
    schedule_for(&state, &caller, Deed::Create, &id).await?;
    let paused = state
        .store
        .set_schedule_paused(&id, true, time::now())
        .await?;
    Ok(Json(paused))
}

#[utoipa::path(post, path = "/api/schedules/{id}/resume", tag = "schedules", params(("id" = String, Path, description = "The schedule's id")),
    responses((status = 200, description = "The schedule, running again from its next occurrence, its failures forgiven", body = Schedule), ApiError))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Schedule>> {
    schedule_for(&state, &caller, Deed::Create, &id).await?;
    let resumed = state
        .store
        .set_schedule_paused(&id, false, time::now())
        .await?;
    state.schedules_changed.notify_one();
    Ok(Json(resumed))
}

#[utoipa::path(delete, path = "/api/schedules/{id}", tag = "schedules", params(("id" = String, Path, description = "The schedule's id")),
    responses((status = 204, description = "The schedule is gone; the tasks it made stay"), ApiError))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    schedule_for(&state, &caller, Deed::Create, &id).await?;
    state.store.delete_schedule(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/triggers", tag = "schedules", request_body = NewTrigger,
    responses((status = 201, description = "The trigger, with its token shown this once", body = CreatedTrigger), ApiError))]
pub async fn create_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewTrigger>,
) -> ApiResult<(StatusCode, Json<CreatedTrigger>)> {
    let made = trigger::new(
        body.workspace_id,
        &body.name,
        body.task,
        caller.name(),
        time::now(),
    )?;
    caller
        .may_in_named(&state, Deed::Create, &made.workspace_id)
        .await?;
    let token = keys::new_trigger_token();
    state
        .store
        .create_trigger(&made, &keys::hash_key(&token))
        .await?;
    tracing::info!(trigger = %made.id, workspace = %made.workspace_id, "trigger created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedTrigger {
            trigger: made,
            token,
        }),
    ))
}

#[utoipa::path(get, path = "/api/triggers", tag = "schedules", params(WorkspaceQuery),
    responses((status = 200, description = "The triggers the caller may see, oldest first", body = TriggerList), ApiError))]
pub async fn list_triggers(
    State(state): State<AppState>,
    caller: Caller,
    Params(query): Params<WorkspaceQuery>,
) -> ApiResult<Json<TriggerList>> {
    if let Some(ws) = &query.workspace_id {
        caller.may_in_named(&state, Deed::Read, ws).await?;
    }
    let scope = caller.scope();
    let triggers = state
        .store
        .list_triggers(query.workspace_id.as_deref(), scope.as_deref())
        .await?;
    Ok(Json(TriggerList { triggers }))
}

async fn trigger_for(
    state: &AppState,
    caller: &Caller,
    deed: Deed,
    id: &str,
) -> ApiResult<Trigger> {
    let found = state
        .store
        .get_trigger(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("trigger {id} not found")))?;
    caller.may_in(state, deed, &found.workspace_id).await?;
    Ok(found)
}

#[utoipa::path(get, path = "/api/triggers/{id}", tag = "schedules", params(("id" = String, Path, description = "The trigger's id")),
    responses((status = 200, description = "The trigger", body = Trigger), ApiError))]
pub async fn show_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Trigger>> {
    Ok(Json(trigger_for(&state, &caller, Deed::Read, &id).await?))
}

#[utoipa::path(delete, path = "/api/triggers/{id}", tag = "schedules", params(("id" = String, Path, description = "The trigger's id")),
    responses((status = 204, description = "The trigger is gone, and its token with it; the tasks it made stay"), ApiError))]
pub async fn delete_trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    trigger_for(&state, &caller, Deed::Create, &id).await?;
    state.store.delete_trigger(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/triggers/:id/fire`, with the trigger's own token (no other key opens
/// it) and any JSON body (or none), whose values fill the template's placeholders.
#[utoipa::path(post, path = "/api/triggers/{id}/fire", tag = "schedules", params(("id" = String, Path, description = "The trigger's id")),
    request_body(content = Option<serde_json::Value>, description = "Any JSON (or nothing): `{{payload.PATH}}` in the task's title and description is filled from it"),
    responses((status = 201, description = "The task the trigger made", body = Task), ApiError))]
pub async fn fire(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let token = bearer_token(&headers)?;
    match identify(&state, token).await? {
        Bearer::Trigger(trigger) if trigger.id == id => {}
        Bearer::Trigger(trigger) => return Err(trigger_only(&trigger)),
        _ => {
            return Err(ApiError::Forbidden(format!(
                "trigger {id} fires only with its own token"
            )));
        }
    }
    let payload: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    if validate::has_nul(&payload) {
        return Err(ApiError::BadRequest(validate::NUL_REFUSED.into()));
    }
    let task = state
        .store
        .fire_trigger(&id, &keys::hash_key(token), &payload, time::now())
        .await?;
    state.task_created(&task);
    Ok((StatusCode::CREATED, Json(task)))
}
