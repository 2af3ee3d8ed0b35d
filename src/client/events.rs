//! Reading `GET /api/events` as it streams.

use serde_json::Value;

use super::{ClientError, Result};

/// One event as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedEvent {
    pub id: i64,
    pub name: String,
    pub data: Value,
}

pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    pub(super) fn new(response: reqwest::Response) -> Self {
        EventStream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event; `None` when the server ended the stream. Keep-alive comments
    /// are read and skipped.
    pub async fn next(&mut self) -> Result<Option<StreamedEvent>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&block)? {
                    return Ok(Some(event));
                }
                continue;
            }
            let chunk = self
                .response
                .chunk()
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: self.response.url().to_string(),
                    reason: e.to_string(),
                })?;
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(None),
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
