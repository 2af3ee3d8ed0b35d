//! Tasks: queued by the admin or an account with `canCreate`, read by anyone granted
//! their workspace.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::api::{
    ApproveBody, Approved, ArtifactList, CommentBody, CommentList, CountsQuery, MessageBody,
    NewTask, PageQuery, ReviseBody, StatusCount, TaskCounts, TaskDetail, TaskList, TaskQuery,
};
use crate::core::actions::{Action, MAX_TEXT_LEN};
use crate::core::ids::{IdKind, new_id};
use crate::core::model::{Comment, Source, Task, TaskStatus, TaskTemplate};
use crate::core::page::PageRequest;
use crate::core::policy::Deed;
use crate::core::{time, validate, workflow};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, Body, Params};
use crate::store::TaskFilter;

#[utoipa::path(post, path = "/api/tasks", tag = "tasks", request_body = NewTask,
    responses((status = 201, description = "The task, pending", body = Task), ApiError))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewTask>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let template = TaskTemplate {
        title: body.title,
        description: body.description,
        runner_preference: body.runner_preference,
        priority: body.priority,
        max_attempts: body.max_attempts,
        max_cost_usd: body.max_cost_usd,
        base_branch: body.base_branch,
        mode: body.mode,
        runner: body.runner,
        model: body.model,
        fallback_runner: body.fallback_runner,
    };
    let task = template.task(body.workspace_id, time::now())?;
    let depends_on = workflow::requested(&body.depends_on)?;
    if let Some(src) = &body.source {
        validate::source_type(&src.source_type)?;
        validate::optional_text(
            "source.externalId",
            src.external_id.as_deref(),
            validate::MAX_NAME_LEN,
        )?;
        validate::optional_text("source.url", src.url.as_deref(), validate::MAX_URL_LEN)?;
    }
    caller
        .may_in_named(&state, Deed::Create, &task.workspace_id)
        .await?;
    let task = Task {
        depends_on,
        parent_id: body.parent_id,
        ..task
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
    state.task_created(&task);
    Ok((StatusCode::CREATED, Json(task)))
}

#[utoipa::path(get, path = "/api/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, description = "Tasks the caller may see, newest first", body = TaskList), ApiError))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(query): Params<TaskQuery>,
) -> ApiResult<Json<TaskList>> {
    let search = match query.q {
        Some(q) if !q.trim().is_empty() => {
            validate::text("q", &q, validate::MAX_TITLE_LEN)?;
            Some(q.trim().to_owned())
        }
        _ => None,
    };
    let filter = TaskFilter {
        workspace_id: query.workspace_id,
        status: query.status,
        source_id: query.source_id,
        visible_to: caller.scope(),
        search,
        page: PageRequest::from_query(query.limit, query.cursor.as_deref())?,
    };
    let page = state.store.list_tasks(&filter).await?;
    Ok(Json(TaskList {
        next_cursor: page.next_cursor(),
        tasks: page.items,
    }))
}

/// `GET /api/tasks/counts`: exact, counted by the database.
#[utoipa::path(get, path = "/api/tasks/counts", tag = "tasks", params(CountsQuery),
    responses((status = 200, description = "How many tasks the caller may see are in each status", body = TaskCounts), ApiError))]
pub async fn counts(
    State(state): State<AppState>,
    caller: Caller,
    Params(query): Params<CountsQuery>,
) -> ApiResult<Json<TaskCounts>> {
    if let Some(workspace) = &query.workspace_id {
        caller.may_in_named(&state, Deed::Read, workspace).await?;
    }
    let scope = caller.scope();
    let counts = state
        .store
        .task_counts(query.workspace_id.as_deref(), scope.as_deref())
        .await?;
    Ok(Json(TaskCounts {
        total: counts.iter().map(|(_, n)| n).sum(),
        by_status: counts
            .into_iter()
            .map(|(status, count)| StatusCount { status, count })
            .collect(),
    }))
}

/// The task, if the caller may do `deed` to it (see [`crate::core::policy`]).
async fn task_for(state: &AppState, caller: &Caller, deed: Deed, id: &str) -> ApiResult<Task> {
    let task = state
        .store
        .get_task(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {id} not found")))?;
    caller.may_in(state, deed, &task.workspace_id).await?;
    Ok(task)
}

#[utoipa::path(get, path = "/api/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "The task, with its dependencies and children", body = TaskDetail), ApiError))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<TaskDetail>> {
    let task = task_for(&state, &caller, Deed::Read, &id).await?;
    let links = state.store.task_links(&id).await?;
    let blocked_by = links
        .dependencies
        .iter()
        .filter(|d| d.status != TaskStatus::Completed)
        .map(|d| d.id.clone())
        .collect();
    Ok(Json(TaskDetail {
        task,
        blocked_by,
        dependencies: links.dependencies,
        children: links.children,
    }))
}

#[utoipa::path(post, path = "/api/tasks/{id}/retry", tag = "tasks", params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "The task, pending again (or blocked while a dependency is unfinished); the dependents that failed because of it are blocked again", body = Task), ApiError))]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    task_for(&state, &caller, Deed::Steer, &id).await?;
    Ok(Json(state.store.retry(&id, time::now()).await?))
}

#[utoipa::path(post, path = "/api/tasks/{id}/approve", tag = "tasks", params(("id" = String, Path, description = "The planned task's id")), request_body = Option<ApproveBody>,
    responses((status = 200, description = "The plan task, completed, and one child task per step", body = Approved), ApiError))]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<ApproveBody>,
) -> ApiResult<Json<Approved>> {
    task_for(&state, &caller, Deed::Create, &id).await?;
    let (task, children) = state.store.approve(&id, body.plan, time::now()).await?;
    Ok(Json(Approved { task, children }))
}

#[utoipa::path(post, path = "/api/tasks/{id}/revise", tag = "tasks", params(("id" = String, Path, description = "The planned task's id")), request_body = ReviseBody,
    responses((status = 200, description = "The task, pending again: planning runs again with the feedback", body = Task), ApiError))]
pub async fn revise(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<ReviseBody>,
) -> ApiResult<Json<Task>> {
    task_for(&state, &caller, Deed::Steer, &id).await?;
    let action = Action::Revise {
        feedback: body.feedback,
    };
    Ok(Json(
        state.store.apply(&id, action, time::now()).await?.task,
    ))
}

#[utoipa::path(post, path = "/api/tasks/{id}/reject", tag = "tasks", params(("id" = String, Path, description = "The planned task's id")),
    responses((status = 200, description = "The task, cancelled", body = Task), ApiError))]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    task_for(&state, &caller, Deed::Steer, &id).await?;
    Ok(Json(
        state
            .store
            .apply(&id, Action::Reject, time::now())
            .await?
            .task,
    ))
}

#[utoipa::path(post, path = "/api/tasks/{id}/followup", tag = "tasks", params(("id" = String, Path, description = "The id of a task that has ended")), request_body = MessageBody,
    responses((status = 201, description = "The continuation task: it starts from the parent's branch and carries on its session", body = Task), ApiError))]
pub async fn followup(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<MessageBody>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    validate::text("message", &body.message, MAX_TEXT_LEN)?;
    let parent = task_for(&state, &caller, Deed::Create, &id).await?;
    let last_worker = match &parent.worker_id {
        Some(w) => state.store.get_worker(w).await?,
        None => None,
    };
    let task = workflow::followup(&parent, last_worker.as_ref(), &body.message, time::now())?;
    let task = state.store.create_task(&task, None).await?;
    Ok((StatusCode::CREATED, Json(task)))
}

#[utoipa::path(post, path = "/api/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "The task, cancelled (or as it was, if it had ended)", body = Task), ApiError))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    task_for(&state, &caller, Deed::Steer, &id).await?;
    let applied = state.store.apply(&id, Action::Cancel, time::now()).await?;
    Ok(Json(applied.task))
}

#[utoipa::path(post, path = "/api/tasks/{id}/reply", tag = "tasks", params(("id" = String, Path, description = "The task's id")), request_body = MessageBody,
    responses((status = 200, description = "The task; its worker gets the answer at its next heartbeat", body = Task), ApiError))]
pub async fn reply(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<MessageBody>,
) -> ApiResult<Json<Task>> {
    task_for(&state, &caller, Deed::Steer, &id).await?;
    let action = Action::Reply {
        message: body.message,
    };
    let applied = state.store.apply(&id, action, time::now()).await?;
    Ok(Json(applied.task))
}

/// `GET /api/tasks/:id/artifacts`: branches, commits, PRs and files of every attempt.
#[utoipa::path(get, path = "/api/tasks/{id}/artifacts", tag = "tasks", params(("id" = String, Path, description = "The task's id"), PageQuery),
    responses((status = 200, description = "What every attempt produced, oldest first", body = ArtifactList), ApiError))]
pub async fn artifacts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Params(query): Params<PageQuery>,
) -> ApiResult<Json<ArtifactList>> {
    let page = PageRequest::from_query(query.limit, query.cursor.as_deref())?;
    task_for(&state, &caller, Deed::Read, &id).await?;
    let page = state.store.list_artifacts(&id, &page).await?;
    Ok(Json(ArtifactList {
        next_cursor: page.next_cursor(),
        artifacts: page.items,
    }))
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
    task_for(&state, &caller, Deed::Read, &id).await?;
    let comment = state
        .store
        .add_comment(&id, caller.name(), &body.body, time::now())
        .await?;
    Ok((StatusCode::CREATED, Json(comment)))
}

#[utoipa::path(get, path = "/api/tasks/{id}/comments", tag = "tasks", params(("id" = String, Path, description = "The task's id"), PageQuery),
    responses((status = 200, description = "The task's comments, oldest first", body = CommentList), ApiError))]
pub async fn comments(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Params(query): Params<PageQuery>,
) -> ApiResult<Json<CommentList>> {
    let page = PageRequest::from_query(query.limit, query.cursor.as_deref())?;
    task_for(&state, &caller, Deed::Read, &id).await?;
    let page = state.store.list_comments(&id, &page).await?;
    Ok(Json(CommentList {
        next_cursor: page.next_cursor(),
        comments: page.items,
    }))
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
    caller
        .may_in(&state, Deed::Read, &source.workspace_id)
        .await?;
    Ok(Json(source))
}
