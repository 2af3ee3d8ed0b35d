//! Notifications: webhooks told of task events, and each delivery with its outcome.
//! The admin's alone.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::api::{DeliveryList, DeliveryQuery, NewWebhook, Webhook, WebhookList};
use crate::core::policy::Deed;
use crate::core::{keys, notify, time};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, Body, Params};

#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks", request_body = NewWebhook,
    responses((status = 201, description = "The webhook; it is told of events from now on", body = Webhook), ApiError))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewWebhook>,
) -> ApiResult<(StatusCode, Json<Webhook>)> {
    caller.require_admin()?;
    let made = notify::webhook(
        &body.url,
        &body.events,
        body.workspace_id.clone(),
        body.secret.as_deref(),
        time::now(),
    )?;
    if let Some(ws) = &body.workspace_id {
        caller.may_in_named(&state, Deed::Administer, ws).await?;
    }
    let sealed = body
        .secret
        .map(|secret| keys::seal(&keys::sealing_key(&state.admin_token), &secret));
    state.store.create_webhook(&made, sealed.as_deref()).await?;
    tracing::info!(webhook = %made.id, "webhook created");
    Ok((StatusCode::CREATED, Json(made)))
}

#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks",
    responses((status = 200, description = "Every webhook, oldest first", body = WebhookList), ApiError))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<WebhookList>> {
    caller.require_admin()?;
    let webhooks = state.store.list_webhooks().await?;
    Ok(Json(WebhookList { webhooks }))
}

async fn find(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Webhook> {
    caller.require_admin()?;
    state
        .store
        .get_webhook(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("webhook {id} not found")))
}

#[utoipa::path(get, path = "/api/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 200, description = "The webhook", body = Webhook), ApiError))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Webhook>> {
    Ok(Json(find(&state, &caller, &id).await?))
}

#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 204, description = "The webhook is gone, and its deliveries with it"), ApiError))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    find(&state, &caller, &id).await?;
    state.store.delete_webhook(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = String, Path, description = "The webhook's id"), DeliveryQuery),
    responses((status = 200, description = "Its newest deliveries, newest first, each with how it went", body = DeliveryList), ApiError))]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Params(query): Params<DeliveryQuery>,
) -> ApiResult<Json<DeliveryList>> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    find(&state, &caller, &id).await?;
    let deliveries = state.store.list_deliveries(&id, limit).await?;
    Ok(Json(DeliveryList { deliveries }))
}
