//! What operators and their tools call: readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::ApiResult;

/// `GET /readyz`: 200 while the database answers, 503 otherwise, so that a load
/// balancer sends no requests to a server cut off from it. No auth, like `/healthz`.
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    state.store.ping().await?;
    Ok(Json(json!({ "status": "ready" })))
}

/// `GET /metrics` (admin): the Prometheus text format. It needs the admin token
/// because task counts and claim rates say how a team works; Prometheus sends it with
/// `authorization: {credentials: …}` in the scrape config.
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
