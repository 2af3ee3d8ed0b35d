//! The frame of `GET /api/openapi.json`: title, auth scheme and tags. The paths and
//! schemas come from the handlers and types themselves (see `routes::api`).

use serde_json::json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "buildd",
        description = "A task broker for AI coding agents. Every request but /healthz, /readyz and /api/openapi.json takes `Authorization: Bearer TOKEN`: the admin token or an account key (`buildd_<type>_…`). Every error is `{\"error\": \"…\"}`."
    ),
    security(("bearer" = [])),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "accounts", description = "Accounts, their keys and workspace grants"),
        (name = "workspaces", description = "The repositories agents work on"),
        (name = "tasks", description = "Queued work and what became of it"),
        (name = "workers", description = "One attempt of one task by one account"),
        (name = "events", description = "The live event stream"),
        (name = "operations", description = "Health, readiness, metrics and this description"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the document's `security` names.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Adds what the schema derive cannot say: rules that tie two fields together. Runs on
/// the finished document, once every route has added its schemas.
pub fn add_cross_field_rules(openapi: &mut utoipa::openapi::OpenApi) {
    let schemas = openapi.components.get_or_insert_with(Default::default);
    if let Some(RefOr::T(Schema::Object(account))) = schemas.schemas.get_mut("NewAccount") {
        // core::validate::auth_type: CI runners cannot hold an OAuth seat.
        account
            .extensions
            .get_or_insert_with(Default::default)
            .insert(
                "not".into(),
                json!({
                    "description": "action accounts cannot use authType oauth",
                    "required": ["type", "authType"],
                    "properties": {"type": {"const": "action"}, "authType": {"const": "oauth"}},
                }),
            );
    }
}
