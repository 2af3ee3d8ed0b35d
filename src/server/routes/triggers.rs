//! Triggers: another system makes a task with a trigger's own token, which opens
//! nothing else. Made and deleted by the admin or an account that may create tasks in
//! their workspace; seen by anyone granted it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use crate::api::{CreatedTrigger, NewTrigger, Task, Trigger, TriggerList, WorkspaceQuery};
use crate::core::policy::Deed;
use crate::core::{keys, time, trigger, validate};
use crate::server::AppState;
use crate::server::auth::{Bearer, Caller, bearer_token, identify, trigger_only};
use crate::server::error::{ApiError, ApiResult, Body, Params};

#[utoipa::path(post, path = "/api/triggers", tag = "triggers", request_body = NewTrigger,
    responses((status = 201, description = "The trigger, with its token shown this once", body = CreatedTrigger), ApiError))]
pub async fn create(
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

#[utoipa::path(get, path = "/api/triggers", tag = "triggers", params(WorkspaceQuery),
    responses((status = 200, description = "The triggers the caller may see, oldest first", body = TriggerList), ApiError))]
pub async fn list(
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

async fn find(state: &AppState, caller: &Caller, deed: Deed, id: &str) -> ApiResult<Trigger> {
    let found = state
        .store
        .get_trigger(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("trigger {id} not found")))?;
    caller.may_in(state, deed, &found.workspace_id).await?;
    Ok(found)
}

#[utoipa::path(get, path = "/api/triggers/{id}", tag = "triggers", params(("id" = String, Path, description = "The trigger's id")),
    responses((status = 200, description = "The trigger", body = Trigger), ApiError))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Trigger>> {
    Ok(Json(find(&state, &caller, Deed::Read, &id).await?))
}

#[utoipa::path(delete, path = "/api/triggers/{id}", tag = "triggers", params(("id" = String, Path, description = "The trigger's id")),
    responses((status = 204, description = "The trigger is gone, and its token with it; the tasks it made stay"), ApiError))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    find(&state, &caller, Deed::Create, &id).await?;
    state.store.delete_trigger(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/triggers/:id/fire`, with the trigger's own token (no other key opens
/// it) and any JSON body (or none), whose values fill the template's placeholders.
#[utoipa::path(post, path = "/api/triggers/{id}/fire", tag = "triggers", params(("id" = String, Path, description = "The trigger's id")),
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
