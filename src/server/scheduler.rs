//! The scheduler: runs schedules when they are due.
//!
//! Every server of a cluster runs one. A due schedule is locked by the transaction
//! that runs it (and passed over by the others), which also moves its next run on, so
//! each run happens once across the cluster. Between runs the scheduler sleeps until
//! the first schedule is due, waking early when one is made or resumed on this server,
//! and looks again at least every [`LOOK_AGAIN`] for those made on another.

use std::time::Duration;

use tracing::{info, warn};

use super::AppState;
use crate::core::time;

/// The longest the scheduler sleeps without looking: how late a schedule made or
/// resumed on another server of the cluster may run here, should that server stop.
const LOOK_AGAIN: Duration = Duration::from_secs(30);
/// How soon to look again at a schedule that is due but being run by another server.
const BUSY_ELSEWHERE: Duration = Duration::from_millis(100);

pub async fn run(state: AppState) {
    loop {
        let now = time::now();
        match state.store.run_due_schedules(now).await {
            Ok(ran) => {
                for (schedule, task) in ran {
                    match (&task, &schedule.paused_reason) {
                        (Some(task), _) => {
                            info!(schedule = %schedule.id, task = %task.id, "schedule ran");
                            state.task_created(task);
                        }
                        (None, Some(why)) => warn!(schedule = %schedule.id, "{why}"),
                        (None, None) => info!(
                            schedule = %schedule.id,
                            "schedule skipped a run: its previous task has not ended"
                        ),
                    }
                }
            }
            Err(e) => warn!(error = %e, "running due schedules failed; trying again"),
        }
        let wait = match state.store.next_schedule_due().await {
            // One due already is another server's to run (it holds it): look again soon.
            Ok(Some(at)) => (at - time::now()).to_std().unwrap_or(BUSY_ELSEWHERE),
            Ok(None) => LOOK_AGAIN,
            Err(_) => Duration::from_secs(1),
        };
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.schedules_changed.notified() => {}
            _ = tokio::time::sleep(wait.min(LOOK_AGAIN)) => {}
        }
    }
}
