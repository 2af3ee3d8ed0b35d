//! Accounts (admin only) and their workspace grants.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::api::{AccountList, AccountUsage, CreatedAccount, Me, NewAccount, NewGrant, PageQuery};
use crate::core::keys;
use crate::core::model::{Account, Grant};
use crate::core::page::PageRequest;
use crate::core::policy::{Deed, Target};
use crate::core::{time, validate};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, Body, Params};

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

    let defaults = Account::new(body.account_type, &body.name, time::now());
    let account = Account {
        auth_type,
        max_concurrent_workers: body
            .max_concurrent_workers
            .unwrap_or(defaults.max_concurrent_workers),
        max_concurrent_sessions: body.max_concurrent_sessions,
        max_cost_per_day: body.max_cost_per_day,
        github_repo,
        ..defaults
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

#[utoipa::path(get, path = "/api/accounts", tag = "accounts", params(PageQuery),
    responses((status = 200, description = "Every account (admin), oldest first", body = AccountList), ApiError))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(query): Params<PageQuery>,
) -> ApiResult<Json<AccountList>> {
    caller.require_admin()?;
    let page = PageRequest::from_query(query.limit, query.cursor.as_deref())?;
    let page = state.store.list_accounts(&page).await?;
    Ok(Json(AccountList {
        next_cursor: page.next_cursor(),
        accounts: page.items,
    }))
}

/// `GET /api/accounts/:id/usage`: exact, from the counters claims read.
#[utoipa::path(get, path = "/api/accounts/{id}/usage", tag = "accounts", params(("id" = String, Path, description = "The account's id")),
    responses((status = 200, description = "The account's limits and its usage now (admin, or the account itself)", body = AccountUsage), ApiError))]
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<AccountUsage>> {
    caller.may(Deed::Read, Target::Account { id: &id })?;
    let account = find(&state, &id).await?;
    let day = time::utc_day(time::now());
    let usage = state.store.usage(&id, &day).await?;
    Ok(Json(AccountUsage {
        account_id: account.id,
        day,
        active_workers: usage.active_workers,
        max_concurrent_workers: account.max_concurrent_workers,
        cost_today: usage.cost_usd,
        max_cost_per_day: account.max_cost_per_day,
    }))
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

async fn find(state: &AppState, id: &str) -> ApiResult<Account> {
    state
        .store
        .get_account(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("account {id} not found")))
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
    caller
        .may_in_named(&state, Deed::Administer, &body.workspace_id)
        .await?;
    let grant = Grant {
        account_id: account.id,
        workspace_id: body.workspace_id,
        can_claim: body.can_claim,
        can_create: body.can_create,
    };
    state.store.put_grant(&grant).await?;
    // Tasks that were waiting for a claimer may have one now.
    state.new_work.notify_one();
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
    caller.may(Deed::Steer, Target::Account { id: &id })?;
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
