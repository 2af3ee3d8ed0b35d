//! Reading `GET /api/events` as it streams, reconnecting when it drops.
//!
//! When the connection ends, fails, or stays silent for [`STREAM_IDLE_LIMIT`] (the
//! server writes a keep-alive every [`crate::core::events::KEEP_ALIVE`], so silence
//! means a dead connection or a stuck server), the stream reconnects with growing
//! pauses and resumes after the last event it delivered (`Last-Event-ID`), so a server
//! restart costs a pause, never a lost or repeated event. It gives up after
//! [`GIVE_UP_AFTER`] without a connection.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Client, ClientError, Result, backoff};
use crate::core::events::STREAM_IDLE_LIMIT;

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
    /// Bytes received and not yet parsed. Kept as bytes, so that a character split
    /// across two network chunks is decoded whole.
    buffer: Vec<u8>,
    idle_limit: Duration,
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
            buffer: Vec::new(),
            idle_limit: STREAM_IDLE_LIMIT,
        })
    }

    /// Overrides [`STREAM_IDLE_LIMIT`] (tests use a short one).
    pub fn with_idle_limit(mut self, limit: Duration) -> Self {
        self.idle_limit = limit;
        self
    }

    /// The next event. Keep-alive comments are skipped; dropped or silent connections
    /// are reopened and resumed.
    pub async fn next(&mut self) -> Result<StreamedEvent> {
        loop {
            if let Some(end) = block_end(&self.buffer) {
                let block: Vec<u8> = self.buffer.drain(..end).collect();
                if let Some(event) = parse(&String::from_utf8_lossy(&block))? {
                    self.last_id = Some(event.id);
                    return Ok(event);
                }
                continue;
            }
            let chunk = match self.response.as_mut() {
                Some(response) => {
                    match tokio::time::timeout(self.idle_limit, response.chunk()).await {
                        Ok(chunk) => chunk.ok().flatten(),
                        Err(_) => {
                            tracing::info!(
                                idle_secs = self.idle_limit.as_secs(),
                                "the event stream went silent; reconnecting"
                            );
                            None
                        }
                    }
                }
                None => None,
            };
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
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

/// Where the first complete block (an event, or comments) ends, its blank line
/// included. The specification allows `\n`, `\r\n` and `\r` line ends.
fn block_end(buffer: &[u8]) -> Option<usize> {
    const ENDS: [&[u8]; 3] = [b"\n\n", b"\r\n\r\n", b"\r\r"];
    (0..buffer.len()).find_map(|i| {
        ENDS.iter()
            .find(|end| buffer[i..].starts_with(end))
            .map(|end| i + end.len())
    })
}

/// One `id:`/`event:`/`data:` block; `None` for a block of comments only. Several
/// `data:` lines join with newlines, as the SSE specification says.
fn parse(block: &str) -> Result<Option<StreamedEvent>> {
    let (mut id, mut name, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => id = value.trim().parse().ok(),
            "event" => name = Some(value.trim().to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    match (id, name) {
        (Some(id), Some(name)) => {
            let data = serde_json::from_str(&data.join("\n"))
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

    #[test]
    fn multi_line_data_joins_with_newlines() {
        let event = parse("id: 2\nevent: x\ndata: {\"text\":\ndata: \"a\"}\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(event.data["text"], "a");
        let text = parse("id: 3\nevent: x\ndata: \"one\ndata: two\"\n\n");
        // A JSON string cannot hold a raw newline: the join is seen, and refused.
        assert!(text.is_err());
    }

    #[test]
    fn a_character_split_across_chunks_is_decoded_whole() {
        let whole = "id: 4\nevent: x\ndata: {\"t\":\"é✓\"}\n\n".as_bytes();
        let split = whole.iter().position(|&b| b == 0xC3).unwrap() + 1;
        let mut buffer = whole[..split].to_vec();
        assert_eq!(block_end(&buffer), None);
        buffer.extend_from_slice(&whole[split..]);
        let end = block_end(&buffer).unwrap();
        let event = parse(&String::from_utf8_lossy(&buffer[..end]))
            .unwrap()
            .unwrap();
        assert_eq!(event.data["t"], "é✓");
        assert_eq!(block_end(b"id: 1\r\n\r\n"), Some(9));
    }
}
