//! Tasks: queued by the admin or an account with `canCreate`, read by anyone granted
//! their workspace.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::page_limit;
use crate::core::actions::Action;
use crate::core::ids::{IdKind, new_id};
use crate::core::model::{Comment, RecordedArtifact, RunnerPreference, Source, Task, TaskStatus};
use crate::core::{time, validate};
use crate::server::AppState;
use crate::server::auth::{Access, Caller};
use crate::server::error::{ApiError, ApiResult, Body, Params};
use crate::store::TaskFilter;

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewTask {
    workspace_id: String,
    #[schema(min_length = 1, max_length = 500, pattern = r"\S")]
    title: String,
    #[serde(default)]
    #[schema(max_length = 262144)]
    description: String,
    /// Default `any`.
    runner_preference: Option<RunnerPreference>,
    /// Higher goes first; default 0.
    #[serde(default)]
    priority: i32,
    /// Default 3.
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<i32>,
    /// The agent stops the run past this many US dollars.
    #[schema(minimum = 0)]
    max_cost_usd: Option<f64>,
    source: Option<NewSource>,
}

/// Where a new task came from, e.g. `{"type": "github_issue", "externalId":
/// "my-org/my-repo#12", "url": "https://github.com/my-org/my-repo/issues/12"}`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewSource {
    #[serde(rename = "type")]
    #[schema(pattern = r"^[a-z0-9_]{1,50}$")]
    source_type: String,
    #[schema(max_length = 200)]
    external_id: Option<String>,
    #[schema(max_length = 2048)]
    url: Option<String>,
}

#[utoipa::path(post, path = "/api/tasks", tag = "tasks", request_body = NewTask,
    responses((status = 201, description = "The task, pending", body = Task), ApiError))]
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

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    workspace_id: Option<String>,
    status: Option<TaskStatus>,
    source_id: Option<String>,
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskList {
    tasks: Vec<Task>,
}

#[utoipa::path(get, path = "/api/tasks", tag = "tasks", params(ListQuery),
    responses((status = 200, description = "Tasks the caller may see, newest first", body = TaskList), ApiError))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(query): Params<ListQuery>,
) -> ApiResult<Json<TaskList>> {
    let filter = TaskFilter {
        workspace_id: query.workspace_id,
        status: query.status,
        source_id: query.source_id,
        visible_to: caller.scope(),
        limit: page_limit(query.limit)?,
    };
    let tasks = state.store.list_tasks(&filter).await?;
    Ok(Json(TaskList { tasks }))
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

#[utoipa::path(get, path = "/api/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "The task", body = Task), ApiError))]
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

#[utoipa::path(post, path = "/api/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "The task, cancelled (or as it was, if it had ended)", body = Task), ApiError))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    steerable_task(&state, &caller, &id).await?;
    let applied = state.store.apply(&id, Action::Cancel, time::now()).await?;
    Ok(Json(applied.task))
}

#[derive(Deserialize, ToSchema)]
pub struct ReplyBody {
    #[schema(min_length = 1, max_length = 65536, pattern = r"\S")]
    message: String,
}

#[utoipa::path(post, path = "/api/tasks/{id}/reply", tag = "tasks", params(("id" = String, Path, description = "The task's id")), request_body = ReplyBody,
    responses((status = 200, description = "The task; its worker gets the answer at its next heartbeat", body = Task), ApiError))]
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

#[derive(Serialize, ToSchema)]
pub struct ArtifactList {
    artifacts: Vec<RecordedArtifact>,
}

/// `GET /api/tasks/:id/artifacts`: branches, commits, PRs and files of every attempt.
#[utoipa::path(get, path = "/api/tasks/{id}/artifacts", tag = "tasks", params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "What every attempt produced", body = ArtifactList), ApiError))]
pub async fn artifacts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ArtifactList>> {
    visible_task(&state, &caller, &id).await?;
    let artifacts = state.store.list_artifacts(&id).await?;
    Ok(Json(ArtifactList { artifacts }))
}

#[derive(Deserialize, ToSchema)]
pub struct CommentBody {
    #[schema(min_length = 1, max_length = 65536, pattern = r"\S")]
    body: String,
}

/// `POST /api/tasks/:id/comments`: anyone who can see the task may comment on it.
#[utoipa::path(post, path = "/api/tasks/{id}/comments", tag = "tasks", params(("id" = String, Path, description = "The task's id")), request_body = CommentBody,
    responses((status = 201, description = "The comment", body = Comment), ApiError))]
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

#[derive(Serialize, ToSchema)]
pub struct CommentList {
    comments: Vec<Comment>,
}

#[utoipa::path(get, path = "/api/tasks/{id}/comments", tag = "tasks", params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "The task's comments, oldest first", body = CommentList), ApiError))]
pub async fn comments(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<CommentList>> {
    visible_task(&state, &caller, &id).await?;
    let comments = state.store.list_comments(&id).await?;
    Ok(Json(CommentList { comments }))
}

/// `GET /api/sources/:id`: where tasks came from; list its tasks with
/// `GET /api/tasks?sourceId=`.
#[utoipa::path(get, path = "/api/sources/{id}", tag = "tasks", params(("id" = String, Path, description = "The source's id")),
    responses((status = 200, description = "The source", body = Source), ApiError))]
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
