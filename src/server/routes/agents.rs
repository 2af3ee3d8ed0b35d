//! Agents: each reports itself; the admin sees them all, an account its own.

use axum::Json;
use axum::extract::{Path, State};

use crate::api::{Agent, AgentList, AgentReport};
use crate::core::{agents, time};
use crate::server::AppState;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, Body};

#[utoipa::path(put, path = "/api/agents/{id}", tag = "agents", request_body = AgentReport,
    params(("id" = String, Path, description = "The agent's own id (letters, digits, '-', '_'; at most 64)")),
    responses((status = 200, description = "The agent as the server now shows it", body = Agent), ApiError))]
pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<AgentReport>,
) -> ApiResult<Json<Agent>> {
    let account = caller.require_account()?;
    agents::check_id(&id)?;
    agents::check_report(&body.hostname, &body.version, &body.runners, &body.running)?;
    let now = time::now();
    let agent = Agent {
        id,
        account_id: account.id.clone(),
        hostname: body.hostname,
        version: body.version,
        runners: body.runners,
        state: body.state,
        running: body.running,
        connected_at: now,
        last_seen_at: now,
    };
    let seen_after = agents::seen_after(now, state.lease_ttl);
    Ok(Json(state.store.report_agent(&agent, seen_after).await?))
}

#[utoipa::path(get, path = "/api/agents", tag = "agents",
    responses((status = 200, description = "The connected agents: all of them for the admin, its own for an account", body = AgentList), ApiError))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<AgentList>> {
    let seen_after = agents::seen_after(time::now(), state.lease_ttl);
    let scope = caller.scope();
    let agents = state
        .store
        .list_agents(scope.as_deref(), seen_after)
        .await?;
    Ok(Json(AgentList { agents }))
}
