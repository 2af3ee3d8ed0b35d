//! The event hub: one reader of the events table per server, fanning out to every
//! subscriber in process.
//!
//! Subscribers (SSE streams, waiting claims) never query the database while nothing
//! happens. When the store signals new events, the hub reads them once, in id order,
//! and broadcasts them; a subscriber that falls behind the broadcast reads what it
//! missed from the database itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::core::events::StoredEvent;
use crate::store::{Store, StoreError};

/// Events kept for subscribers that are momentarily slow; beyond this they catch up
/// from the database.
const BROADCAST_CAPACITY: usize = 4096;
/// How many events one database read takes.
pub const READ_BATCH: u32 = 1000;

pub struct EventHub {
    live: broadcast::Sender<Arc<StoredEvent>>,
    /// The newest event id broadcast so far.
    last_id: AtomicI64,
}

impl EventHub {
    /// Starts following the store's events from the newest one, until `shutdown`.
    pub async fn start(
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let hub = Arc::new(EventHub {
            live: broadcast::Sender::new(BROADCAST_CAPACITY),
            last_id: AtomicI64::new(store.last_event_id().await?),
        });
        tokio::spawn(pump(store, hub.clone(), shutdown));
        Ok(hub)
    }

    /// Events broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.live.subscribe()
    }

    pub fn last_id(&self) -> i64 {
        self.last_id.load(Ordering::Acquire)
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
            // No subscriber is not an error: the event is in the database.
            let _ = hub.live.send(Arc::new(event));
        }
        if !full {
            return Ok(());
        }
    }
}
