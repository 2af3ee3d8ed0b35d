//! Who waits for work on this server, and which one of them each task that became
//! claimable is offered to: one waiter per task, not all of them at once.
//!
//! Two kinds of waiter share one queue, oldest first, each with what it may take (its
//! account, the workspaces it may claim in, its runners):
//! - a waiting claim (`POST /api/workers/claim` with `wait`), woken to claim again;
//! - an agent's event stream that takes offers (`GET /api/events?agentId=…&offers=true`),
//!   sent a `task.offered` event, which the agent answers with a claim naming it.
//!
//! When a task is created or goes back to the queue anywhere in the cluster, [`run`]
//! offers it to the oldest waiter that may take it ([`claim::may_take`]), and to no
//! other; a task created through this server is offered as soon as it is stored
//! ([`Waiters::offer_created`]). A waiter that does not take its task (its account at
//! a limit, say) passes it on to the next one while the task is still pending, past
//! the rest of its account when the account's own limits were in the way; so no
//! waiter sleeps through a task it may take, and a thousand idle agents cost one claim
//! per new task, not a thousand. An agent that leaves an offer unanswered for
//! [`OFFER_ANSWER_WITHIN`] (it is full, outside its hours, gone) is passed over. What
//! cannot be told task by task (a new grant, events missed by a lagging reader) wakes
//! every waiter, and a sweep every [`SWEEP_EVERY`] offers tasks that became claimable
//! without an event (a retry whose pause ended, limits freed) in place of every agent
//! claiming now and then.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};
use tracing::warn;

use super::AppState;
use crate::core::claim;
use crate::core::events::{EventData, OFFER_ANSWER_WITHIN, STREAM_RESET, offers_work};
use crate::core::model::{Account, Task, TaskStatus};
use crate::core::page::PageRequest;
use crate::core::time;
use crate::store::TaskFilter;

/// How long an account's claimable workspaces are trusted. A grant made through this
/// server wakes every waiter and is read at once; one made through another server of
/// the cluster reaches waiters here within this.
const GRANTS_TTL: Duration = Duration::from_secs(10);

/// How often pending tasks are offered again while anyone waits: one read per server,
/// where agents claiming "just in case" would cost one claim each.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How many pending tasks one sweep offers at most.
const SWEEP_TASKS: u32 = 20;

/// How long a task offered as it was created here is remembered, waiting for its
/// `task.created` event to come back through the database (milliseconds, normally).
/// Past this a late event offers it again: one claim too many, never a task missed.
const CREATED_OFFER_KEPT: Duration = Duration::from_secs(60);

/// How many such tasks are remembered before those kept past [`CREATED_OFFER_KEPT`]
/// are dropped.
const CREATED_OFFERS_PRUNED_AT: usize = 1024;

/// An account's claimable workspaces, and when they were read.
type Grants = (Instant, Arc<HashSet<String>>);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
pub struct Waiters {
    queue: Mutex<VecDeque<Arc<Waiter>>>,
    grants: Mutex<HashMap<String, Grants>>,
    /// Agents' streams that take offers, by agent id.
    streams: Mutex<HashMap<String, Arc<Waiter>>>,
    /// Tasks offered as they were created here, and when: their `task.created` event
    /// is not offered again.
    created_offers: Mutex<HashMap<String, Instant>>,
}

/// One waiting claim or agent stream.
pub struct Waiter {
    account: Account,
    workspaces: Arc<HashSet<String>>,
    /// The runners it has.
    runners: Vec<String>,
    /// The task it was woken for, until it has looked (a claim) or been told (a
    /// stream).
    offered: Mutex<Option<Task>>,
    /// A stream's offer that was sent and not yet answered, and when it is due.
    awaiting: Mutex<Option<(Task, Instant)>>,
    woken: Notify,
}

impl Waiter {
    /// Waits to be woken (returns at once if it was while it was not waiting).
    pub async fn woken(&self) {
        self.woken.notified().await;
    }

    /// The task it was woken for, if one was.
    pub fn take_offer(&self) -> Option<Task> {
        lock(&self.offered).take()
    }

    /// Notes that `task` was offered to the agent, which has
    /// [`OFFER_ANSWER_WITHIN`] to answer.
    pub fn sent(&self, task: Task) {
        *lock(&self.awaiting) = Some((task, Instant::now() + OFFER_ANSWER_WITHIN));
    }

    /// When the offer sent last is due, while it is unanswered.
    pub fn answer_due(&self) -> Option<Instant> {
        lock(&self.awaiting).as_ref().map(|(_, due)| *due)
    }

    /// The offer sent, if it is unanswered and due.
    pub fn take_overdue(&self) -> Option<Task> {
        let mut awaiting = lock(&self.awaiting);
        match &*awaiting {
            Some((_, due)) if *due <= Instant::now() => awaiting.take().map(|(task, _)| task),
            _ => None,
        }
    }
}

/// Keeps a waiting claim enlisted while it lives.
pub struct Enlisted<'a> {
    waiters: &'a Waiters,
    pub waiter: Arc<Waiter>,
}

impl Drop for Enlisted<'_> {
    fn drop(&mut self) {
        self.waiters.withdraw(&self.waiter);
        // Offered as it was leaving: the task is another waiter's.
        if let Some(task) = self.waiter.take_offer() {
            self.waiters.offer_except(task, &self.waiter, false);
        }
    }
}

/// Keeps an agent's stream enlisted while it lives (the stream's lifetime).
pub struct StreamEnlisted {
    waiters: Arc<Waiters>,
    agent_id: String,
    pub waiter: Arc<Waiter>,
}

impl Drop for StreamEnlisted {
    fn drop(&mut self) {
        self.waiters.withdraw(&self.waiter);
        {
            let mut streams = lock(&self.waiters.streams);
            if streams
                .get(&self.agent_id)
                .is_some_and(|w| Arc::ptr_eq(w, &self.waiter))
            {
                streams.remove(&self.agent_id);
            }
        }
        // Whatever the agent was offered and did not answer goes to another one. (It
        // may have been taken meanwhile: the next waiter's claim then finds that.)
        let unanswered = lock(&self.waiter.awaiting).take().map(|(task, _)| task);
        for task in [self.waiter.take_offer(), unanswered].into_iter().flatten() {
            self.waiters.offer_except(task, &self.waiter, false);
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
        let waiter = self.new_waiter(state, account, workspace, runners).await?;
        self.requeue(&waiter);
        Ok(Enlisted {
            waiters: self,
            waiter,
        })
    }

    /// Enlists the event stream of agent `agent_id` (of `account`, narrowed to
    /// `workspace`) at the back of the queue. A stream the same agent opened before
    /// stops being offered anything.
    pub async fn enlist_stream(
        self: &Arc<Self>,
        state: &AppState,
        account: &Account,
        workspace: Option<&str>,
        runners: &[String],
        agent_id: &str,
    ) -> crate::store::Result<StreamEnlisted> {
        let waiter = self.new_waiter(state, account, workspace, runners).await?;
        if let Some(earlier) = lock(&self.streams).insert(agent_id.to_owned(), waiter.clone()) {
            self.withdraw(&earlier);
        }
        self.requeue(&waiter);
        Ok(StreamEnlisted {
            waiters: self.clone(),
            agent_id: agent_id.to_owned(),
            waiter,
        })
    }

    async fn new_waiter(
        &self,
        state: &AppState,
        account: &Account,
        workspace: Option<&str>,
        runners: &[String],
    ) -> crate::store::Result<Arc<Waiter>> {
        let mut workspaces = self.claimable(state, &account.id).await?;
        if let Some(only) = workspace {
            workspaces = Arc::new(workspaces.iter().filter(|w| *w == only).cloned().collect());
        }
        Ok(Arc::new(Waiter {
            account: account.clone(),
            workspaces,
            runners: runners.to_vec(),
            offered: Mutex::new(None),
            awaiting: Mutex::new(None),
            woken: Notify::new(),
        }))
    }

    /// Puts a waiter that was woken back at the end of the queue.
    pub fn requeue(&self, waiter: &Arc<Waiter>) {
        let mut queue = lock(&self.queue);
        if !queue.iter().any(|w| Arc::ptr_eq(w, waiter)) {
            queue.push_back(waiter.clone());
        }
    }

    fn withdraw(&self, waiter: &Arc<Waiter>) {
        lock(&self.queue).retain(|w| !Arc::ptr_eq(w, waiter));
    }

    /// A claim of agent `agent_id` (of `account_id`) was made here: the offer it names
    /// is answered, and if the claim left the agent room, the agent waits for the
    /// next offer. Returns the agent's stream, if it is on this server.
    pub fn answered(
        &self,
        agent_id: &str,
        account_id: &str,
        offer: Option<&str>,
        has_room: bool,
    ) -> Option<Arc<Waiter>> {
        let waiter = lock(&self.streams).get(agent_id).cloned()?;
        if waiter.account.id != account_id {
            return None;
        }
        {
            let mut awaiting = lock(&waiter.awaiting);
            if awaiting.as_ref().map(|(task, _)| task.id.as_str()) == offer {
                *awaiting = None;
            }
        }
        if has_room {
            self.requeue(&waiter);
        }
        Some(waiter)
    }

    /// Whether anyone waits here.
    pub fn is_empty(&self) -> bool {
        lock(&self.queue).is_empty()
    }

    /// Wakes the oldest waiter that may take `task`, taking it out of the queue;
    /// false if none may.
    pub fn offer(&self, task: Task) -> bool {
        self.pick(task, |_| true)
    }

    /// Offers `task`, which this server has just stored, at once: its event would
    /// reach [`run`] only after a round of the database (on Postgres, the sequencer's
    /// pass and its notification), and the waiting agent with it.
    pub fn offer_created(&self, task: Task) {
        let id = task.id.clone();
        if self.offer(task) {
            let mut offered = lock(&self.created_offers);
            // Entries go as their events come; what an event never came for goes here.
            if offered.len() >= CREATED_OFFERS_PRUNED_AT {
                offered.retain(|_, at| at.elapsed() < CREATED_OFFER_KEPT);
            }
            offered.insert(id, Instant::now());
        }
    }

    /// Whether `task_id` was offered as it was created here; its event, arriving now,
    /// then offers nothing.
    fn was_offered_at_creation(&self, task_id: &str) -> bool {
        lock(&self.created_offers).remove(task_id).is_some()
    }

    /// [`Self::offer`], passing over `passed` (the waiter passing the task on), and
    /// every waiter of its account too if `account_limited` (the account's own limits
    /// kept it from the task).
    pub fn offer_except(&self, task: Task, passed: &Arc<Waiter>, account_limited: bool) -> bool {
        self.pick(task, |w| {
            let same_account = w.account.id == passed.account.id;
            !(Arc::ptr_eq(passed, w) || account_limited && same_account)
        })
    }

    fn pick(&self, task: Task, eligible: impl Fn(&Arc<Waiter>) -> bool) -> bool {
        let now = time::now();
        let mut queue = lock(&self.queue);
        let Some(at) = queue.iter().position(|w| {
            eligible(w) && claim::may_take(&task, &w.account, &w.workspaces, &w.runners, now)
        }) else {
            return false;
        };
        let waiter = queue.remove(at).expect("the position is in the queue");
        *lock(&waiter.offered) = Some(task);
        waiter.woken.notify_one();
        true
    }

    /// Wakes every waiter, to look again: grants changed, or offers may have been
    /// missed. Their workspaces are read afresh at their next wait.
    pub fn wake_all(&self) {
        lock(&self.grants).clear();
        for waiter in lock(&self.queue).iter() {
            waiter.woken.notify_one();
        }
    }

    /// The workspaces `account_id` may claim in, read at most every [`GRANTS_TTL`].
    async fn claimable(
        &self,
        state: &AppState,
        account_id: &str,
    ) -> crate::store::Result<Arc<HashSet<String>>> {
        if let Some((read, workspaces)) = lock(&self.grants).get(account_id)
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
        lock(&self.grants).insert(account_id.to_owned(), (Instant::now(), workspaces.clone()));
        Ok(workspaces)
    }
}

/// Offers `task_id`, which `waiter` was offered and did not take, to the next waiter,
/// while it is still pending (another claim may have taken it); past the rest of the
/// waiter's account if `account_limited`.
pub async fn pass_on(
    state: &AppState,
    waiter: &Arc<Waiter>,
    task_id: &str,
    account_limited: bool,
) -> crate::store::Result<()> {
    if let Some(task) = state.store.get_task(task_id).await?
        && task.status == TaskStatus::Pending
    {
        state.waiters.offer_except(task, waiter, account_limited);
    }
    Ok(())
}

/// Until shutdown: offers each task the cluster's events show becoming claimable to
/// one waiter, wakes them all on a new grant or missed events, and sweeps the pending
/// tasks every [`SWEEP_EVERY`] while anyone waits.
pub async fn run(state: AppState) {
    let mut events = state.events.subscribe();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.new_work.notified() => {
                state.waiters.wake_all();
                continue;
            }
            _ = sweep.tick() => {
                offer_pending(&state).await;
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
                    && !(event.name == "task.created"
                        && state.waiters.was_offered_at_creation(&task.id))
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

/// Offers the newest [`SWEEP_TASKS`] pending tasks, each to one waiter that may take
/// it.
async fn offer_pending(state: &AppState) {
    if state.waiters.is_empty() {
        return;
    }
    let filter = TaskFilter {
        status: Some(TaskStatus::Pending),
        page: PageRequest {
            after: None,
            limit: SWEEP_TASKS,
        },
        ..TaskFilter::default()
    };
    match state.store.list_tasks(&filter).await {
        Ok(page) => {
            for task in page.items {
                state.waiters.offer(task);
            }
        }
        Err(e) => warn!(error = %e, "cannot read the pending tasks to offer them"),
    }
}
