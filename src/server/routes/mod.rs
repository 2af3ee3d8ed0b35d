//! The API's routes, one module per resource.
//!
//! Every route is registered through [`api`], which collects each handler together
//! with its `#[utoipa::path]` description: a route cannot exist without being in
//! `GET /api/openapi.json`, nor be described there without existing.

mod accounts;
mod agents;
mod events;
mod github;
mod ops;
mod schedules;
mod triggers;
mod webhooks;
// The MCP tools call these handlers.
pub(super) mod tasks;
pub(super) mod workers;
pub(super) mod workspaces;

use std::sync::OnceLock;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::openapi::{
    ApiDoc, add_agent_report_rules, add_body_rules, add_cross_field_rules, add_runner_rules,
};
use crate::core::{diff, validate};

/// The API's routes, each with its description.
fn api() -> OpenApiRouter<AppState> {
    let (schemas, paths, diffs) = routes!(workers::put_diff, workers::diff);
    // A run's diff can be larger than other JSON bodies.
    let diffs = (
        schemas,
        paths,
        diffs.layer(DefaultBodyLimit::max(diff::MAX_DIFF_BODY_BYTES)),
    );
    let (schemas, paths, attachments) = routes!(workers::attach, workers::attachments);
    // Attachments are files: they get a larger body limit than JSON requests.
    let attachments = (
        schemas,
        paths,
        attachments.layer(DefaultBodyLimit::max(validate::MAX_ATTACHMENT_BYTES)),
    );
    let (schemas, paths, github_webhook) = routes!(github::webhook);
    // GitHub sends payloads of up to 25 MB.
    let github_webhook = (
        schemas,
        paths,
        github_webhook.layer(DefaultBodyLimit::max(
            crate::core::github::MAX_PAYLOAD_BYTES,
        )),
    );
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(accounts::me))
        .routes(routes!(events::stream))
        .routes(routes!(agents::list))
        .routes(routes!(agents::report))
        .routes(routes!(accounts::create, accounts::list))
        .routes(routes!(accounts::show))
        .routes(routes!(accounts::usage))
        .routes(routes!(accounts::rotate_key))
        .routes(routes!(accounts::grant))
        .routes(routes!(accounts::revoke))
        .routes(routes!(workspaces::create, workspaces::list))
        .routes(routes!(workspaces::show))
        .routes(routes!(tasks::create, tasks::list))
        .routes(routes!(tasks::counts))
        .routes(routes!(tasks::show))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::reply))
        .routes(routes!(tasks::retry))
        .routes(routes!(tasks::approve))
        .routes(routes!(tasks::revise))
        .routes(routes!(tasks::reject))
        .routes(routes!(tasks::followup))
        .routes(routes!(tasks::artifacts))
        .routes(routes!(tasks::comment, tasks::comments))
        .routes(routes!(tasks::source))
        .routes(routes!(schedules::create, schedules::list))
        .routes(routes!(schedules::show, schedules::delete))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(triggers::create, triggers::list))
        .routes(routes!(triggers::show, triggers::delete))
        .routes(routes!(triggers::fire))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::show, webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .routes(github_webhook)
        .routes(routes!(workers::list, workers::create))
        .routes(routes!(workers::instruct))
        .routes(routes!(workers::claim))
        .routes(routes!(workers::show, workers::update))
        .routes(routes!(workers::heartbeat))
        .routes(routes!(workers::append_messages, workers::messages))
        .routes(attachments)
        .routes(diffs)
        .routes(routes!(workers::review))
        .routes(routes!(workers::attachment))
        .routes(routes!(workers::pause))
        .routes(routes!(workers::start))
}

pub fn routes() -> Router<AppState> {
    api().split_for_parts().0.fallback(not_found)
}

/// The OpenAPI description of every route, built once.
pub fn spec() -> &'static serde_json::Value {
    static SPEC: OnceLock<serde_json::Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut spec = api().split_for_parts().1;
        add_cross_field_rules(&mut spec);
        let mut spec = serde_json::to_value(spec).unwrap_or_default();
        add_agent_report_rules(&mut spec);
        add_runner_rules(&mut spec);
        add_body_rules(&mut spec);
        spec
    })
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::core::actions::{
        MAX_ARTIFACTS_PER_UPDATE, MAX_FIELD_LEN, MAX_PROGRESS_LEN, MAX_TEXT_LEN,
    };
    use crate::core::claim::{MAX_TASKS_PER_CLAIM, MAX_WAIT_SECS};
    use crate::core::diff::{MAX_FILES, MAX_PATCH_BYTES, MAX_REVIEW_COMMENTS};
    use crate::core::plan::MAX_STEPS;
    use crate::core::schedule::{MAX_CRON_LEN, MAX_FAILURES_LIMIT};
    use crate::core::validate::{
        MAX_ATTEMPTS_LIMIT, MAX_COMMENT_LEN, MAX_DESCRIPTION_LEN, MAX_MESSAGES_PER_BATCH,
        MAX_NAME_LEN, MAX_TITLE_LEN, MAX_URL_LEN,
    };
    use crate::core::workflow::MAX_DEPENDENCIES;

    /// Every `cursor` parameter states the shape `Position::decode` reads.
    #[test]
    fn cursors_are_described_as_they_are_read() {
        let spec = serde_json::to_value(super::spec()).unwrap();
        let mut described = 0;
        for (path, item) in spec["paths"].as_object().unwrap() {
            let Some(get) = item.get("get") else { continue };
            for param in get["parameters"].as_array().into_iter().flatten() {
                if param["name"] == "cursor" {
                    assert_eq!(
                        param["schema"]["pattern"],
                        crate::core::page::CURSOR_PATTERN,
                        "{path}"
                    );
                    described += 1;
                }
            }
        }
        assert_eq!(
            described, 6,
            "tasks, workers, messages, comments, artifacts, accounts"
        );
    }

    /// Bounds written as numbers in `#[schema]` attributes (which take only literals)
    /// must follow the constants the handlers check.
    #[test]
    fn described_bounds_follow_the_rules() {
        let spec = serde_json::to_value(super::spec()).unwrap();
        let schemas = &spec["components"]["schemas"];
        let bound = |schema: &str, field: &str, key: &str| {
            let value = &schemas[schema]["properties"][field][key];
            assert!(!value.is_null(), "{schema}.{field} has no {key}");
            value.clone()
        };
        for (schema, field, key, rule) in [
            (
                "ClaimBody",
                "maxTasks",
                "maximum",
                json!(MAX_TASKS_PER_CLAIM),
            ),
            ("ClaimBody", "wait", "maximum", json!(MAX_WAIT_SECS)),
            (
                "MessagesBody",
                "messages",
                "maxItems",
                json!(MAX_MESSAGES_PER_BATCH),
            ),
            ("NewAccount", "name", "maxLength", json!(MAX_NAME_LEN)),
            ("NewWorkspace", "name", "maxLength", json!(MAX_NAME_LEN)),
            ("NewWorkspace", "repoUrl", "maxLength", json!(MAX_URL_LEN)),
            (
                "NewWorkspace",
                "defaultBranch",
                "maxLength",
                json!(MAX_NAME_LEN),
            ),
            ("NewTask", "title", "maxLength", json!(MAX_TITLE_LEN)),
            (
                "NewTask",
                "description",
                "maxLength",
                json!(MAX_DESCRIPTION_LEN),
            ),
            (
                "NewTask",
                "maxAttempts",
                "maximum",
                json!(MAX_ATTEMPTS_LIMIT),
            ),
            ("NewSource", "externalId", "maxLength", json!(MAX_NAME_LEN)),
            ("NewSource", "url", "maxLength", json!(MAX_URL_LEN)),
            ("CommentBody", "body", "maxLength", json!(MAX_COMMENT_LEN)),
            ("NewDiff", "patch", "maxLength", json!(MAX_PATCH_BYTES)),
            ("NewDiff", "files", "maxItems", json!(MAX_FILES)),
            (
                "ReviewBody",
                "comments",
                "maxItems",
                json!(MAX_REVIEW_COMMENTS),
            ),
            ("ReviewComment", "body", "maxLength", json!(MAX_COMMENT_LEN)),
            ("ReviewBody", "summary", "maxLength", json!(MAX_COMMENT_LEN)),
            ("WorkerUpdate", "branch", "maxLength", json!(MAX_FIELD_LEN)),
            (
                "WorkerUpdate",
                "sessionId",
                "maxLength",
                json!(MAX_FIELD_LEN),
            ),
            (
                "WorkerUpdate",
                "commitSha",
                "maxLength",
                json!(MAX_FIELD_LEN),
            ),
            ("WorkerUpdate", "prUrl", "maxLength", json!(MAX_FIELD_LEN)),
            ("WorkerUpdate", "question", "maxLength", json!(MAX_TEXT_LEN)),
            ("WorkerUpdate", "error", "maxLength", json!(MAX_TEXT_LEN)),
            (
                "WorkerUpdate",
                "progress",
                "maxLength",
                json!(MAX_PROGRESS_LEN),
            ),
            (
                "WorkerUpdate",
                "artifacts",
                "maxItems",
                json!(MAX_ARTIFACTS_PER_UPDATE),
            ),
            ("Artifact", "value", "maxLength", json!(MAX_FIELD_LEN)),
            ("NewTask", "dependsOn", "maxItems", json!(MAX_DEPENDENCIES)),
            ("NewTask", "baseBranch", "maxLength", json!(MAX_NAME_LEN)),
            ("Plan", "steps", "maxItems", json!(MAX_STEPS)),
            ("ReviseBody", "feedback", "maxLength", json!(MAX_TEXT_LEN)),
            ("MessageBody", "message", "maxLength", json!(MAX_TEXT_LEN)),
            ("NewSchedule", "cron", "maxLength", json!(MAX_CRON_LEN)),
            (
                "NewSchedule",
                "maxFailures",
                "maximum",
                json!(MAX_FAILURES_LIMIT),
            ),
            ("TaskTemplate", "title", "maxLength", json!(MAX_TITLE_LEN)),
            (
                "TaskTemplate",
                "description",
                "maxLength",
                json!(MAX_DESCRIPTION_LEN),
            ),
            (
                "TaskTemplate",
                "maxAttempts",
                "maximum",
                json!(MAX_ATTEMPTS_LIMIT),
            ),
            (
                "TaskTemplate",
                "baseBranch",
                "maxLength",
                json!(MAX_NAME_LEN),
            ),
            ("NewTrigger", "name", "maxLength", json!(MAX_NAME_LEN)),
        ] {
            assert_eq!(bound(schema, field, key), rule, "{schema}.{field} {key}");
        }
        // A plan's steps are described inline, for runners' structured output.
        let step = &schemas["Plan"]["properties"]["steps"]["items"]["properties"];
        assert_eq!(step["title"]["maxLength"], json!(MAX_TITLE_LEN));
        assert_eq!(step["description"]["maxLength"], json!(MAX_DESCRIPTION_LEN));
        let limits: Vec<&Value> = ["/api/tasks", "/api/workers"]
            .iter()
            .flat_map(|p| spec["paths"][p]["get"]["parameters"].as_array().unwrap())
            .filter(|p| p["name"] == "limit")
            .collect();
        assert_eq!(limits.len(), 2);
        for limit in limits {
            assert_eq!(limit["schema"]["maximum"], json!(1000));
        }
    }
}
