//! The event hub: one reader of the events table per server, fanning out to every
//! subscriber in process.
//!
//! Subscribers (SSE streams, waiting claims) never query the database while nothing
//! happens. When the store signals new events, the hub reads them once, in id order,
//! and broadcasts them; a subscriber that falls behind the broadcast reads what it
//! missed from the database itself.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::metrics::Metrics;
use crate::core::events::{AgentAudience, StoredEvent};
use crate::store::{Store, StoreError};

/// Events kept for subscribers that are momentarily slow; beyond this they catch up
/// from the database.
const BROADCAST_CAPACITY: usize = 4096;
/// How many events one database read takes.
pub const READ_BATCH: u32 = 1000;

/// How long what an account's key may see is trusted before it is read again, so that
/// a revoked grant, or a key rotated through another server of the cluster, stops the
/// flow soon. (A key rotated through this server ends its streams at once.)
pub const ACCESS_TTL: Duration = Duration::from_secs(5);

/// What the streams opened with one account key may see.
pub struct StreamAccess {
    pub account_id: String,
    pub workspaces: HashSet<String>,
}

/// A key's access as last read (`None`: the key no longer works), and when.
type AccessEntry = Option<(Instant, Option<Arc<StreamAccess>>)>;

pub struct EventHub {
    live: broadcast::Sender<Arc<StoredEvent>>,
    /// Per account, the events its agents' streams that take offers need
    /// ([`StoredEvent::agent_audience`]): ten thousand idle agents are not woken for
    /// every event of the cluster, only for their own account's.
    agents: Mutex<HashMap<String, broadcast::Sender<Arc<StoredEvent>>>>,
    /// The newest event id broadcast so far.
    last_id: AtomicI64,
    /// Open streams per caller (an account id, or `admin`).
    streams: Mutex<HashMap<String, CallerStreams>>,
    /// Streams one caller may hold open here at once.
    max_streams_per_caller: usize,
    /// Access per key hash, shared by every stream opened with the key: a thousand
    /// agents of one account cost one read per [`ACCESS_TTL`], not a thousand.
    access: Mutex<HashMap<String, Arc<tokio::sync::Mutex<AccessEntry>>>>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct CallerStreams {
    open: usize,
    /// Cancelled when the caller's key is rotated: its streams end at once.
    revoked: CancellationToken,
}

/// One open event stream, counted until it is dropped.
pub struct StreamSlot {
    hub: Arc<EventHub>,
    caller: String,
    /// Cancelled when the caller's key stops working on this server.
    pub revoked: CancellationToken,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.hub.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = streams.get_mut(&self.caller) {
            entry.open -= 1;
            if entry.open == 0 {
                streams.remove(&self.caller);
            }
        }
        self.hub.metrics.stream_closed();
    }
}

impl EventHub {
    /// Starts following the store's events from the newest one, until `shutdown`.
    pub async fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        max_streams_per_caller: usize,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let hub = Arc::new(EventHub {
            live: broadcast::Sender::new(BROADCAST_CAPACITY),
            agents: Mutex::default(),
            last_id: AtomicI64::new(store.last_event_id().await?),
            streams: Mutex::default(),
            max_streams_per_caller,
            access: Mutex::default(),
            store: store.clone(),
            metrics,
        });
        tokio::spawn(pump(store, hub.clone(), shutdown));
        Ok(hub)
    }

    /// Events broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.live.subscribe()
    }

    /// Events broadcast from now on that agents of `account_id` need.
    pub fn subscribe_agent(&self, account_id: &str) -> broadcast::Receiver<Arc<StoredEvent>> {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        // Channels nobody listens to any more go.
        agents.retain(|_, sender| sender.receiver_count() > 0);
        agents
            .entry(account_id.to_owned())
            .or_insert_with(|| broadcast::Sender::new(BROADCAST_CAPACITY))
            .subscribe()
    }

    /// Passes `event` to the agents' channels of the accounts it concerns.
    fn route_to_agents(&self, event: &Arc<StoredEvent>) {
        let agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if agents.is_empty() {
            return;
        }
        match event.agent_audience() {
            AgentAudience::Nobody => {}
            AgentAudience::Account(id) => {
                if let Some(sender) = agents.get(id) {
                    let _ = sender.send(event.clone());
                }
            }
            AgentAudience::Everyone => {
                for sender in agents.values() {
                    let _ = sender.send(event.clone());
                }
            }
        }
    }

    pub fn last_id(&self) -> i64 {
        self.last_id.load(Ordering::Acquire)
    }

    /// A slot for one more stream of `caller`, or the bound when it already has that
    /// many open here: a leaking client must not exhaust the server's memory and tasks.
    pub fn open_stream(self: &Arc<Self>, caller: &str) -> Result<StreamSlot, usize> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let entry = streams.entry(caller.to_owned()).or_default();
        if entry.open >= self.max_streams_per_caller {
            return Err(self.max_streams_per_caller);
        }
        entry.open += 1;
        self.metrics.stream_opened();
        Ok(StreamSlot {
            hub: self.clone(),
            caller: caller.to_owned(),
            revoked: entry.revoked.clone(),
        })
    }

    /// What streams opened with the account key hashed `key_hash` may see: `None` once
    /// the key no longer works. Read at most every [`ACCESS_TTL`] per key, by one
    /// stream while the others wait for its answer.
    pub async fn access(&self, key_hash: &str) -> Result<Option<Arc<StreamAccess>>, StoreError> {
        let entry = {
            let mut access = self.access.lock().unwrap_or_else(|e| e.into_inner());
            if !access.contains_key(key_hash) {
                // Keys no stream asked about for a while (rotated, gone) are dropped.
                access.retain(|_, entry| {
                    entry.try_lock().map_or(true, |e| {
                        e.as_ref().is_some_and(|(at, _)| at.elapsed() < ACCESS_TTL)
                    })
                });
            }
            access.entry(key_hash.to_owned()).or_default().clone()
        };
        let mut entry = entry.lock().await;
        if let Some((read, access)) = &*entry
            && read.elapsed() < ACCESS_TTL
        {
            return Ok(access.clone());
        }
        let access = match self.store.account_by_key_hash(key_hash).await? {
            Some(account) => {
                let workspaces = self.store.list_workspaces(Some(&account.id)).await?;
                Some(Arc::new(StreamAccess {
                    account_id: account.id,
                    workspaces: workspaces.into_iter().map(|w| w.id).collect(),
                }))
            }
            None => None,
        };
        *entry = Some((Instant::now(), access.clone()));
        Ok(access)
    }

    /// Ends every open stream of `caller` on this server (its key was rotated).
    pub fn revoke(&self, caller: &str) {
        // Read every key's access afresh, the rotated one's included.
        self.access
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = streams.get_mut(caller) {
            entry.revoked.cancel();
            // Streams opened later, with the new key, get a switch of their own.
            entry.revoked = CancellationToken::new();
        }
    }
}

async fn pump(store: Arc<dyn Store>, hub: Arc<EventHub>, shutdown: CancellationToken) {
    let mut signal = store.event_signal();
    loop {
        if let Err(e) = broadcast_new(&*store, &hub).await {
            warn!(error = %e, "reading new events failed; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = signal.changed() => if changed.is_err() { return },
        }
    }
}

async fn broadcast_new(store: &dyn Store, hub: &EventHub) -> Result<(), StoreError> {
    loop {
        let batch = store.events_after(hub.last_id(), READ_BATCH).await?;
        let full = batch.len() == READ_BATCH as usize;
        for event in batch {
            hub.last_id.store(event.id, Ordering::Release);
            let event = Arc::new(event);
            hub.route_to_agents(&event);
            // No subscriber is not an error: the event is in the database.
            let _ = hub.live.send(event);
        }
        if !full {
            return Ok(());
        }
    }
}
