//! Workspaces: created by the admin, seen by the accounts granted them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::api::{NewWorkspace, WorkspaceList};
use crate::core::model::Workspace;
use crate::core::policy::Deed;
use crate::core::{github, time, validate};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, Body};

#[utoipa::path(post, path = "/api/workspaces", tag = "workspaces", request_body = NewWorkspace,
    responses((status = 201, description = "The workspace", body = Workspace), ApiError))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewWorkspace>,
) -> ApiResult<(StatusCode, Json<Workspace>)> {
    caller.require_admin()?;
    validate::text("name", &body.name, validate::MAX_NAME_LEN)?;
    validate::optional_text("repoUrl", body.repo_url.as_deref(), validate::MAX_URL_LEN)?;
    if let Some(branch) = &body.default_branch {
        validate::text("defaultBranch", branch, validate::MAX_NAME_LEN)?;
    }
    let github_label = github::label(body.github_label.as_deref())?;
    let max_ci_retries = github::max_ci_retries(body.max_ci_retries)?;
    let repo_url = body.repo_url.filter(|u| !u.trim().is_empty());
    let mut workspace = Workspace::new(&body.name, repo_url, time::now());
    if let Some(branch) = body.default_branch {
        workspace.default_branch = branch;
    }
    workspace.github_label = github_label;
    workspace.max_ci_retries = max_ci_retries;
    state.store.create_workspace(&workspace).await?;
    Ok((StatusCode::CREATED, Json(workspace)))
}

#[utoipa::path(get, path = "/api/workspaces", tag = "workspaces",
    responses((status = 200, description = "All workspaces (admin), or those granted to the account", body = WorkspaceList), ApiError))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<WorkspaceList>> {
    let scope = caller.scope();
    let workspaces = state.store.list_workspaces(scope.as_deref()).await?;
    Ok(Json(WorkspaceList { workspaces }))
}

#[utoipa::path(get, path = "/api/workspaces/{id}", tag = "workspaces", params(("id" = String, Path, description = "The workspace's id")),
    responses((status = 200, description = "The workspace", body = Workspace), ApiError))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Workspace>> {
    Ok(Json(caller.may_in_named(&state, Deed::Read, &id).await?))
}
