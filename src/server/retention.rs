//! Retention: old events, and the output of long-finished workers, are deleted so that
//! the database does not grow forever.
//!
//! Deletes go in small batches, each its own short transaction, with a pause between
//! them, so that claims and reports are never held up behind a large delete. Every
//! server of a cluster runs this; deleting what another server deleted already is
//! harmless.

use std::time::Duration;

use tracing::{info, warn};

use super::AppState;
use crate::core::time;

/// Rows deleted per transaction. Large enough to keep up with a busy cluster: the ten-
/// minute load bench writes 11,600 events and as many messages a second, and with
/// 1,000 per batch Postgres's retention fell further behind each minute.
const BATCH: u32 = 5000;
/// The pause between two batches, leaving the database to everyone else.
const PAUSE: Duration = Duration::from_millis(20);

/// How long things are kept; `None` keeps them for good.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    /// Events of the stream (`--retention`).
    pub events: Option<Duration>,
    /// Messages and attachments of workers that finished this long ago
    /// (`--message-retention`).
    pub worker_output: Option<Duration>,
}

impl Retention {
    /// How often to look for what is due: a quarter of the shortest period, between
    /// 1 s and 1 min.
    fn interval(&self) -> Option<Duration> {
        let shortest = [self.events, self.worker_output]
            .into_iter()
            .flatten()
            .min()?;
        Some((shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)))
    }
}

/// Runs until shutdown.
pub async fn run(state: AppState) {
    let Some(interval) = state.retention.interval() else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = purge_once(&state).await {
            warn!(error = %e, "retention pass failed; retrying at the next tick");
        }
    }
}

async fn purge_once(state: &AppState) -> Result<(), crate::store::StoreError> {
    let retention = state.retention;
    if let Some(keep) = retention.events {
        let before = cutoff(keep);
        let n = in_batches(state, || state.store.purge_events(before, BATCH)).await?;
        if n > 0 {
            info!(deleted = n, "retention deleted old events");
        }
    }
    if let Some(keep) = retention.worker_output {
        let before = cutoff(keep);
        let n = in_batches(state, || state.store.purge_worker_output(before, BATCH)).await?;
        if n > 0 {
            info!(
                deleted = n,
                "retention deleted old messages and attachments"
            );
        }
    }
    Ok(())
}

fn cutoff(keep: Duration) -> time::Timestamp {
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    time::now()
        .checked_sub_signed(keep)
        .unwrap_or(time::Timestamp::MIN_UTC)
}

/// Calls `purge` until a batch comes back short; returns the rows deleted.
async fn in_batches<F, Fut>(state: &AppState, purge: F) -> Result<u64, crate::store::StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = crate::store::Result<u64>>,
{
    let mut total = 0;
    loop {
        let n = purge().await?;
        total += n;
        if n < u64::from(BATCH) || state.shutdown.is_cancelled() {
            return Ok(total);
        }
        tokio::time::sleep(PAUSE).await;
    }
}
