//! The typed HTTP client for buildd's API, shared by the terminal client and the agent.
//!
//! Every method is one endpoint, taking and returning the [`crate::api`] types the
//! server's handlers use; `--json` prints their serialisation. Every failure is a
//! [`ClientError`] whose message fits on one line.

mod events;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{
    Account, AccountList, AccountUsage, Agent, AgentList, AgentReport, Appended, ApproveBody,
    Approved, ClaimAnswer, ClaimBody, CreatedAccount, Diff, Grant, HeartbeatAnswer, Me,
    MessageBody, MessageList, NewAccount, NewDiff, NewGrant, NewSchedule, NewTask, NewWorker,
    NewWorkspace, ReviewBody, Reviewed, ReviseBody, Schedule, ScheduleList, Task, TaskCounts,
    TaskDetail, TaskList, TaskQuery, Worker, WorkerList, WorkerUpdate, Workspace, WorkspaceList,
};

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

/// The body of every refusal.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// `{}`, for the actions that take no fields.
#[derive(Serialize)]
struct NoBody {}

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

    /// The server's MCP endpoint.
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base)
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

    /// `GET path`, read as a `T`.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let request = self.request(Method::GET, path, REQUEST_TIMEOUT);
        self.answer(request, REQUEST_TIMEOUT).await
    }

    /// `method path` with `body` as JSON, the answer read as a `T`.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T> {
        self.send_within(method, path, body, REQUEST_TIMEOUT).await
    }

    /// [`Client::send`], allowing the request `limit` to complete.
    async fn send_within<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &(impl Serialize + ?Sized),
        limit: Duration,
    ) -> Result<T> {
        let request = self.request(method, path, limit).json(body);
        self.answer(request, limit).await
    }

    fn request(&self, method: Method, path: &str, limit: Duration) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(limit)
    }

    /// Sends `request` and reads its JSON answer as a `T`; a refusal becomes
    /// [`ClientError::Api`] with the server's `{"error": …}`.
    async fn answer<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        limit: Duration,
    ) -> Result<T> {
        let response = request
            .send()
            .await
            .map_err(|e| self.unreachable(&e, limit))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.unreachable(&e, limit))?;
        if status.is_success() {
            // A 204 has no body: it reads as `null`, which `()` takes.
            let text = if text.is_empty() { "null" } else { &text };
            return serde_json::from_str(text).map_err(|e| {
                ClientError::Protocol(format!("HTTP {status} with an unexpected body: {e}"))
            });
        }
        // A proxy's error page in front of the server is no `{"error"}`: keep the
        // status, so that callers can tell a failing server from a refused request.
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|body| body.error)
            .unwrap_or_else(|_| status.canonical_reason().unwrap_or("error").to_owned());
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    /// Records what a run changed (`PUT /api/workers/:id/diff`).
    pub async fn put_diff(&self, worker_id: &str, diff: &NewDiff) -> Result<Diff> {
        let path = format!("/api/workers/{}/diff", encode(worker_id));
        self.send(Method::PUT, &path, diff).await
    }

    pub async fn get_diff(&self, worker_id: &str) -> Result<Diff> {
        self.get(&format!("/api/workers/{}/diff", encode(worker_id)))
            .await
    }

    /// Sends a review of a worker's change; a follow-up addresses it.
    pub async fn review(&self, worker_id: &str, review: &ReviewBody) -> Result<Reviewed> {
        let path = format!("/api/workers/{}/review", encode(worker_id));
        self.send(Method::POST, &path, review).await
    }

    pub async fn get_account(&self, id: &str) -> Result<Account> {
        self.get(&format!("/api/accounts/{}", encode(id))).await
    }

    pub async fn me(&self) -> Result<Me> {
        self.get("/api/me").await
    }

    pub async fn create_workspace(&self, body: &NewWorkspace) -> Result<Workspace> {
        self.send(Method::POST, "/api/workspaces", body).await
    }

    pub async fn list_workspaces(&self) -> Result<WorkspaceList> {
        self.get("/api/workspaces").await
    }

    pub async fn get_workspace(&self, id: &str) -> Result<Workspace> {
        self.get(&format!("/api/workspaces/{}", encode(id))).await
    }

    pub async fn create_account(&self, body: &NewAccount) -> Result<CreatedAccount> {
        self.send(Method::POST, "/api/accounts", body).await
    }

    /// One page of accounts: the first, or the one `cursor` starts.
    pub async fn list_accounts(&self, cursor: Option<&str>) -> Result<AccountList> {
        let q = query(&[("limit", Some("1000")), ("cursor", cursor)]);
        self.get(&format!("/api/accounts{q}")).await
    }

    pub async fn account_usage(&self, account_id: &str) -> Result<AccountUsage> {
        let path = format!("/api/accounts/{}/usage", encode(account_id));
        self.get(&path).await
    }

    /// A new key for the account; the old one stops working.
    pub async fn rotate_key(&self, account_id: &str) -> Result<CreatedAccount> {
        let path = format!("/api/accounts/{}/rotate-key", encode(account_id));
        self.send(Method::POST, &path, &NoBody {}).await
    }

    pub async fn grant(&self, account_id: &str, grant: &NewGrant) -> Result<Grant> {
        let path = format!("/api/accounts/{}/workspaces", encode(account_id));
        self.send(Method::POST, &path, grant).await
    }

    pub async fn create_task(&self, body: &NewTask) -> Result<Task> {
        self.send(Method::POST, "/api/tasks", body).await
    }

    /// One page of the tasks `filter` asks for.
    pub async fn list_tasks(&self, filter: &TaskQuery) -> Result<TaskList> {
        let limit = filter.limit.map(|n| n.to_string());
        let q = query(&[
            ("workspaceId", filter.workspace_id.as_deref()),
            ("status", filter.status.map(|s| s.as_str())),
            ("sourceId", filter.source_id.as_deref()),
            ("q", filter.q.as_deref()),
            ("limit", limit.as_deref()),
            ("cursor", filter.cursor.as_deref()),
        ]);
        self.get(&format!("/api/tasks{q}")).await
    }

    pub async fn create_schedule(&self, body: &NewSchedule) -> Result<Schedule> {
        self.send(Method::POST, "/api/schedules", body).await
    }

    pub async fn list_schedules(&self, workspace_id: Option<&str>) -> Result<ScheduleList> {
        let q = query(&[("workspaceId", workspace_id)]);
        self.get(&format!("/api/schedules{q}")).await
    }

    /// Pauses the schedule (`pause`) or resumes it.
    pub async fn pause_schedule(&self, id: &str, pause: bool) -> Result<Schedule> {
        let verb = if pause { "pause" } else { "resume" };
        let path = format!("/api/schedules/{}/{verb}", encode(id));
        self.send(Method::POST, &path, &serde_json::json!({})).await
    }

    pub async fn delete_schedule(&self, id: &str) -> Result<()> {
        let path = format!("/api/schedules/{}", encode(id));
        self.answer(
            self.request(Method::DELETE, &path, REQUEST_TIMEOUT),
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn task_counts(&self, workspace_id: Option<&str>) -> Result<TaskCounts> {
        let q = query(&[("workspaceId", workspace_id)]);
        self.get(&format!("/api/tasks/counts{q}")).await
    }

    pub async fn get_task(&self, id: &str) -> Result<TaskDetail> {
        self.get(&format!("/api/tasks/{}", encode(id))).await
    }

    pub async fn retry_task(&self, id: &str) -> Result<Task> {
        let path = format!("/api/tasks/{}/retry", encode(id));
        self.send(Method::POST, &path, &NoBody {}).await
    }

    pub async fn approve_task(&self, id: &str, body: &ApproveBody) -> Result<Approved> {
        let path = format!("/api/tasks/{}/approve", encode(id));
        self.send(Method::POST, &path, body).await
    }

    pub async fn revise_task(&self, id: &str, feedback: &str) -> Result<Task> {
        let path = format!("/api/tasks/{}/revise", encode(id));
        let body = ReviseBody {
            feedback: feedback.to_owned(),
        };
        self.send(Method::POST, &path, &body).await
    }

    pub async fn reject_task(&self, id: &str) -> Result<Task> {
        let path = format!("/api/tasks/{}/reject", encode(id));
        self.send(Method::POST, &path, &NoBody {}).await
    }

    pub async fn followup_task(&self, id: &str, message: &str) -> Result<Task> {
        let path = format!("/api/tasks/{}/followup", encode(id));
        let body = MessageBody {
            message: message.to_owned(),
        };
        self.send(Method::POST, &path, &body).await
    }

    pub async fn instruct_worker(&self, id: &str, message: &str) -> Result<Worker> {
        let path = format!("/api/workers/{}/instruct", encode(id));
        let body = MessageBody {
            message: message.to_owned(),
        };
        self.send(Method::POST, &path, &body).await
    }

    /// `POST /api/workers`: claims the one task `task_id`.
    pub async fn claim_task(&self, task_id: &str) -> Result<ClaimAnswer> {
        let body = NewWorker {
            task_id: task_id.to_owned(),
        };
        self.send(Method::POST, "/api/workers", &body).await
    }

    pub async fn cancel_task(&self, id: &str) -> Result<Task> {
        let path = format!("/api/tasks/{}/cancel", encode(id));
        self.send(Method::POST, &path, &NoBody {}).await
    }

    pub async fn reply_task(&self, id: &str, message: &str) -> Result<Task> {
        let path = format!("/api/tasks/{}/reply", encode(id));
        let body = MessageBody {
            message: message.to_owned(),
        };
        self.send(Method::POST, &path, &body).await
    }

    pub async fn list_workers(&self, task_id: Option<&str>) -> Result<WorkerList> {
        let q = query(&[("taskId", task_id)]);
        self.get(&format!("/api/workers{q}")).await
    }

    /// `POST /api/workers/claim`; a claim that waits gets its `wait` on top of the
    /// request timeout.
    pub async fn claim(&self, body: &ClaimBody) -> Result<ClaimAnswer> {
        let limit = REQUEST_TIMEOUT + Duration::from_secs(body.wait.unwrap_or(0));
        self.send_within(Method::POST, "/api/workers/claim", body, limit)
            .await
    }

    pub async fn get_worker(&self, id: &str) -> Result<Worker> {
        self.get(&format!("/api/workers/{}", encode(id))).await
    }

    /// `PATCH /api/workers/:id`: progress, status and results of a run.
    pub async fn update_worker(&self, id: &str, update: &WorkerUpdate) -> Result<Worker> {
        let path = format!("/api/workers/{}", encode(id));
        self.send(Method::PATCH, &path, update).await
    }

    /// `POST /api/workers/:id/heartbeat`: what to do with the run.
    pub async fn heartbeat(&self, id: &str) -> Result<HeartbeatAnswer> {
        let path = format!("/api/workers/{}/heartbeat", encode(id));
        self.send(Method::POST, &path, &NoBody {}).await
    }

    /// `POST /api/workers/:id/messages` with a [`MessagesBody`] already written out
    /// (the agent writes its batches once, from messages kept as JSON text).
    pub async fn append_messages(&self, worker_id: &str, body: String) -> Result<Appended> {
        let path = format!("/api/workers/{}/messages", encode(worker_id));
        let request = self
            .request(Method::POST, &path, REQUEST_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.answer(request, REQUEST_TIMEOUT).await
    }

    pub async fn messages(&self, worker_id: &str, after: i64) -> Result<MessageList> {
        let path = format!("/api/workers/{}/messages?after={after}", encode(worker_id));
        self.get(&path).await
    }

    /// Follows `GET /api/events`, resuming after `last_event_id` when given, and
    /// reconnecting by itself when the connection drops.
    pub async fn events(
        &self,
        workspace_id: Option<&str>,
        last_event_id: Option<i64>,
    ) -> Result<EventStream> {
        EventStream::open(
            self.clone(),
            workspace_id.map(str::to_owned),
            None,
            last_event_id,
        )
        .await
    }

    /// Follows `GET /api/events` as the agent `agent_id`, which keeps it listed in
    /// `GET /api/agents` while the stream is open. `connected` is notified at each
    /// (re)connection: the moment for the agent to report itself again.
    pub async fn agent_events(
        &self,
        workspace_id: Option<&str>,
        agent_id: &str,
        runners: Option<&[String]>,
        connected: std::sync::Arc<tokio::sync::Notify>,
    ) -> Result<EventStream> {
        let agent = events::AgentFollowing {
            id: agent_id.to_owned(),
            runners: runners.map(<[String]>::to_vec),
            connected,
        };
        EventStream::open(
            self.clone(),
            workspace_id.map(str::to_owned),
            Some(agent),
            None,
        )
        .await
    }

    /// `PUT /api/agents/:id`: the agent's account of itself.
    pub async fn report_agent(&self, id: &str, report: &AgentReport) -> Result<Agent> {
        let path = format!("/api/agents/{}", encode(id));
        self.send(Method::PUT, &path, report).await
    }

    pub async fn list_agents(&self) -> Result<AgentList> {
        self.get("/api/agents").await
    }

    /// `POST /api/workers/:id/pause` or `…/start`.
    pub async fn pause_worker(&self, id: &str, pause: bool) -> Result<Worker> {
        let verb = if pause { "pause" } else { "start" };
        let path = format!("/api/workers/{}/{verb}", encode(id));
        self.send(Method::POST, &path, &NoBody {}).await
    }

    /// One connection to the event stream.
    async fn open_events(
        &self,
        workspace_id: Option<&str>,
        agent: Option<&events::AgentFollowing>,
        last_event_id: Option<i64>,
    ) -> Result<reqwest::Response> {
        let offered = agent.and_then(|a| a.runners.as_ref());
        let runners = offered.map(|r| r.join(","));
        let q = query(&[
            ("workspaceId", workspace_id),
            ("agentId", agent.map(|a| a.id.as_str())),
            ("offers", offered.map(|_| "true")),
            ("runners", runners.as_deref().filter(|r| !r.is_empty())),
        ]);
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
            let message = response
                .json::<ErrorBody>()
                .await
                .map_or_else(|_| "the event stream was refused".to_owned(), |b| b.error);
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
