//! Tasks: queued by the admin or an account with `canCreate`, read by anyone granted
//! their workspace.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::page_limit;
use crate::core::actions::Action;
use crate::core::ids::{IdKind, new_id};
use crate::core::model::{Comment, RunnerPreference, Source, Task, TaskStatus};
use crate::core::{time, validate};
use crate::server::AppState;
use crate::server::auth::{Access, Caller};
use crate::server::error::{ApiError, ApiResult, Body, Params};
use crate::store::TaskFilter;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTask {
    workspace_id: String,
    title: String,
    #[serde(default)]
    description: String,
    runner_preference: Option<RunnerPreference>,
    #[serde(default)]
    priority: i32,
    max_attempts: Option<i32>,
    max_cost_usd: Option<f64>,
    source: Option<NewSource>,
}

/// Where a new task came from, e.g. `{"type": "github_issue", "externalId":
/// "my-org/my-repo#12", "url": "https://github.com/my-org/my-repo/issues/12"}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSource {
    #[serde(rename = "type")]
    source_type: String,
    external_id: Option<String>,
    url: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewTask>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    validate::text("title", &body.title, validate::MAX_TITLE_LEN)?;
    validate::optional_text(
        "description",
        Some(&body.description),
        validate::MAX_DESCRIPTION_LEN,
    )?;
    validate::money("maxCostUsd", body.max_cost_usd)?;
    let max_attempts = validate::max_attempts(body.max_attempts)?;
    if let Some(src) = &body.source {
        validate::source_type(&src.source_type)?;
        validate::optional_text(
            "source.externalId",
            src.external_id.as_deref(),
            validate::MAX_NAME_LEN,
        )?;
        validate::optional_text("source.url", src.url.as_deref(), validate::MAX_URL_LEN)?;
    }
    if state
        .store
        .get_workspace(&body.workspace_id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "workspace {} not found",
            body.workspace_id
        )));
    }
    if !caller.access(&state, &body.workspace_id).await?.can_create {
        return Err(ApiError::Forbidden(format!(
            "no canCreate grant on workspace {}",
            body.workspace_id
        )));
    }
    let task = Task {
        id: new_id(IdKind::Task),
        workspace_id: body.workspace_id,
        title: body.title.trim().to_owned(),
        description: body.description,
        runner_preference: body.runner_preference.unwrap_or(RunnerPreference::Any),
        priority: body.priority,
        status: TaskStatus::Pending,
        attempts: 0,
        max_attempts,
        max_cost_usd: body.max_cost_usd,
        claimed_by: None,
        worker_id: None,
        created_at: time::now(),
        claimed_at: None,
        completed_at: None,
        result: None,
        source_id: None,
    };
    let source = body.source.map(|src| Source {
        id: new_id(IdKind::Source),
        workspace_id: task.workspace_id.clone(),
        source_type: src.source_type,
        external_id: src.external_id,
        url: src.url,
        created_at: task.created_at,
    });
    let task = state.store.create_task(&task, source.as_ref()).await?;
    if let Some(github) = &state.github {
        github.task_created(state.store.clone(), task.clone());
    }
    Ok((StatusCode::CREATED, Json(task)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    workspace_id: Option<String>,
    status: Option<TaskStatus>,
    source_id: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(query): Params<ListQuery>,
) -> ApiResult<Json<Value>> {
    let filter = TaskFilter {
        workspace_id: query.workspace_id,
        status: query.status,
        source_id: query.source_id,
        visible_to: caller.scope(),
        limit: page_limit(query.limit)?,
    };
    Ok(Json(
        json!({ "tasks": state.store.list_tasks(&filter).await? }),
    ))
}

/// The task, if the caller may see it (any grant on its workspace), and what the
/// caller may do there.
async fn visible_task(state: &AppState, caller: &Caller, id: &str) -> ApiResult<(Task, Access)> {
    let task = state
        .store
        .get_task(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {id} not found")))?;
    let access = caller.access(state, &task.workspace_id).await?;
    Ok((task, access))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    Ok(Json(visible_task(&state, &caller, &id).await?.0))
}

/// Checks that the caller may steer the task: the admin, or an account that may
/// create tasks in its workspace.
async fn steerable_task(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Task> {
    let (task, access) = visible_task(state, caller, id).await?;
    if !access.can_create {
        return Err(ApiError::Forbidden(format!(
            "no canCreate grant on workspace {}",
            task.workspace_id
        )));
    }
    Ok(task)
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    steerable_task(&state, &caller, &id).await?;
    let applied = state.store.apply(&id, Action::Cancel, time::now()).await?;
    Ok(Json(applied.task))
}

#[derive(Deserialize)]
pub struct ReplyBody {
    message: String,
}

pub async fn reply(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<ReplyBody>,
) -> ApiResult<Json<Task>> {
    steerable_task(&state, &caller, &id).await?;
    let action = Action::Reply {
        message: body.message,
    };
    let applied = state.store.apply(&id, action, time::now()).await?;
    Ok(Json(applied.task))
}

/// `GET /api/tasks/:id/artifacts`: branches, commits, PRs and files of every attempt.
pub async fn artifacts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    visible_task(&state, &caller, &id).await?;
    Ok(Json(
        json!({ "artifacts": state.store.list_artifacts(&id).await? }),
    ))
}

#[derive(Deserialize)]
pub struct CommentBody {
    body: String,
}

/// `POST /api/tasks/:id/comments`: anyone who can see the task may comment on it.
pub async fn comment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<CommentBody>,
) -> ApiResult<(StatusCode, Json<Comment>)> {
    validate::text("body", &body.body, validate::MAX_COMMENT_LEN)?;
    visible_task(&state, &caller, &id).await?;
    let author = match &caller {
        Caller::Admin => "admin".to_owned(),
        Caller::Account(a) => a.id.clone(),
    };
    let comment = state
        .store
        .add_comment(&id, &author, &body.body, time::now())
        .await?;
    Ok((StatusCode::CREATED, Json(comment)))
}

pub async fn comments(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    visible_task(&state, &caller, &id).await?;
    Ok(Json(
        json!({ "comments": state.store.list_comments(&id).await? }),
    ))
}

/// `GET /api/sources/:id`: where tasks came from; list its tasks with
/// `GET /api/tasks?sourceId=`.
pub async fn source(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Source>> {
    let source = state
        .store
        .get_source(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("source {id} not found")))?;
    caller.access(&state, &source.workspace_id).await?;
    Ok(Json(source))
}
