//! Who is calling: the admin, or an account identified by its key.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::core::keys;
use crate::core::model::Account;

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
        let token = bearer_token(&parts.headers)?;
        if keys::secrets_equal(token, &state.admin_token) {
            return Ok(Caller::Admin);
        }
        if keys::looks_like_account_key(token)
            && let Some(account) = state
                .store
                .account_by_key_hash(&keys::hash_key(token))
                .await?
        {
            return Ok(Caller::Account(account));
        }
        Err(ApiError::Unauthorized("unknown token".into()))
    }
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
    /// Who the caller is, for per-caller limits: the account id, or `admin`.
    pub fn name(&self) -> &str {
        match self {
            Caller::Admin => "admin",
            Caller::Account(a) => &a.id,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin)
    }

    /// The account id to scope listings to: `None` for the admin, who sees everything.
    pub fn scope(&self) -> Option<String> {
        match self {
            Caller::Admin => None,
            Caller::Account(a) => Some(a.id.clone()),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this needs the admin token".into()))
        }
    }

    /// The calling account; the admin token is refused because the action is an
    /// account's own (claiming, reporting on its workers).
    pub fn require_account(&self) -> Result<&Account, ApiError> {
        match self {
            Caller::Account(a) => Ok(a),
            Caller::Admin => Err(ApiError::Forbidden(
                "this needs an account key, not the admin token".into(),
            )),
        }
    }

    /// What the caller may do in `workspace_id`, or 403 if it has no grant there. The
    /// admin may do everything everywhere.
    pub async fn access(&self, state: &AppState, workspace_id: &str) -> Result<Access, ApiError> {
        let account = match self {
            Caller::Admin => {
                return Ok(Access {
                    can_claim: true,
                    can_create: true,
                });
            }
            Caller::Account(a) => a,
        };
        let grant = state
            .store
            .get_grant(&account.id, workspace_id)
            .await?
            .ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "account {} has no access to workspace {workspace_id}",
                    account.id
                ))
            })?;
        Ok(Access {
            can_claim: grant.can_claim,
            can_create: grant.can_create,
        })
    }
}

/// What a caller may do in one workspace (seeing it is implied).
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub can_claim: bool,
    pub can_create: bool,
}
