//! Waiting claims (`POST /api/workers/claim` with `wait`), woken one per task that
//! became claimable instead of all at once.
//!
//! Every waiting claim of this server is enlisted here, oldest first, with what it
//! may take (its account and the workspaces it may claim in). When a task is created
//! or goes back to the queue anywhere in the cluster, [`run`] offers it to the oldest
//! waiter that may take it ([`claim::may_take`]), and to no other. A woken claim that
//! finds nothing (its account at a limit, say) passes the task on to the next one
//! while the task is still pending, so no waiter sleeps through a task it may take,
//! and a thousand waiting claims cost one claim transaction per new task, not a
//! thousand. What cannot be told task by task (a new grant, events missed by a
//! lagging reader) wakes every waiter.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};
use tracing::warn;

use super::AppState;
use crate::core::claim;
use crate::core::events::{EventData, STREAM_RESET, offers_work};
use crate::core::model::{Account, Task};
use crate::core::time;

/// How long an account's claimable workspaces are trusted. A grant made through this
/// server wakes every waiter and is read at once; one made through another server of
/// the cluster reaches waiters here within this.
const GRANTS_TTL: Duration = Duration::from_secs(10);

/// An account's claimable workspaces, and when they were read.
type Grants = (Instant, Arc<HashSet<String>>);

#[derive(Default)]
pub struct Waiters {
    queue: Mutex<VecDeque<Arc<Waiter>>>,
    grants: Mutex<HashMap<String, Grants>>,
}

/// One waiting claim.
pub struct Waiter {
    account: Account,
    workspaces: Arc<HashSet<String>>,
    /// The runners the claim listed.
    runners: Vec<String>,
    /// The task it was woken for, until it has looked.
    offered: Mutex<Option<Task>>,
    woken: Notify,
}

impl Waiter {
    /// Waits to be woken (returns at once if it was while it was not waiting).
    pub async fn woken(&self) {
        self.woken.notified().await;
    }

    /// The task it was woken for, if one was.
    pub fn take_offer(&self) -> Option<Task> {
        self.offered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Keeps a waiter enlisted while it lives.
pub struct Enlisted<'a> {
    waiters: &'a Waiters,
    pub waiter: Arc<Waiter>,
}

impl Drop for Enlisted<'_> {
    fn drop(&mut self) {
        self.waiters.withdraw(&self.waiter);
        // Offered as it was leaving: the task is another waiter's.
        if let Some(task) = self.waiter.take_offer() {
            self.waiters.offer_except(task, Some(&self.waiter));
        }
    }
}

impl Waiters {
    /// Enlists a claim of `account` (narrowed to `workspace`, if it asked for one) at
    /// the back of the queue.
    pub async fn enlist(
        &self,
        state: &AppState,
        account: &Account,
        workspace: Option<&str>,
        runners: &[String],
    ) -> crate::store::Result<Enlisted<'_>> {
        let mut workspaces = self.claimable(state, &account.id).await?;
        if let Some(only) = workspace {
            workspaces = Arc::new(workspaces.iter().filter(|w| *w == only).cloned().collect());
        }
        let waiter = Arc::new(Waiter {
            account: account.clone(),
            workspaces,
            runners: runners.to_vec(),
            offered: Mutex::new(None),
            woken: Notify::new(),
        });
        self.requeue(&waiter);
        Ok(Enlisted {
            waiters: self,
            waiter,
        })
    }

    /// Puts a waiter that was woken back at the end of the queue.
    pub fn requeue(&self, waiter: &Arc<Waiter>) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !queue.iter().any(|w| Arc::ptr_eq(w, waiter)) {
            queue.push_back(waiter.clone());
        }
    }

    fn withdraw(&self, waiter: &Arc<Waiter>) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.retain(|w| !Arc::ptr_eq(w, waiter));
    }

    /// Wakes the oldest waiter that may take `task`, taking it out of the queue;
    /// false if none may.
    pub fn offer(&self, task: Task) -> bool {
        self.offer_except(task, None)
    }

    /// [`Self::offer`], passing over `passed` (the waiter passing the task on).
    pub fn offer_except(&self, task: Task, passed: Option<&Arc<Waiter>>) -> bool {
        let now = time::now();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(at) = queue.iter().position(|w| {
            passed.is_none_or(|p| !Arc::ptr_eq(p, w))
                && claim::may_take(&task, &w.account, &w.workspaces, &w.runners, now)
        }) else {
            return false;
        };
        let waiter = queue.remove(at).expect("the position is in the queue");
        *waiter.offered.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        waiter.woken.notify_one();
        true
    }

    /// Wakes every waiter, to look again: grants changed, or offers may have been
    /// missed. Their workspaces are read afresh at their next wait.
    pub fn wake_all(&self) {
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for waiter in queue.iter() {
            waiter.woken.notify_one();
        }
    }

    /// The workspaces `account_id` may claim in, read at most every [`GRANTS_TTL`].
    async fn claimable(
        &self,
        state: &AppState,
        account_id: &str,
    ) -> crate::store::Result<Arc<HashSet<String>>> {
        if let Some((read, workspaces)) = self
            .grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account_id)
            && read.elapsed() < GRANTS_TTL
        {
            return Ok(workspaces.clone());
        }
        let workspaces: Arc<HashSet<String>> = Arc::new(
            state
                .store
                .claimable_workspaces(account_id)
                .await?
                .into_iter()
                .collect(),
        );
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account_id.to_owned(), (Instant::now(), workspaces.clone()));
        Ok(workspaces)
    }
}

/// Until shutdown: offers each task the cluster's events show becoming claimable to
/// one waiter, and wakes them all on a new grant or missed events.
pub async fn run(state: AppState) {
    let mut events = state.events.subscribe();
    loop {
        let received = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.new_work.notified() => {
                state.waiters.wake_all();
                continue;
            }
            received = events.recv() => received,
        };
        match received {
            Ok(event) => {
                match event.name.as_str() {
                    STREAM_RESET => {
                        state.waiters.wake_all();
                        continue;
                    }
                    // Only these carry a task; a runner's messages are left unparsed.
                    "task.created" | "task.updated" => {}
                    _ => continue,
                }
                let Ok(data) = serde_json::from_str::<EventData>(&event.data) else {
                    continue;
                };
                if offers_work(&event.name, &data)
                    && let Some(task) = data.task
                {
                    state.waiters.offer(task);
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "the claim waker fell behind the events; waking every waiting claim"
                );
                state.waiters.wake_all();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
