//! Reading `GET /api/events` as it streams, reconnecting when it drops.
//!
//! When the connection ends or fails, the stream reconnects with growing pauses and
//! resumes after the last event it delivered (`Last-Event-ID`), so a server restart
//! costs a pause, never a lost or repeated event. It gives up after
//! [`GIVE_UP_AFTER`] without a connection.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Client, ClientError, Result, backoff};

/// How long the stream keeps trying to reconnect before it reports the server gone.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// One event as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedEvent {
    pub id: i64,
    pub name: String,
    pub data: Value,
}

pub struct EventStream {
    client: Client,
    workspace_id: Option<String>,
    /// The id of the last event delivered, to resume after.
    last_id: Option<i64>,
    response: Option<reqwest::Response>,
    buffer: String,
}

impl EventStream {
    /// Connects once; an error here (refused token, unknown workspace) is final.
    pub(super) async fn open(
        client: Client,
        workspace_id: Option<String>,
        last_id: Option<i64>,
    ) -> Result<Self> {
        let response = client.open_events(workspace_id.as_deref(), last_id).await?;
        Ok(EventStream {
            client,
            workspace_id,
            last_id,
            response: Some(response),
            buffer: String::new(),
        })
    }

    /// The next event. Keep-alive comments are skipped; dropped connections are
    /// reopened and resumed.
    pub async fn next(&mut self) -> Result<StreamedEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&block)? {
                    self.last_id = Some(event.id);
                    return Ok(event);
                }
                continue;
            }
            let chunk = match self.response.as_mut() {
                Some(response) => response.chunk().await.ok().flatten(),
                None => None,
            };
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => self.reconnect().await?,
            }
        }
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.response = None;
        // A partial event from the lost connection is sent again after resuming.
        self.buffer.clear();
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            match self
                .client
                .open_events(self.workspace_id.as_deref(), self.last_id)
                .await
            {
                Ok(response) => {
                    self.response = Some(response);
                    return Ok(());
                }
                // The server answered and said no: reconnecting will not help.
                Err(e @ ClientError::Api { .. }) => return Err(e),
                Err(e) if started.elapsed() >= GIVE_UP_AFTER => return Err(e),
                Err(_) => {}
            }
        }
    }
}

/// One `id:`/`event:`/`data:` block; `None` for a block of comments only.
fn parse(block: &str) -> Result<Option<StreamedEvent>> {
    let (mut id, mut name, mut data) = (None, None, String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    match (id, name) {
        (Some(id), Some(name)) => {
            let data = serde_json::from_str(&data)
                .map_err(|e| ClientError::Protocol(format!("event {id}: {e}")))?;
            Ok(Some(StreamedEvent { id, name, data }))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_parse_into_events_and_comments_are_skipped() {
        let event = parse("id: 7\nevent: task.created\ndata: {\"task\":{\"id\":\"task-1\"}}\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(event.id, 7);
        assert_eq!(event.name, "task.created");
        assert_eq!(event.data["task"]["id"], "task-1");
        assert_eq!(parse(":\n\n").unwrap(), None);
        assert!(parse("id: 1\nevent: x\ndata: {oops\n\n").is_err());
    }
}
