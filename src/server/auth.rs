//! Who is calling: the admin, or an account identified by its key.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::core::keys;
use crate::core::model::{Account, Grant, Trigger, Worker, Workspace};
use crate::core::policy::{self, Actor, Deed, Target};

/// The authenticated caller of a request. Extracting it answers 401 for a missing or
/// unknown token.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    Account(Account),
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match identify(state, bearer_token(&parts.headers)?).await? {
            Bearer::Caller(caller) => Ok(caller),
            Bearer::Worker(_) => Err(ApiError::Forbidden(
                "a worker token opens only its run's own tools at /mcp, not the HTTP API".into(),
            )),
            Bearer::Trigger(trigger) => Err(trigger_only(&trigger)),
        }
    }
}

/// Whom a bearer token stands for.
pub enum Bearer {
    /// The admin, or an account.
    Caller(Caller),
    /// A run: the worker its token was issued to, which has not ended.
    Worker(Box<Worker>),
    /// Another system, by a trigger's token: it may fire that trigger, nothing else.
    Trigger(Box<Trigger>),
}

/// The refusal of a trigger's token anywhere but its own `fire`.
pub fn trigger_only(trigger: &Trigger) -> ApiError {
    ApiError::Forbidden(format!(
        "a trigger token only fires its trigger: POST /api/triggers/{}/fire",
        trigger.id
    ))
}

/// Whom `token` stands for; 401 when nobody (an unknown token, or the token of a
/// worker that has ended).
pub async fn identify(state: &AppState, token: &str) -> Result<Bearer, ApiError> {
    if keys::secrets_equal(token, &state.admin_token) {
        return Ok(Bearer::Caller(Caller::Admin));
    }
    if keys::looks_like_account_key(token)
        && let Some(account) = state
            .store
            .account_by_key_hash(&keys::hash_key(token))
            .await?
    {
        return Ok(Bearer::Caller(Caller::Account(account)));
    }
    if keys::looks_like_worker_token(token)
        && let Some(worker) = state
            .store
            .worker_by_token_hash(&keys::hash_key(token))
            .await?
            .filter(|w| !w.status.is_terminal())
    {
        return Ok(Bearer::Worker(Box::new(worker)));
    }
    if keys::looks_like_trigger_token(token)
        && let Some(trigger) = state
            .store
            .trigger_by_token_hash(&keys::hash_key(token))
            .await?
    {
        return Ok(Bearer::Trigger(Box::new(trigger)));
    }
    Err(ApiError::Unauthorized("unknown token".into()))
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer token".into()))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be \"Bearer TOKEN\"".into()))
}

impl Caller {
    /// Who the caller is, for per-caller limits and as an author: the account id, or
    /// `admin`.
    pub fn name(&self) -> &str {
        match self {
            Caller::Admin => "admin",
            Caller::Account(a) => &a.id,
        }
    }

    /// The caller as the access policy sees it.
    pub fn actor(&self) -> Actor<'_> {
        match self {
            Caller::Admin => Actor::Admin,
            Caller::Account(a) => Actor::Account(a),
        }
    }

    /// The account id to scope listings to: `None` for the admin, who sees everything.
    pub fn scope(&self) -> Option<String> {
        match self {
            Caller::Admin => None,
            Caller::Account(a) => Some(a.id.clone()),
        }
    }

    /// The policy's answer for a deed whose target needs no lookup (the server, an
    /// account).
    pub fn may(&self, deed: Deed, target: Target) -> Result<(), ApiError> {
        policy::check(self.actor(), deed, target).map_err(|d| ApiError::Forbidden(d.0))
    }

    /// The server-wide deeds, the admin's alone.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        self.may(Deed::Administer, Target::Server)
    }

    /// The calling account; the admin token is refused because the action is an
    /// account's own (claiming, reporting on its workers).
    pub fn require_account(&self) -> Result<&Account, ApiError> {
        policy::own_work(self.actor()).map_err(|d| ApiError::Forbidden(d.0))
    }

    /// The caller's grant on a workspace (the admin holds none and needs none).
    async fn grant(&self, state: &AppState, workspace_id: &str) -> Result<Option<Grant>, ApiError> {
        match self {
            Caller::Admin => Ok(None),
            Caller::Account(a) => Ok(state.store.get_grant(&a.id, workspace_id).await?),
        }
    }

    /// Whether the caller may do `deed` in the workspace `workspace_id`; 403 if not.
    pub async fn may_in(
        &self,
        state: &AppState,
        deed: Deed,
        workspace_id: &str,
    ) -> Result<(), ApiError> {
        let grant = self.grant(state, workspace_id).await?;
        let target = Target::Workspace {
            id: workspace_id,
            grant: grant.as_ref(),
        };
        self.may(deed, target)
    }

    /// [`Caller::may_in`] for a workspace named in the request: 404 when there is no
    /// such workspace, so that a typo reads as one, then 403 when it is not allowed.
    pub async fn may_in_named(
        &self,
        state: &AppState,
        deed: Deed,
        workspace_id: &str,
    ) -> Result<Workspace, ApiError> {
        let workspace = state
            .store
            .get_workspace(workspace_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("workspace {workspace_id} not found")))?;
        self.may_in(state, deed, workspace_id).await?;
        Ok(workspace)
    }

    /// Whether the caller may do `deed` to `worker`; 403 if not. The grant is looked
    /// up only when the caller does not run the worker.
    pub async fn may_on(
        &self,
        state: &AppState,
        deed: Deed,
        worker: &Worker,
    ) -> Result<(), ApiError> {
        let runs_it = matches!(self, Caller::Account(a) if a.id == worker.account_id);
        let grant = match runs_it {
            true => None,
            false => self.grant(state, &worker.workspace_id).await?,
        };
        let target = Target::Worker {
            id: &worker.id,
            runner: &worker.account_id,
            workspace: &worker.workspace_id,
            grant: grant.as_ref(),
        };
        self.may(deed, target)
    }
}
