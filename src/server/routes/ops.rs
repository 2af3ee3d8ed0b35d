//! What operators and their tools call: health, readiness, metrics and the API's own
//! description.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::api::Status;
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, ErrorBody};

/// `GET /healthz`: the process is up. No auth.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "The process is up", body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// `GET /readyz`: 200 while the database answers, 503 otherwise, so that a load
/// balancer sends no requests to a server cut off from it. No auth.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "The database answers", body = Status),
        (status = 503, description = "The database does not answer", body = ErrorBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Status>> {
    state.store.ping().await?;
    Ok(Json(Status {
        status: "ready".into(),
    }))
}

/// `GET /metrics` (admin): the Prometheus text format. It needs the admin token
/// because task counts and claim rates say how a team works; Prometheus sends it with
/// `authorization: {credentials: …}` in the scrape config.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus/OpenMetrics text",
            content_type = "application/openmetrics-text", body = String),
        ApiError,
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    let counts = state.store.counts().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&counts),
    ))
}

/// `GET /api/openapi.json`: this API's OpenAPI 3.1 description. No auth.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi() -> Json<&'static serde_json::Value> {
    Json(super::spec())
}
