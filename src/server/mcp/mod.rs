//! `/mcp`: buildd as a Model Context Protocol server, on the official Rust SDK
//! (`rmcp`) and its Streamable HTTP transport.
//!
//! Callers are told apart by their bearer token, as on the HTTP API:
//! - the admin token or an account key: a person's own agent session (Claude Code,
//!   Claude Desktop, `buildd mcp`) queuing and following work, bound by the grants
//!   that bind the API;
//! - a worker token, issued by the claim: a run under `buildd agent`, which may call
//!   its own tools only ([`tools::RUN`]), until its worker ends.
//!
//! Every tool calls the API's own handler for the same request with the caller (see
//! [`tools`]), so a tool may do what that request may, answers what it would and
//! fails where it would; only a failure reaches the model as a tool error to read
//! rather than as a status. No session is kept between requests (each POST is
//! answered on its own), so any server of a cluster can answer any request.

mod tools;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientJsonRpcMessage, ErrorCode, ErrorData,
    Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler};

use super::auth::{Bearer, Caller, bearer_token, identify, trigger_only};
use super::error::{ApiError, ErrorBody};
use super::{AppState, MAX_BODY_BYTES};
use crate::core::model::{Account, Worker};
use crate::core::version::VERSION;

/// Who is calling a tool.
#[derive(Debug, Clone)]
pub enum McpCaller {
    /// The admin, or an account: people's tools.
    Person(Caller),
    /// A run, by its worker token: the run's own tools, acting as the worker's account.
    Run {
        worker: Box<Worker>,
        account: Account,
    },
}

/// The `/mcp` route.
pub fn routes(state: AppState) -> Router<AppState> {
    let config = StreamableHttpServerConfig::default()
        // Each POST is answered on its own, by whichever server gets it.
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        // The SDK's default accepts only loopback `Host`s, against DNS rebinding of
        // servers that trust whoever reaches them. buildd trusts only bearer tokens,
        // which a rebound page does not have, and it is served under any name.
        .disable_allowed_hosts()
        .with_cancellation_token(state.shutdown.child_token());
    let tools = Tools {
        state: state.clone(),
    };
    let service = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn(refuse_malformed))
        .layer(axum::middleware::from_fn_with_state(state, authenticate))
}

/// 401 without a token that stands for someone (with `WWW-Authenticate`, as MCP's
/// HTTP authorization has it); otherwise the caller goes with the request to the
/// tools.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    match caller_of(&state, request.headers()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            let mut refused = e.into_response();
            if refused.status() == StatusCode::UNAUTHORIZED {
                refused.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"buildd\""),
                );
            }
            refused
        }
    }
}

async fn caller_of(state: &AppState, headers: &HeaderMap) -> Result<McpCaller, ApiError> {
    match identify(state, bearer_token(headers)?).await? {
        Bearer::Caller(caller) => Ok(McpCaller::Person(caller)),
        Bearer::Worker(worker) => {
            let account = state
                .store
                .get_account(&worker.account_id)
                .await?
                .ok_or_else(|| ApiError::Unauthorized("unknown token".into()))?;
            Ok(McpCaller::Run { worker, account })
        }
        Bearer::Trigger(trigger) => Err(trigger_only(&trigger)),
    }
}

/// A POST whose body is not JSON, or not a JSON-RPC message, gets the protocol's own
/// error (`-32700` parse error, `-32600` invalid request, with a null id) in a 400:
/// the SDK would answer it with a bare status.
async fn refuse_malformed(request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let error = "request body is too large".to_owned();
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(ErrorBody { error }),
            )
                .into_response();
        }
    };
    let refused = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Err(e) => Some(ErrorData::new(
            ErrorCode::PARSE_ERROR,
            format!("Parse error: the body is not JSON ({e})"),
            None,
        )),
        Ok(value) => serde_json::from_value::<ClientJsonRpcMessage>(value)
            .err()
            .map(|e| {
                ErrorData::new(
                    ErrorCode::INVALID_REQUEST,
                    format!("Invalid Request: not a JSON-RPC 2.0 message MCP knows ({e})"),
                    None,
                )
            }),
    };
    match refused {
        Some(error) => {
            let body = serde_json::json!({ "jsonrpc": "2.0", "id": null, "error": error });
            (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
        }
        None => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

/// The MCP server: one per request (the transport makes one for each), holding only
/// the server's state.
#[derive(Clone)]
struct Tools {
    state: AppState,
}

impl Tools {
    /// The caller [`authenticate`] put on the request.
    fn caller(context: &RequestContext<RoleServer>) -> Result<McpCaller, ErrorData> {
        context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<McpCaller>())
            .cloned()
            .ok_or_else(|| ErrorData::internal_error("the request carries no caller", None))
    }
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("buildd", VERSION))
            .with_instructions(tools::INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = Self::caller(&context)?;
        Ok(ListToolsResult::with_all_items(tools::listed(&caller)))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = Self::caller(&context)?;
        let arguments = request.arguments.unwrap_or_default();
        tools::call(&self.state, &caller, &request.name, arguments)
            .await
            .map(Into::into)
    }
}
