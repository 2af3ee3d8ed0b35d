//! The lease sweeper: finds workers that stopped heartbeating and gives their tasks back.

use tracing::{info, warn};

use super::AppState;
use crate::core::actions::Action;
use crate::core::lease;
use crate::core::time;

/// Sweeps every [`lease::sweep_interval`] until shutdown. Every server of a cluster
/// runs one; each expiry re-checks the worker under its row lock, so a lost worker is
/// expired by exactly one of them.
///
/// The first sweep waits one lease: while the broker was down, agents could not
/// heartbeat, and their workers deserve one lease to come back before they are
/// declared lost.
pub async fn run(state: AppState) {
    tokio::select! {
        _ = state.shutdown.cancelled() => return,
        _ = tokio::time::sleep(state.lease_ttl) => {}
    }
    let mut tick = tokio::time::interval(lease::sweep_interval(state.lease_ttl));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep_once(&state).await {
            warn!(error = %e, "lease sweep failed; retrying at the next tick");
        }
    }
}

async fn sweep_once(state: &AppState) -> Result<(), crate::store::StoreError> {
    let now = time::now();
    let cutoffs = lease::Cutoffs::at(now, state.lease_ttl);
    for worker_id in state.store.stale_workers(cutoffs).await? {
        let applied = state
            .store
            .apply(&worker_id, Action::Expire { cutoffs }, now)
            .await?;
        if !applied.outcome.changed {
            continue;
        }
        state.metrics.lease_expired();
        info!(
            worker = %worker_id,
            task = %applied.task.id,
            task_status = %applied.task.status,
            attempts = applied.task.attempts,
            "worker lost its lease"
        );
    }
    Ok(())
}
