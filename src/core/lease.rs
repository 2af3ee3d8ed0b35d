//! Leases: a worker that stops heartbeating is lost, and its task goes back to the queue.

use std::time::Duration;

use super::model::{Task, TaskStatus, Worker, WorkerStatus};
use super::time::Timestamp;

/// How many leases a paused worker may go without a heartbeat before it is expired.
/// A paused run is parked by a person and its agent keeps heartbeating it, so silence
/// means the agent is gone; three leases rather than one give a laptop that slept, or
/// an agent being restarted, time to come back before the slot is taken from it.
pub const PAUSED_LEASES: i32 = 3;

/// The heartbeat times before which workers count as lost, per kind of worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    /// For workers in a [`WorkerStatus::LEASED`] status.
    pub leased: Timestamp,
    /// For paused workers: [`PAUSED_LEASES`] leases back.
    pub paused: Timestamp,
}

impl Cutoffs {
    /// The cutoffs at `now` for a lease of `ttl`.
    pub fn at(now: Timestamp, ttl: Duration) -> Cutoffs {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let paused = ttl
            .checked_mul(PAUSED_LEASES)
            .unwrap_or(chrono::Duration::MAX);
        let back = |d: chrono::Duration| now.checked_sub_signed(d).unwrap_or(Timestamp::MIN_UTC);
        Cutoffs {
            leased: back(ttl),
            paused: back(paused),
        }
    }

    /// Whether `worker` has gone too long without a heartbeat and is lost.
    pub fn is_lost(&self, worker: &Worker) -> bool {
        if WorkerStatus::LEASED.contains(&worker.status) {
            worker.heartbeat_at < self.leased
        } else {
            worker.status == WorkerStatus::Paused && worker.heartbeat_at < self.paused
        }
    }
}

/// How often the sweeper looks for lost workers: a quarter of the lease, so a task is
/// back in the queue at most 1.25 leases after its worker's last sign of life, kept
/// between 250 ms (tests use tiny leases) and 5 s (so a long lease is not left idle).
pub fn sweep_interval(lease_ttl: Duration) -> Duration {
    (lease_ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// How often an agent heartbeats a worker: four times per lease, so that three lost
/// heartbeats in a row still keep it, and never less often than every 15 s, so that
/// cancels and answers reach a run within seconds even under a long lease.
pub fn heartbeat_interval(lease_ttl: Duration) -> Duration {
    (lease_ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(15))
}

/// Gives a task whose worker ended without completing it back to the queue, or fails
/// it once its attempts are spent. Finished and cancelled tasks are left as they are.
pub fn release(task: &mut Task, now: Timestamp) {
    if task.status.is_terminal() {
        return;
    }
    if task.attempts >= task.max_attempts {
        task.status = TaskStatus::Failed;
        task.completed_at = Some(now);
    } else {
        task.status = TaskStatus::Pending;
        task.claimed_by = None;
        task.worker_id = None;
        task.claimed_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_come_four_times_a_lease_within_bounds() {
        assert_eq!(
            heartbeat_interval(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_secs(600)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn interval_is_a_quarter_lease_within_bounds() {
        assert_eq!(
            sweep_interval(Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(100)),
            Duration::from_millis(250)
        );
    }
}
