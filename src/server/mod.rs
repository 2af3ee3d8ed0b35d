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
    /// What follows a new task, however it was made: it is offered to a waiter here
    /// at once, and an action task wakes the GitHub workflows that run it.
    pub fn task_created(&self, task: &crate::core::model::Task) {
        self.waiters.offer_created(task.clone());
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
    let served = accept(listener, router(state), shutdown).await;
    sweeper.abort();
    scheduler.abort();
    notifier.abort();
    retention.abort();
    presence.abort();
    waker.abort();
    served
}

/// A connection's HTTP/1 read buffer at most (hyper's smallest). Thousands of agents
/// hold an event stream open, each on its own connection, and hyper's read buffer
/// otherwise grows to 16 KiB on each and stays; request heads larger than this are
/// refused with 431, bodies are read in pieces of this size.
const MAX_READ_BUFFER: usize = 8192;

/// Accepts connections and serves `app` on each (HTTP/1, or HTTP/2 by prior knowledge)
/// until `shutdown`; then stops accepting and waits for open connections to finish.
async fn accept(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(MAX_READ_BUFFER);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: wait a moment and go on, as axum::serve does.
                    tracing::warn!(error = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
