//! The agents whose event streams this server holds, refreshed in the database in one
//! transaction per [`agents::refresh_interval`], whatever their number: ten thousand
//! idle agents cost one write every few seconds, not one each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::warn;

use super::AppState;
use crate::core::{agents, time};

/// Open streams per agent, with the account each belongs to.
#[derive(Default)]
pub struct Presence {
    streams: Mutex<HashMap<String, (String, usize)>>,
}

/// Keeps its agent present while it lives: the stream's lifetime.
pub struct Held {
    presence: Arc<Presence>,
    agent_id: String,
}

impl Presence {
    /// Counts one more stream of `agent_id` (of `account_id`) until the guard drops.
    pub fn hold(self: &Arc<Self>, agent_id: String, account_id: String) -> Held {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.entry(agent_id.clone()).or_insert((account_id, 0)).1 += 1;
        Held {
            presence: self.clone(),
            agent_id,
        }
    }

    /// The agents to refresh: `(id, account)`.
    fn present(&self) -> Vec<(String, String)> {
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams
            .iter()
            .map(|(id, (account, _))| (id.clone(), account.clone()))
            .collect()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut streams = self
            .presence
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = streams.get_mut(&self.agent_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                streams.remove(&self.agent_id);
            }
        }
    }
}

/// Until shutdown: refreshes the agents this server holds streams of, and forgets
/// the cluster's agents gone for a lease (every server does; deleting twice is
/// harmless).
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(agents::refresh_interval(state.lease_ttl));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = time::now();
        if let Err(e) = state
            .store
            .touch_agents(state.presence.present(), now)
            .await
        {
            warn!(error = %e, "cannot refresh connected agents; retrying at the next tick");
        }
        let gone = agents::seen_after(now, state.lease_ttl);
        if let Err(e) = state.store.forget_agents(gone).await {
            warn!(error = %e, "cannot forget departed agents; retrying at the next tick");
        }
    }
}
