//! Accounts (admin only) and their workspace grants.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::core::ids::{IdKind, new_id};
use crate::core::keys;
use crate::core::model::{Account, AccountType, AuthType, Grant};
use crate::core::{time, validate};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, Body};

/// `POST /api/accounts`. Unknown fields are ignored so the original README's bodies
/// work as they are; the Claude credentials those carry are read only to be refused.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewAccount {
    #[serde(rename = "type")]
    account_type: AccountType,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
    /// Default: `oauth` for user accounts, `api` for the others; action accounts
    /// cannot be `oauth`.
    auth_type: Option<AuthType>,
    /// Default 3.
    #[schema(minimum = 0)]
    max_concurrent_workers: Option<i64>,
    #[schema(minimum = 0)]
    max_concurrent_sessions: Option<i64>,
    /// US dollars per UTC day.
    #[schema(minimum = 0)]
    max_cost_per_day: Option<f64>,
    /// `owner/repo`, for action accounts.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")]
    github_repo: Option<String>,
    /// The original README's name for `githubRepo`.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")]
    github_id: Option<String>,
    /// Refused: never stored (a warning says so).
    anthropic_api_key: Option<Value>,
    /// Refused: never stored (a warning says so).
    oauth_token: Option<Value>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedAccount {
    #[serde(flatten)]
    account: Account,
    api_key: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[utoipa::path(post, path = "/api/accounts", tag = "accounts", request_body = NewAccount,
    responses((status = 201, description = "The account and its key, shown this once", body = CreatedAccount), ApiError))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewAccount>,
) -> ApiResult<(StatusCode, Json<CreatedAccount>)> {
    caller.require_admin()?;
    validate::text("name", &body.name, validate::MAX_NAME_LEN)?;
    validate::non_negative_count("maxConcurrentWorkers", body.max_concurrent_workers)?;
    validate::non_negative_count("maxConcurrentSessions", body.max_concurrent_sessions)?;
    validate::money("maxCostPerDay", body.max_cost_per_day)?;
    validate::github_repo(body.github_repo.as_deref())?;
    validate::github_repo(body.github_id.as_deref())?;
    let github_repo = body.github_repo.or(body.github_id);
    let auth_type = validate::auth_type(body.account_type, body.auth_type)?;

    let mut warnings = Vec::new();
    for (field, value) in [
        ("anthropicApiKey", &body.anthropic_api_key),
        ("oauthToken", &body.oauth_token),
    ] {
        if value.is_some() {
            warnings.push(format!(
                "{field} was not stored: buildd never keeps Claude credentials; \
                 give them to the agent through its environment \
                 (ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN)"
            ));
        }
    }

    let account = Account {
        id: new_id(IdKind::Account),
        account_type: body.account_type,
        name: body.name.trim().to_owned(),
        auth_type,
        max_concurrent_workers: body
            .max_concurrent_workers
            .unwrap_or(validate::DEFAULT_MAX_WORKERS),
        max_concurrent_sessions: body.max_concurrent_sessions,
        max_cost_per_day: body.max_cost_per_day,
        github_repo,
        created_at: time::now(),
    };
    let api_key = keys::new_account_key(account.account_type);
    state
        .store
        .create_account(&account, &keys::hash_key(&api_key))
        .await?;
    tracing::info!(account = %account.id, account_type = %account.account_type, "account created");
    let created = CreatedAccount {
        account,
        api_key,
        warnings,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Serialize, ToSchema)]
pub struct AccountList {
    accounts: Vec<Account>,
}

#[utoipa::path(get, path = "/api/accounts", tag = "accounts",
    responses((status = 200, description = "Every account (admin)", body = AccountList), ApiError))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<AccountList>> {
    caller.require_admin()?;
    let accounts = state.store.list_accounts().await?;
    Ok(Json(AccountList { accounts }))
}

#[utoipa::path(get, path = "/api/accounts/{id}", tag = "accounts", params(("id" = String, Path, description = "The account's id")),
    responses((status = 200, description = "The account (admin)", body = Account), ApiError))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Account>> {
    caller.require_admin()?;
    Ok(Json(find(&state, &id).await?))
}

/// `GET /api/me`: the calling account, or `{"admin": true}` for the admin token, so
/// that a client can check any token it was given.
#[utoipa::path(get, path = "/api/me", tag = "accounts",
    responses((status = 200, description = "The calling account, or `{\"admin\": true}`", body = Me), ApiError))]
pub async fn me(caller: Caller) -> Json<Me> {
    Json(match caller {
        Caller::Admin => Me::Admin { admin: true },
        Caller::Account(account) => Me::Account(account),
    })
}

/// Who `GET /api/me` says the caller is.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Me {
    Admin { admin: bool },
    Account(Account),
}

async fn find(state: &AppState, id: &str) -> ApiResult<Account> {
    state
        .store
        .get_account(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("account {id} not found")))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewGrant {
    workspace_id: String,
    #[serde(default)]
    can_claim: bool,
    #[serde(default)]
    can_create: bool,
}

/// `POST /api/accounts/:id/workspaces`: grants (or changes the grant of) a workspace.
#[utoipa::path(post, path = "/api/accounts/{id}/workspaces", tag = "accounts", params(("id" = String, Path, description = "The account's id")), request_body = NewGrant,
    responses((status = 200, description = "The grant, new or changed", body = Grant), ApiError))]
pub async fn grant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<NewGrant>,
) -> ApiResult<Json<Grant>> {
    caller.require_admin()?;
    let account = find(&state, &id).await?;
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
    let grant = Grant {
        account_id: account.id,
        workspace_id: body.workspace_id,
        can_claim: body.can_claim,
        can_create: body.can_create,
    };
    state.store.put_grant(&grant).await?;
    // Tasks that were waiting for a claimer may have one now.
    state.new_work.notify_waiters();
    Ok(Json(grant))
}

#[utoipa::path(delete, path = "/api/accounts/{id}/workspaces/{workspace_id}", tag = "accounts",
    params(("id" = String, Path, description = "The account's id"), ("workspace_id" = String, Path, description = "The workspace's id")),
    responses((status = 204, description = "The grant is gone"), ApiError))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, workspace_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if state.store.delete_grant(&id, &workspace_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "account {id} has no grant on workspace {workspace_id}"
        )))
    }
}

/// `POST /api/accounts/:id/rotate-key` (admin, or the account itself): a new key,
/// shown once. The old key stops working with this request, and its event streams on
/// this server end at once (on other servers of the cluster at their next event once
/// the key is checked again, at most 5 s later).
#[utoipa::path(post, path = "/api/accounts/{id}/rotate-key", tag = "accounts", params(("id" = String, Path, description = "The account's id")),
    responses((status = 200, description = "The account and its new key, shown this once", body = CreatedAccount), ApiError))]
pub async fn rotate_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<CreatedAccount>> {
    match &caller {
        Caller::Account(a) if a.id == id => {}
        _ => caller.require_admin()?,
    }
    let account = find(&state, &id).await?;
    let api_key = keys::new_account_key(account.account_type);
    if !state
        .store
        .set_account_key(&account.id, &keys::hash_key(&api_key))
        .await?
    {
        return Err(ApiError::NotFound(format!("account {id} not found")));
    }
    state.events.revoke(&account.id);
    tracing::info!(account = %account.id, "account key rotated");
    let rotated = CreatedAccount {
        account,
        api_key,
        warnings: Vec::new(),
    };
    Ok(Json(rotated))
}
