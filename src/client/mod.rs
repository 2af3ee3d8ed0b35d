//! The typed HTTP client for buildd's API, shared by the terminal client and the agent.
//!
//! Every method is one endpoint and returns the API's JSON as it came, so `--json`
//! can print it untouched; [`decode`] turns it into the core's types for display.
//! Every failure is a [`ClientError`] whose message fits on one line.

mod events;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use crate::core::backoff::backoff;
pub use events::{EventStream, StreamedEvent};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the buildd server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server refused the request; `message` is its `{"error": …}`.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again later may work: the server was unreachable, overloaded or
    /// failing, rather than refusing the request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            ClientError::Protocol(_) => false,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Why a request failed when the server took too long.
fn silent(limit: Duration) -> String {
    format!("it did not answer within {} s", limit.as_secs())
}

/// Turns API JSON into one of the core's types.
pub fn decode<T: DeserializeOwned>(value: &Value) -> Result<T> {
    T::deserialize(value).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// How long a connection to the server may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long any one request may take, answer included, before the server counts as
/// not answering. A claim that waits for work gets its wait on top.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// Query-string parameters, leaving out those not given.
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            query.append_pair(k, v);
        }
    }
    match query.finish() {
        q if q.is_empty() => q,
        q => format!("?{q}"),
    }
}

/// Percent-encodes an id for a path segment: everything but the unreserved
/// characters of RFC 3986.
fn encode(value: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, RESERVED).to_string()
}

impl Client {
    pub fn new(server: &str, token: &str) -> Result<Self> {
        // No client-wide timeout: the event stream is meant to stay open. Every other
        // request gets [`REQUEST_TIMEOUT`] in `call`, the stream an idle timeout.
        let http = reqwest::Client::builder()
            .user_agent(crate::core::version::USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Client {
            base: server.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
        })
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: &reqwest::Error, limit: Duration) -> ClientError {
        let reason = if e.is_timeout() {
            silent(limit)
        } else if e.is_connect() {
            "connection refused or host unknown".to_owned()
        } else {
            e.to_string()
        };
        ClientError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }

    /// Sends one request and returns the JSON answer (`null` for an empty one).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        self.call_within(method, path, body, REQUEST_TIMEOUT).await
    }

    /// [`Client::call`], allowing the request `limit` to complete.
    async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        limit: Duration,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(limit);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.answer(request, limit).await
    }

    /// Sends `request` and reads its JSON answer (`null` for an empty one).
    async fn answer(&self, request: reqwest::RequestBuilder, limit: Duration) -> Result<Value> {
        let response = request
            .send()
            .await
            .map_err(|e| self.unreachable(&e, limit))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.unreachable(&e, limit))?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            match serde_json::from_str(&text) {
                Ok(value) => value,
                // A proxy's error page in front of the server: keep the status, so
                // that callers can tell a failing server from a refused request.
                Err(_) if !status.is_success() => Value::Null,
                Err(_) => {
                    return Err(ClientError::Protocol(format!(
                        "HTTP {status} with a body that is not JSON"
                    )));
                }
            }
        };
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    pub async fn me(&self) -> Result<Value> {
        self.call(Method::GET, "/api/me", None).await
    }

    pub async fn create_workspace(
        &self,
        name: &str,
        repo_url: Option<&str>,
        default_branch: Option<&str>,
    ) -> Result<Value> {
        let body = json!({ "name": name, "repoUrl": repo_url, "defaultBranch": default_branch });
        self.call(Method::POST, "/api/workspaces", Some(body)).await
    }

    pub async fn list_workspaces(&self) -> Result<Value> {
        self.call(Method::GET, "/api/workspaces", None).await
    }

    pub async fn get_workspace(&self, id: &str) -> Result<Value> {
        self.call(
            Method::GET,
            &format!("/api/workspaces/{}", encode(id)),
            None,
        )
        .await
    }

    pub async fn create_account(&self, body: Value) -> Result<Value> {
        self.call(Method::POST, "/api/accounts", Some(body)).await
    }

    pub async fn list_accounts(&self) -> Result<Value> {
        self.call(Method::GET, "/api/accounts", None).await
    }

    /// A new key for the account; the old one stops working.
    pub async fn rotate_key(&self, account_id: &str) -> Result<Value> {
        self.call(
            Method::POST,
            &format!("/api/accounts/{}/rotate-key", encode(account_id)),
            None,
        )
        .await
    }

    pub async fn grant(
        &self,
        account_id: &str,
        workspace_id: &str,
        can_claim: bool,
        can_create: bool,
    ) -> Result<Value> {
        let body =
            json!({ "workspaceId": workspace_id, "canClaim": can_claim, "canCreate": can_create });
        self.call(
            Method::POST,
            &format!("/api/accounts/{}/workspaces", encode(account_id)),
            Some(body),
        )
        .await
    }

    pub async fn create_task(&self, body: Value) -> Result<Value> {
        self.call(Method::POST, "/api/tasks", Some(body)).await
    }

    pub async fn list_tasks(
        &self,
        workspace_id: Option<&str>,
        status: Option<&str>,
    ) -> Result<Value> {
        let q = query(&[("workspaceId", workspace_id), ("status", status)]);
        self.call(Method::GET, &format!("/api/tasks{q}"), None)
            .await
    }

    pub async fn get_task(&self, id: &str) -> Result<Value> {
        self.call(Method::GET, &format!("/api/tasks/{}", encode(id)), None)
            .await
    }

    pub async fn cancel_task(&self, id: &str) -> Result<Value> {
        self.call(
            Method::POST,
            &format!("/api/tasks/{}/cancel", encode(id)),
            Some(json!({})),
        )
        .await
    }

    pub async fn reply_task(&self, id: &str, message: &str) -> Result<Value> {
        let body = json!({ "message": message });
        self.call(
            Method::POST,
            &format!("/api/tasks/{}/reply", encode(id)),
            Some(body),
        )
        .await
    }

    pub async fn list_workers(&self, task_id: Option<&str>) -> Result<Value> {
        let q = query(&[("taskId", task_id)]);
        self.call(Method::GET, &format!("/api/workers{q}"), None)
            .await
    }

    /// `POST /api/workers/claim`: up to `max_tasks` tasks, waiting up to `wait` seconds
    /// for one to fit.
    pub async fn claim(
        &self,
        max_tasks: u32,
        workspace_id: Option<&str>,
        wait: u64,
    ) -> Result<Value> {
        let body = json!({ "maxTasks": max_tasks, "workspaceId": workspace_id, "wait": wait });
        let limit = REQUEST_TIMEOUT + Duration::from_secs(wait);
        self.call_within(Method::POST, "/api/workers/claim", Some(body), limit)
            .await
    }

    pub async fn get_worker(&self, id: &str) -> Result<Value> {
        self.call(Method::GET, &format!("/api/workers/{}", encode(id)), None)
            .await
    }

    /// `PATCH /api/workers/:id`: progress, status and results of a run.
    pub async fn update_worker(&self, id: &str, update: &Value) -> Result<Value> {
        self.call(
            Method::PATCH,
            &format!("/api/workers/{}", encode(id)),
            Some(update.clone()),
        )
        .await
    }

    /// `POST /api/workers/:id/heartbeat`: `{"cancel": bool, "reply"?: text}`.
    pub async fn heartbeat(&self, id: &str) -> Result<Value> {
        self.call(
            Method::POST,
            &format!("/api/workers/{}/heartbeat", encode(id)),
            Some(json!({})),
        )
        .await
    }

    /// `POST /api/workers/:id/messages` with a body already written out (the agent
    /// writes its batches once, from messages kept as JSON text).
    pub async fn append_messages(&self, worker_id: &str, body: String) -> Result<Value> {
        let path = format!("/api/workers/{}/messages", encode(worker_id));
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(REQUEST_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.answer(request, REQUEST_TIMEOUT).await
    }

    pub async fn messages(&self, worker_id: &str, after: i64) -> Result<Value> {
        let path = format!("/api/workers/{}/messages?after={after}", encode(worker_id));
        self.call(Method::GET, &path, None).await
    }

    /// Follows `GET /api/events`, resuming after `last_event_id` when given, and
    /// reconnecting by itself when the connection drops.
    pub async fn events(
        &self,
        workspace_id: Option<&str>,
        last_event_id: Option<i64>,
    ) -> Result<EventStream> {
        EventStream::open(self.clone(), workspace_id.map(str::to_owned), last_event_id).await
    }

    /// One connection to the event stream.
    async fn open_events(
        &self,
        workspace_id: Option<&str>,
        last_event_id: Option<i64>,
    ) -> Result<reqwest::Response> {
        let q = query(&[("workspaceId", workspace_id)]);
        let mut request = self
            .http
            .get(format!("{}/api/events{q}", self.base))
            .bearer_auth(&self.token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        // Only the answer's head is bounded: the body streams for as long as it lasts,
        // watched by the stream's idle timeout.
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, request.send()).await {
            Ok(sent) => sent.map_err(|e| self.unreachable(&e, REQUEST_TIMEOUT))?,
            Err(_) => {
                return Err(ClientError::Unreachable {
                    url: self.base.clone(),
                    reason: silent(REQUEST_TIMEOUT),
                });
            }
        };
        if response.status() != StatusCode::OK {
            let status = response.status().as_u16();
            let value: Value = response.json().await.unwrap_or(Value::Null);
            let message = value["error"]
                .as_str()
                .unwrap_or("the event stream was refused")
                .to_owned();
            return Err(ClientError::Api { status, message });
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_path_segments_are_encoded() {
        assert_eq!(query(&[("a", Some("x y&z")), ("b", None)]), "?a=x+y%26z");
        assert_eq!(query(&[("b", None)]), "");
        assert_eq!(encode("task-1.a_b~"), "task-1.a_b~");
        assert_eq!(encode("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
    }
}
