//! The agent's account of itself to the server (`PUT /api/agents/:id`): sent when it
//! changes and at each (re)connection of the event stream, which keeps it listed in
//! between.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tracing::warn;

use crate::api::AgentReport;
use crate::client::{Client, backoff};
use crate::core::ids::{IdKind, new_id};

/// The agent's id, kept in its state directory so that a restarted agent is the same
/// one on the dashboard.
pub fn agent_id(state_dir: &Path) -> Result<String, String> {
    let file = state_dir.join("agent-id");
    if let Ok(id) = std::fs::read_to_string(&file)
        && crate::core::agents::check_id(id.trim()).is_ok()
    {
        return Ok(id.trim().to_owned());
    }
    let id = new_id(IdKind::Agent);
    std::fs::write(&file, &id).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(id)
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname(2) writes at most `buf.len()` bytes into the buffer.
    let named = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if named && !name.is_empty() => name.to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// Sends the latest report whenever it changes or the stream (re)connects, until the
/// sender is dropped. A server that does not know agents (older than this one) is
/// told nothing more.
pub async fn report(
    client: Client,
    agent_id: String,
    mut reports: watch::Receiver<AgentReport>,
    connected: Arc<Notify>,
) {
    let mut failures = 0;
    loop {
        let latest = reports.borrow_and_update().clone();
        match client.report_agent(&agent_id, &latest).await {
            Ok(_) => failures = 0,
            Err(e) if e.is_transient() => {
                failures += 1;
                if failures == 1 {
                    warn!(error = %e, "cannot report this agent to the server; retrying");
                }
                tokio::select! {
                    changed = reports.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(backoff(failures)) => {}
                }
                continue;
            }
            Err(e) => {
                warn!(error = %e, "the server refused this agent's report; it will not be listed");
                return;
            }
        }
        tokio::select! {
            changed = reports.changed() => if changed.is_err() { return },
            _ = connected.notified() => {}
        }
    }
}
