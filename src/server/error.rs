//! How every failure reaches a client: a status and `{"error": "…"}`.
//!
//! Handlers return [`ApiError`]; the request extractors here turn every kind of bad
//! input (unparsable JSON, a wrong type, an unknown enum value, an oversized body, a
//! bad query string) into a 4xx of this shape, and [`json_errors`] rewrites any
//! remaining plain-text error (an unknown route, a wrong method) the same way.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::openapi::{self, RefOr};
use utoipa::{IntoResponses, ToSchema};

use crate::core::{RuleError, validate};
use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    /// A per-caller limit was reached.
    TooManyRequests(String),
    /// The client (an agent) is too old for this server.
    UpgradeRequired(String),
    /// The database failed; details are logged, never sent.
    Unavailable,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl ApiError {
    /// What is wrong, for the caller to read.
    pub fn message(self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::TooManyRequests(m)
            | ApiError::UpgradeRequired(m) => m,
            ApiError::Unavailable => "the database is unavailable; try again".to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        error_body(status, self.message())
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::Invalid(m) => ApiError::BadRequest(m),
            RuleError::Conflict(m) => ApiError::Conflict(m),
            RuleError::Forbidden(m) => ApiError::Forbidden(m),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            StoreError::Rule(rule) => rule.into(),
            StoreError::Backend(detail) => {
                tracing::error!(%detail, "database error");
                ApiError::Unavailable
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, for a person to read.
    pub error: String,
}

fn error_body(status: StatusCode, error: String) -> Response {
    (status, Json(ErrorBody { error })).into_response()
}

/// Every error an endpoint may answer, for the OpenAPI description: listed once, here,
/// beside the type that produces them.
impl IntoResponses for ApiError {
    fn responses() -> BTreeMap<String, RefOr<openapi::response::Response>> {
        [
            (
                StatusCode::BAD_REQUEST,
                "Malformed JSON, a wrong type, an unknown enum value, an out-of-range number or a bad query string",
            ),
            (StatusCode::UNAUTHORIZED, "No token, or an unknown one"),
            (StatusCode::FORBIDDEN, "A known token that may not do this"),
            (StatusCode::NOT_FOUND, "An unknown id"),
            (
                StatusCode::CONFLICT,
                "A change the resource's current state does not allow",
            ),
            (StatusCode::PAYLOAD_TOO_LARGE, "The request body is too large"),
            (
                StatusCode::UPGRADE_REQUIRED,
                "A buildd agent too old for this server (claims only); the message says which version is needed",
            ),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "A per-caller limit was reached (open event streams)",
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "The database is unavailable; retry",
            ),
        ]
        .into_iter()
        .map(|(status, description)| {
            let content = openapi::ContentBuilder::new()
                .schema(Some(openapi::Ref::from_schema_name("ErrorBody")))
                .build();
            let response = openapi::ResponseBuilder::new()
                .description(description)
                .content("application/json", content)
                .build();
            (status.as_str().to_owned(), RefOr::T(response))
        })
        .collect()
    }
}

/// A JSON request body. Any content type is accepted (people forget the header with
/// curl), and an empty body (or `null`, which the description allows where every
/// field is optional) reads as `{}`, so that a missing field gets a message that
/// names it.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "request body is too large".to_owned()
            } else {
                rejection.body_text()
            };
            error_body(status, message)
        })?;
        let text: &[u8] =
            if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
                b"{}"
            } else {
                &bytes
            };
        // A NUL can only arrive escaped; look closer only when the escape is there.
        if text.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000"))
            && serde_json::from_slice::<serde_json::Value>(text)
                .is_ok_and(|v| validate::has_nul(&v))
        {
            return Err(ApiError::BadRequest(validate::NUL_REFUSED.into()).into_response());
        }
        let error = match serde_json::from_slice(text) {
            Ok(body) => return Ok(Body(body)),
            Err(e) => e,
        };
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(text)
            && let Some(body) = read_whole_floats(value)
        {
            return Ok(Body(body));
        }
        Err(ApiError::BadRequest(format!("invalid JSON body: {error}")).into_response())
    }
}

/// Reads a JSON value already parsed (an MCP tool's arguments) as the API reads a
/// request body: NUL refused, whole floats taken as integers; the error says what
/// does not fit, and where (`priority: invalid type…`).
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    if validate::has_nul(&value) {
        return Err(validate::NUL_REFUSED.into());
    }
    match serde_path_to_error::deserialize(value.clone()) {
        Ok(read) => Ok(read),
        Err(e) => read_whole_floats(value).ok_or_else(|| match e.path().to_string() {
            path if path == "." => e.into_inner().to_string(),
            path => format!("{path}: {}", e.into_inner()),
        }),
    }
}

/// JSON Schema counts 3.0 as an integer, and so do some clients' encoders: `value`
/// read with its whole floats as integers, when that makes it fit.
fn read_whole_floats<T: DeserializeOwned>(mut value: serde_json::Value) -> Option<T> {
    if !integralize(&mut value) {
        return None;
    }
    serde_json::from_value(value).ok()
}

/// Turns every float with no fractional part into an integer; true if any changed.
fn integralize(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                *value = Value::from(f as i64);
                true
            } else {
                false
            }
        }
        Value::Array(items) => items.iter_mut().fold(false, |c, v| integralize(v) | c),
        Value::Object(map) => map.values_mut().fold(false, |c, v| integralize(v) | c),
        _ => false,
    }
}

/// Query-string parameters, with bad ones answered 400 in the usual JSON shape.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Params(v))
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))
    }
}

/// Refuses a path or query string holding an encoded NUL (`%00`) before any handler
/// sees it, for the reason [`validate::NUL_REFUSED`] gives.
pub async fn refuse_nul_in_uri(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let has_nul = |s: &str| s.as_bytes().windows(3).any(|w| w == b"%00");
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        return ApiError::BadRequest(validate::NUL_REFUSED.into()).into_response();
    }
    next.run(request).await
}

/// Gives every error response that is not JSON yet (axum's own 404, 405, 413…) the
/// `{"error": …}` shape.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let mut rewritten = error_body(status, reason);
    if let Some(allow) = response.headers().get(header::ALLOW) {
        rewritten.headers_mut().insert(header::ALLOW, allow.clone());
    }
    rewritten
}

/// The answer to a request whose handler panicked: logged, and a plain 500 for the client.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(%detail, "request handler panicked");
    error_body(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
}
