//! The spool: a run's final report, kept on disk until the server has it.
//!
//! A report is written to the spool before it is sent, and removed once the server
//! has taken it (or refused it for good). So a result finished while the server is
//! down, or while the agent is being stopped, is delivered when the server is back,
//! by this agent process or the next one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::output::{self, Outbox};
use crate::api::{NewDiff, WorkerStatus, WorkerUpdate};
use crate::client::{Client, ClientError, backoff};

/// A run's last words: the messages not yet sent, and the final worker update.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalReport {
    pub worker_id: String,
    pub messages: Outbox,
    /// What the run changed, until the server has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<NewDiff>,
    pub update: WorkerUpdate,
    /// The server has the update; only messages are left to send.
    #[serde(default)]
    pub update_sent: bool,
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The server refused it for good (the worker was expired meanwhile, say).
    Refused,
    /// The server could not be reached; the report waits in the spool.
    Spooled,
}

pub struct Spool {
    dir: PathBuf,
    /// Wakes the background delivery when a report was left in the spool.
    spooled: Notify,
}

impl Spool {
    pub fn open(dir: PathBuf) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create the spool {}: {e}", dir.display()))?;
        Ok(Arc::new(Spool {
            dir,
            spooled: Notify::new(),
        }))
    }

    fn path_of(&self, worker_id: &str) -> PathBuf {
        self.dir.join(format!("{worker_id}.json"))
    }

    /// Keeps `report` on disk, then sends it once. With a `limit` (an agent shutting
    /// down does not wait out a silent or busy server), the messages get that long,
    /// then the update gets that long, and what is left waits on disk: the result
    /// first, a long backlog of output after it. A report the server could not take
    /// now is left to [`Spool::run`] or the next agent process.
    pub async fn submit(
        &self,
        client: &Client,
        report: FinalReport,
        limit: Option<Duration>,
    ) -> Delivery {
        let path = self.path_of(&report.worker_id);
        if let Err(e) = write_atomically(&path, &report) {
            warn!(worker = %report.worker_id, error = %e, "cannot write the result to the spool; sending it without a copy on disk");
        }
        let delivery = self.send(client, &path, report, limit).await;
        if delivery == Delivery::Spooled {
            self.spooled.notify_one();
        }
        delivery
    }

    /// How many reports wait for the server.
    pub fn pending(&self) -> usize {
        self.files().len()
    }

    fn files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
    }

    /// Delivers what waits in the spool (left by an earlier agent process, or by this
    /// one while the server was away), retrying with backoff until it is all sent.
    pub async fn run(self: Arc<Self>, client: Client) {
        let mut attempt = 0;
        loop {
            let mut waiting = false;
            for path in self.files() {
                let report = match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        serde_json::from_slice::<FinalReport>(&b).map_err(|e| e.to_string())
                    }) {
                    Ok(mut report) => {
                        report.messages = report.messages.restored();
                        report
                    }
                    Err(e) => {
                        warn!(file = %path.display(), error = %e, "dropping an unreadable spooled result");
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                };
                let worker = report.worker_id.clone();
                match self.send(&client, &path, report, None).await {
                    Delivery::Delivered => info!(worker = %worker, "delivered a spooled result"),
                    Delivery::Refused => {}
                    Delivery::Spooled => waiting = true,
                }
            }
            if waiting {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            } else {
                attempt = 0;
                self.spooled.notified().await;
            }
        }
    }

    /// Sends a report: messages first, then the update. Removes the file unless the
    /// server could not be reached; then the file keeps only what it did not take.
    ///
    /// A refused batch of messages costs only that batch, and a server that no longer
    /// takes the worker's messages still gets the update. If it refuses the result
    /// itself (bad input), the worker is reported as `error` with the reason, so its
    /// task does not wait out its lease.
    ///
    /// Cut short by `limit`, nothing is lost: the file keeps what was not taken, and
    /// sending it again stores nothing twice (messages are numbered).
    async fn send(
        &self,
        client: &Client,
        path: &Path,
        mut report: FinalReport,
        limit: Option<Duration>,
    ) -> Delivery {
        let outbox = std::sync::Mutex::new(std::mem::take(&mut report.messages));
        let appended = within(limit, output::deliver(client, &report.worker_id, &outbox)).await;
        report.messages = outbox.into_inner().unwrap_or_else(|p| p.into_inner());
        match &appended {
            Some(Ok(())) | None => {}
            Some(Err(e)) if e.is_transient() => return self.keep(path, &report),
            Some(Err(e)) => {
                warn!(worker = %report.worker_id, error = %e, "the server refused the rest of the run's output; sending the result");
            }
        }
        // The diff before the update, so that whoever sees the worker end can read it.
        if let Some(diff) = &report.diff {
            match within(limit, client.put_diff(&report.worker_id, diff)).await {
                Some(Ok(_)) => report.diff = None,
                Some(Err(e)) if e.is_transient() => return self.keep(path, &report),
                None => return self.keep(path, &report),
                Some(Err(e)) => {
                    warn!(worker = %report.worker_id, error = %e, "the server refused the run's diff; sending the result");
                    report.diff = None;
                }
            }
        }
        let delivery = if report.update_sent {
            Delivery::Delivered
        } else {
            match within(limit, send_update(client, &mut report)).await {
                Some(Delivery::Spooled) | None => return self.keep(path, &report),
                Some(delivery) => delivery,
            }
        };
        report.update_sent = true;
        if appended.is_none() && !report.messages.is_empty() {
            // Out of time with output left: the result is in, the rest follows later.
            self.keep(path, &report);
            return delivery;
        }
        let _ = std::fs::remove_file(path);
        delivery
    }

    /// Leaves what the server has not taken in the spool, for later.
    fn keep(&self, path: &Path, report: &FinalReport) -> Delivery {
        let _ = write_atomically(path, report);
        Delivery::Spooled
    }
}

/// The final update. [`Delivery::Spooled`] when the server is away.
///
/// If the server refuses the result itself (bad input), the worker is reported as
/// `error` with the reason, so its task does not wait out its lease.
async fn send_update(client: &Client, report: &mut FinalReport) -> Delivery {
    match client
        .update_worker(&report.worker_id, &report.update)
        .await
    {
        Ok(_) => Delivery::Delivered,
        Err(e) if e.is_transient() => Delivery::Spooled,
        // Sent before, and taken, but the answer was lost: the worker is in the
        // status the report gives it already.
        Err(e) if e.status() == Some(409) && already_taken(client, report).await => {
            Delivery::Delivered
        }
        Err(e) if matches!(e.status(), Some(400 | 413 | 422)) => {
            warn!(worker = %report.worker_id, error = %e, "the server refused the run's result; reporting the worker as failed");
            report.update = WorkerUpdate {
                status: Some(WorkerStatus::Error),
                error: Some(format!("the server refused the run's result: {e}")),
                ..WorkerUpdate::default()
            };
            match client
                .update_worker(&report.worker_id, &report.update)
                .await
            {
                Err(e) if e.is_transient() => return Delivery::Spooled,
                Err(e) => refused(&report.worker_id, &e),
                Ok(_) => {}
            }
            Delivery::Refused
        }
        Err(e) => {
            refused(&report.worker_id, &e);
            Delivery::Refused
        }
    }
}

/// `work`'s outcome, or `None` when `limit` ran out first.
async fn within<T>(
    limit: Option<Duration>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, work).await.ok(),
        None => Some(work.await),
    }
}

/// Whether the server's worker already ended the way `report` says it should.
async fn already_taken(client: &Client, report: &FinalReport) -> bool {
    match client.get_worker(&report.worker_id).await {
        Ok(worker) => Some(worker.status) == report.update.status,
        Err(_) => false,
    }
}

fn refused(worker_id: &str, e: &ClientError) {
    warn!(worker = %worker_id, error = %e, "the server refused the run's result; dropping it");
}

/// Writes `report` to `path` through a temporary file, so that a crash leaves the old
/// version or the new one, never half of one.
fn write_atomically(path: &Path, report: &FinalReport) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(report)?)?;
    std::fs::rename(&tmp, path)
}

/// How long a job of an agent that is shutting down gives its report's messages, and
/// then its update, before leaving the rest in the spool.
pub const SHUTDOWN_DELIVERY_LIMIT: Duration = Duration::from_secs(3);

/// How long `--once` waits for its result to reach the server before giving up and
/// leaving it in the spool.
pub const ONCE_DELIVERY_LIMIT: Duration = Duration::from_secs(300);
