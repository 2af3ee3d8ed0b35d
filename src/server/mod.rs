//! `buildd serve`: the HTTP API over a [`Store`].
//!
//! Handlers are thin: they authenticate ([`auth`]), check the caller's grants, and
//! call one store method. What a change does is decided in [`crate::core`].

mod auth;
mod dashboard;
mod error;
pub mod events;
pub mod github;
mod mcp;
pub mod metrics;
mod notifier;
mod openapi;
pub mod presence;
mod request_log;
pub mod retention;
mod routes;
mod scheduler;
mod sweeper;
mod waiters;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;

use crate::store::Store;
use events::EventHub;

/// The largest request body accepted; bigger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub admin_token: Arc<str>,
    pub lease_ttl: Duration,
    /// Every event of the cluster as it is committed: feeds `GET /api/events` and
    /// wakes waiting claims when a task is created or requeued on any server.
    pub events: Arc<EventHub>,
    /// Woken when a change that writes no event (a new grant) may let a waiting claim
    /// succeed: [`waiters::run`] then wakes them all.
    pub new_work: Arc<Notify>,
    /// This server's waiting claims, woken one per task that became claimable.
    pub waiters: Arc<waiters::Waiters>,
    /// Woken when a schedule is made or resumed here, so the scheduler looks again.
    pub schedules_changed: Arc<Notify>,
    /// Woken when notifications were queued, so the sender looks again.
    pub deliveries_queued: Arc<Notify>,
    /// Cancelled at shutdown: waiting claims return and the sweeper stops.
    pub shutdown: CancellationToken,
    /// Wakes GitHub Actions workflows for action tasks, and reads what webhooks leave
    /// out, when a token was given.
    pub github: Option<Arc<github::GithubApi>>,
    /// The secret GitHub signs its webhooks with; `POST /api/github/webhook` is off
    /// without one.
    pub github_webhook_secret: Option<Arc<str>>,
    pub metrics: Arc<metrics::Metrics>,
    /// How long events and finished workers' output are kept.
    pub retention: retention::Retention,
    /// The agents whose event streams this server holds.
    pub presence: Arc<presence::Presence>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let mcp = mcp::routes(state.clone());
    request_log::layer(routes::routes().merge(dashboard::routes()).merge(mcp))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(error::refuse_nul_in_uri))
        // A bug must cost one request a 500, never the connection or the process.
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(axum::middleware::map_response(name_version))
        .with_state(state)
}

/// Every answer says which version of buildd gave it.
async fn name_version(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        "x-buildd-version",
        axum::http::HeaderValue::from_static(crate::core::version::VERSION),
    );
    response
}

impl AppState {
    /// What follows a new task, however it was made: an action task wakes the GitHub
    /// workflows that run it.
    pub fn task_created(&self, task: &crate::core::model::Task) {
        if let Some(github) = &self.github {
            github.task_created(self.store.clone(), task.clone());
        }
    }
}

/// Serves on `listener` until `state.shutdown` is cancelled, then stops accepting,
/// lets in-flight requests finish and returns.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let sweeper = tokio::spawn(sweeper::run(state.clone()));
    let scheduler = tokio::spawn(scheduler::run(state.clone()));
    let notifier = tokio::spawn(notifier::run(state.clone()));
    let retention = tokio::spawn(retention::run(state.clone()));
    let presence = tokio::spawn(presence::run(state.clone()));
    let waker = tokio::spawn(waiters::run(state.clone()));
    let shutdown = state.shutdown.clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    sweeper.abort();
    scheduler.abort();
    notifier.abort();
    retention.abort();
    presence.abort();
    waker.abort();
    served
}
