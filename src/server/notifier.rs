//! Notifications on their way: task events read into stored deliveries, and the
//! deliveries sent, signed, and retried until they are taken or given up
//! ([`crate::core::notify`]). With a GitHub token, the issues tasks were made from
//! are told too, in one comment per issue that is edited as its task moves on.
//!
//! Every server of a cluster runs both halves. The events are read by whichever server
//! holds the cluster's cursor at that moment; a due delivery is taken by one server
//! (`FOR UPDATE SKIP LOCKED`) and hidden from the others while it is tried, so each is
//! sent once, and one whose sender died comes due again when its lease is over.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tracing::{info, warn};

use super::AppState;
use super::github::GithubApi;
use crate::core::events::StoredEvent;
use crate::core::version::VERSION;
use crate::core::{keys, time};
use crate::store::{IssueReport, Outgoing};

/// The longest either half sleeps without looking (events another server queued,
/// deliveries due after a server died).
const LOOK_AGAIN: Duration = Duration::from_secs(30);
/// How soon to read the events again when another server was reading them.
const BUSY_ELSEWHERE: Duration = Duration::from_millis(200);
/// How long the reader waits after a task changes, for the changes that follow it.
const GATHER: Duration = Duration::from_millis(200);
/// How long a delivery being tried is hidden from the other servers.
const LEASE_SECS: i64 = 60;
/// How long a receiver has to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries tried at once.
const BATCH: u32 = 20;

pub async fn run(state: AppState) {
    tokio::join!(queue(state.clone()), send(state));
}

/// Reads task events into deliveries when tasks change, and every [`LOOK_AGAIN`].
async fn queue(state: AppState) {
    let mut events = state.events.subscribe();
    loop {
        let report_issues = state.github.is_some();
        let wait = match state
            .store
            .queue_deliveries(report_issues, time::now())
            .await
        {
            Ok(Some(queued)) => {
                if queued.deliveries > 0 {
                    state.deliveries_queued.notify_one();
                    info!(queued = queued.deliveries, "notifications queued");
                }
                if queued.more {
                    Duration::ZERO
                } else {
                    LOOK_AGAIN
                }
            }
            Ok(None) => BUSY_ELSEWHERE,
            Err(e) => {
                warn!(error = %e, "queueing notifications failed; trying again");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = task_changed(&mut events), if !wait.is_zero() => {
                // Gather what a burst of changes (claims under load) brings into one
                // reading, rather than a transaction per change.
                tokio::time::sleep(GATHER).await;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Returns at the next event about a task (or when events were missed).
async fn task_changed(events: &mut broadcast::Receiver<Arc<StoredEvent>>) {
    loop {
        match events.recv().await {
            Ok(event) if event.name.starts_with("task.") => return,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Sends due deliveries, then sleeps until the next is due or one is queued.
async fn send(state: AppState) {
    let http = match reqwest::Client::builder()
        .user_agent(format!("buildd/{VERSION}"))
        .timeout(SEND_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            warn!(error = %e, "cannot build the HTTP client: no notifications are sent");
            return;
        }
    };
    let key = keys::sealing_key(&state.admin_token);
    loop {
        let lease = chrono::Duration::seconds(LEASE_SECS);
        match state.store.take_deliveries(time::now(), BATCH, lease).await {
            Ok(batch) if !batch.is_empty() => {
                let sends = batch
                    .into_iter()
                    .map(|out| deliver(&state, &http, &key, out));
                futures::future::join_all(sends).await;
                continue;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "taking deliveries failed; trying again"),
        }
        if let Some(github) = &state.github {
            match state
                .store
                .take_issue_reports(time::now(), BATCH, lease)
                .await
            {
                Ok(batch) if !batch.is_empty() => {
                    let sends = batch.into_iter().map(|r| report(&state, github, r));
                    futures::future::join_all(sends).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "taking issue comments failed; trying again"),
            }
        }
        let wait = match state.store.next_delivery_due().await {
            Ok(Some(at)) => (at - time::now()).to_std().unwrap_or(BUSY_ELSEWHERE),
            Ok(None) => LOOK_AGAIN,
            Err(_) => Duration::from_secs(1),
        };
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.deliveries_queued.notified() => {}
            _ = tokio::time::sleep(wait.min(LOOK_AGAIN)) => {}
        }
    }
}

/// One try of one delivery, and its outcome recorded.
async fn deliver(state: &AppState, http: &reqwest::Client, key: &[u8; 32], out: Outgoing) {
    let id = out.delivery.id.clone();
    let attempt = try_once(http, key, &out).await;
    match state.store.record_attempt(&id, attempt, time::now()).await {
        Ok(delivery) => info!(
            delivery = %id,
            webhook = %delivery.webhook_id,
            state = delivery.state.as_str(),
            attempts = delivery.attempts,
            "notification tried"
        ),
        Err(e) => warn!(delivery = %id, error = %e, "cannot record a notification's try"),
    }
}

/// One try of one issue's comment, and its outcome recorded.
async fn report(state: &AppState, github: &GithubApi, report: IssueReport) {
    let sent = github
        .comment_on_issue(
            &report.repo,
            report.issue_number,
            report.comment_id,
            &report.body,
        )
        .await;
    match &sent {
        Ok(comment) => {
            info!(repo = %report.repo, issue = report.issue_number, comment, "issue comment sent")
        }
        Err(e) => {
            warn!(repo = %report.repo, issue = report.issue_number, error = %e, "issue comment failed")
        }
    }
    if let Err(e) = state
        .store
        .record_issue_report(&report, sent, time::now())
        .await
    {
        warn!(error = %e, "cannot record an issue comment's try");
    }
}

async fn try_once(http: &reqwest::Client, key: &[u8; 32], out: &Outgoing) -> Result<u16, String> {
    let mut request = http
        .post(&out.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-buildd-event", out.delivery.event.as_str())
        .header("x-buildd-delivery", &out.delivery.id);
    if let Some(sealed) = &out.sealed_secret {
        let secret = keys::open(key, sealed).ok_or(
            "the webhook's secret cannot be opened: this server's admin token is not the one \
             it was sealed with",
        )?;
        request = request.header(
            "x-buildd-signature-256",
            keys::signature(&secret, out.body.as_bytes()),
        );
    }
    match request.body(out.body.clone()).send().await {
        Ok(answer) => Ok(answer.status().as_u16()),
        Err(e) if e.is_timeout() => Err(format!(
            "the receiver did not answer within {} s",
            SEND_TIMEOUT.as_secs()
        )),
        Err(e) => Err(format!("cannot reach the receiver: {e}")),
    }
}
