//! The frame of `GET /api/openapi.json`: title, auth scheme and tags. The paths and
//! schemas come from the handlers and types themselves (see `routes::api`).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
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
