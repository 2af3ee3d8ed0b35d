//! The API's routes, one module per resource.

mod accounts;
mod events;
mod ops;
mod tasks;
mod workers;
mod workspaces;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::core::validate;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api/me", get(accounts::me))
        .route("/api/events", get(events::stream))
        .route("/api/accounts", post(accounts::create).get(accounts::list))
        .route("/api/accounts/{id}", get(accounts::show))
        .route("/api/accounts/{id}/rotate-key", post(accounts::rotate_key))
        .route("/api/accounts/{id}/workspaces", post(accounts::grant))
        .route(
            "/api/accounts/{id}/workspaces/{workspace_id}",
            delete(accounts::revoke),
        )
        .route(
            "/api/workspaces",
            post(workspaces::create).get(workspaces::list),
        )
        .route("/api/workspaces/{id}", get(workspaces::show))
        .route("/api/tasks", post(tasks::create).get(tasks::list))
        .route("/api/tasks/{id}", get(tasks::show))
        .route("/api/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/tasks/{id}/reply", post(tasks::reply))
        .route("/api/tasks/{id}/artifacts", get(tasks::artifacts))
        .route(
            "/api/tasks/{id}/comments",
            post(tasks::comment).get(tasks::comments),
        )
        .route("/api/sources/{id}", get(tasks::source))
        .route("/api/workers", get(workers::list))
        .route("/api/workers/claim", post(workers::claim))
        .route(
            "/api/workers/{id}",
            get(workers::show).patch(workers::update),
        )
        .route("/api/workers/{id}/heartbeat", post(workers::heartbeat))
        .route(
            "/api/workers/{id}/messages",
            post(workers::append_messages).get(workers::messages),
        )
        .route(
            "/api/workers/{id}/attachments",
            post(workers::attach)
                .layer(DefaultBodyLimit::max(validate::MAX_ATTACHMENT_BYTES))
                .get(workers::attachments),
        )
        .route("/api/attachments/{id}", get(workers::attachment))
        .route("/api/workers/{id}/pause", post(workers::pause))
        .route("/api/workers/{id}/start", post(workers::start))
        .fallback(not_found)
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}

/// The `limit` query parameter of a listing: 100 unless given, at most 1,000.
fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(100) {
        n @ 1..=1000 => Ok(n),
        _ => Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        )),
    }
}
