//! `POST /api/github/webhook`: GitHub's deliveries, checked and acted on.
//!
//! No bearer token: GitHub proves a delivery is its own by signing the body with the
//! webhook's secret (`X-Hub-Signature-256`), and nothing unsigned is read.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tracing::{info, warn};

use crate::api::GithubDeliveryAnswer;
use crate::core::github::{self, Happening};
use crate::core::model::{GithubOutcome, Workspace};
use crate::core::time;
use crate::server::AppState;
use crate::server::error::{ApiError, ApiResult};

/// The longest `X-GitHub-Delivery` kept (GitHub's are GUIDs).
const MAX_DELIVERY_ID_LEN: usize = 100;

#[utoipa::path(post, path = "/api/github/webhook", tag = "github", security(()),
    params(
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=` and the HMAC-SHA256 of the body with the webhook's secret"),
        ("X-GitHub-Event" = String, Header, description = "`issues`, `issue_comment`, `check_run`, `check_suite`, `pull_request_review`, `pull_request` are acted on; others are ignored"),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's id: a repeated one is acted on once"),
    ),
    request_body(content = serde_json::Value, description = "The event's payload, as GitHub sends it"),
    responses(
        (status = 200, description = "Acted on, ignored, or a repeat", body = GithubDeliveryAnswer),
        (status = 202, description = "No workspace's repoUrl names the repository: nothing was done", body = GithubDeliveryAnswer),
        ApiError,
    ))]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<GithubDeliveryAnswer>)> {
    let Some(secret) = &state.github_webhook_secret else {
        return Err(ApiError::NotFound(
            "GitHub webhooks are off: start the server with --github-webhook-secret".into(),
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !github::signed_by(secret, &body, header("x-hub-signature-256")) {
        return Err(ApiError::Unauthorized(
            "X-Hub-Signature-256 is missing or is not the signature of this body with the \
             webhook's secret"
                .into(),
        ));
    }
    let event = required(header("x-github-event"), "X-GitHub-Event")?.to_owned();
    let delivery_id = required(header("x-github-delivery"), "X-GitHub-Delivery")?.to_owned();
    let answer = |outcome, reactions| GithubDeliveryAnswer {
        delivery: delivery_id.clone(),
        event: event.clone(),
        outcome,
        reactions,
    };
    let Some(mut delivery) = github::read(&event, &body).map_err(ApiError::BadRequest)? else {
        return Ok((
            StatusCode::OK,
            Json(answer(GithubOutcome::Ignored, Vec::new())),
        ));
    };
    let workspaces: Vec<Workspace> = state
        .store
        .list_workspaces(None)
        .await?
        .into_iter()
        .filter(|w| github::names_repo(w.repo_url.as_deref(), &delivery.repo))
        .collect();
    if workspaces.is_empty() {
        info!(repo = %delivery.repo, event, delivery = delivery_id, "a GitHub delivery for a repository no workspace names; nothing done");
        let unknown = answer(GithubOutcome::UnknownRepository, Vec::new());
        return Ok((StatusCode::ACCEPTED, Json(unknown)));
    }
    // The review's comments cost a call to GitHub: not for a delivery seen before.
    if let (
        Happening::ChangesRequested {
            pr_number,
            review_id,
            comments,
            ..
        },
        Some(api),
    ) = (&mut delivery.happening, &state.github)
        && !state.store.github_delivery_seen(&delivery_id).await?
    {
        match api
            .review_comments(&delivery.repo, *pr_number, *review_id)
            .await
        {
            Ok(read) => *comments = read,
            Err(e) => {
                warn!(repo = %delivery.repo, review = review_id, error = %e, "cannot read the review's comments; the follow-up has its body only");
            }
        }
    }
    let received = state
        .store
        .receive_github(&delivery_id, &event, workspaces, delivery, time::now())
        .await?;
    let Some(received) = received else {
        return Ok((
            StatusCode::OK,
            Json(answer(GithubOutcome::Duplicate, Vec::new())),
        ));
    };
    for task in &received.created {
        state.task_created(task);
    }
    for r in &received.reactions {
        info!(event, delivery = delivery_id, workspace = %r.workspace_id, action = r.action.as_str(), task = r.task_id.as_deref().unwrap_or("-"), detail = %r.detail, "GitHub delivery");
    }
    Ok((
        StatusCode::OK,
        Json(answer(GithubOutcome::Acted, received.reactions)),
    ))
}

fn required<'a>(value: Option<&'a str>, name: &str) -> ApiResult<&'a str> {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() && v.len() <= MAX_DELIVERY_ID_LEN => Ok(v),
        _ => Err(ApiError::BadRequest(format!(
            "{name} is missing or not a name of at most {MAX_DELIVERY_ID_LEN} characters"
        ))),
    }
}
