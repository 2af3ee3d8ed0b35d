//! Schedules: tasks made on a cron cadence. Made, paused and deleted by the admin or
//! an account that may create tasks in their workspace; seen by anyone granted it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::api::{NewSchedule, Schedule, ScheduleList, WorkspaceQuery};
use crate::core::policy::Deed;
use crate::core::{schedule, time};
use crate::server::AppState;
use crate::server::auth::Caller;
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
