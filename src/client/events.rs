//! Reading `GET /api/events` as it streams, reconnecting when it drops.
//!
//! The bytes are decoded and parsed by `eventsource-stream` (riding on reqwest, so
//! there is one HTTP and TLS stack; see the README for why not `eventsource-client`):
//! a character split across two network chunks decodes whole, and multi-line `data:`
//! joins with newlines, as the SSE specification says.
//!
//! When the connection ends, fails, or stays silent for [`STREAM_IDLE_LIMIT`] (the
//! server writes a keep-alive every [`crate::core::events::KEEP_ALIVE`], so silence
//! means a dead connection or a stuck server), the stream reconnects with growing
//! pauses and resumes after the last event it delivered (`Last-Event-ID`), so a server
//! restart costs a pause, never a lost or repeated event. It gives up after
//! [`GIVE_UP_AFTER`] without a connection.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};

use super::{Client, ClientError, Result, backoff};
use crate::core::events::{EventData, STREAM_IDLE_LIMIT, TASK_OFFERED};

/// How long the stream keeps trying to reconnect before it reports the server gone.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// One event as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedEvent {
    pub id: i64,
    pub name: String,
    pub data: EventData,
}

type Parsed = std::result::Result<Event, EventStreamError<reqwest::Error>>;

pub struct EventStream {
    client: Client,
    workspace_id: Option<String>,
    /// The agent following the stream, if one is ([`Client::agent_events`]).
    agent: Option<AgentFollowing>,
    /// The id of the last event delivered, to resume after.
    last_id: Option<i64>,
    events: Option<Pin<Box<dyn Stream<Item = Parsed> + Send>>>,
    /// When bytes last arrived, keep-alive comments included (the parser passes
    /// comments over, so only the bytes tell that the connection lives).
    last_seen: Arc<Mutex<Instant>>,
    idle_limit: Duration,
}

/// An agent's stream: its id goes with each connection, and each (re)connection is
/// told, because the server may have forgotten an agent that was away for a lease.
#[derive(Clone)]
pub(super) struct AgentFollowing {
    pub id: String,
    /// Its runners, when the stream takes offers of tasks it can run
    /// ([`crate::core::events::TASK_OFFERED`]).
    pub runners: Option<Vec<String>>,
    pub connected: Arc<tokio::sync::Notify>,
}

/// What ended one wait on the stream.
enum Woken {
    Parsed(Option<Parsed>),
    Idle,
}

impl EventStream {
    /// Connects once; an error here (refused token, unknown workspace) is final.
    pub(super) async fn open(
        client: Client,
        workspace_id: Option<String>,
        agent: Option<AgentFollowing>,
        last_id: Option<i64>,
    ) -> Result<Self> {
        let response = client
            .open_events(workspace_id.as_deref(), agent.as_ref(), last_id)
            .await?;
        if let Some(agent) = &agent {
            agent.connected.notify_one();
        }
        let last_seen = Arc::new(Mutex::new(Instant::now()));
        Ok(EventStream {
            client,
            workspace_id,
            agent,
            last_id,
            events: Some(parse_stream(response.bytes_stream(), last_seen.clone())),
            last_seen,
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
            let Some(events) = self.events.as_mut() else {
                self.reconnect().await?;
                continue;
            };
            let seen = *self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            let woken = tokio::select! {
                parsed = events.next() => Woken::Parsed(parsed),
                _ = tokio::time::sleep_until((seen + self.idle_limit).into()) => Woken::Idle,
            };
            match woken {
                Woken::Parsed(Some(Ok(event))) => {
                    if let Some(event) = decode(event)? {
                        // An offer is not in the event log: resuming goes by the others.
                        if event.name != TASK_OFFERED {
                            self.last_id = Some(event.id);
                        }
                        return Ok(event);
                    }
                }
                // The connection ended or broke: resume after the last event.
                Woken::Parsed(Some(Err(_)) | None) => self.reconnect().await?,
                Woken::Idle => {
                    let last = *self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
                    if last.elapsed() >= self.idle_limit {
                        tracing::info!(
                            idle_secs = self.idle_limit.as_secs(),
                            "the event stream went silent; reconnecting"
                        );
                        self.reconnect().await?;
                    }
                }
            }
        }
    }

    async fn reconnect(&mut self) -> Result<()> {
        // A partial event from the lost connection is sent again after resuming.
        self.events = None;
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            match self
                .client
                .open_events(
                    self.workspace_id.as_deref(),
                    self.agent.as_ref(),
                    self.last_id,
                )
                .await
            {
                Ok(response) => {
                    if let Some(agent) = &self.agent {
                        agent.connected.notify_one();
                    }
                    *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                    let bytes = response.bytes_stream();
                    self.events = Some(parse_stream(bytes, self.last_seen.clone()));
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

/// Parses a stream of network chunks into events, noting when bytes arrive.
fn parse_stream<B, E>(
    bytes: impl Stream<Item = std::result::Result<B, E>> + Send + 'static,
    last_seen: Arc<Mutex<Instant>>,
) -> Pin<Box<dyn Stream<Item = std::result::Result<Event, EventStreamError<E>>> + Send>>
where
    B: AsRef<[u8]> + Send + 'static,
    E: Send + 'static,
{
    let noted = bytes.inspect(move |_| {
        *last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    });
    Box::pin(noted.eventsource())
}

/// One parsed event as buildd sends it: `None` for one without an id (buildd's have
/// one each, but for an offer, which is given id 0), an error for data that is not an
/// event's JSON.
fn decode(event: Event) -> Result<Option<StreamedEvent>> {
    let id = match event.id.trim().parse() {
        Ok(id) => id,
        Err(_) if event.event == TASK_OFFERED => 0,
        Err(_) => return Ok(None),
    };
    let data = serde_json::from_str(&event.data)
        .map_err(|e| ClientError::Protocol(format!("event {id}: {e}")))?;
    let name = match event.event.as_str() {
        "" => "message".to_owned(),
        name => name.to_owned(),
    };
    Ok(Some(StreamedEvent { id, name, data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `chunks`, as they would arrive from the network, into events.
    async fn events_of(chunks: &[&[u8]]) -> Vec<Result<Option<StreamedEvent>>> {
        let owned: Vec<std::result::Result<Vec<u8>, std::convert::Infallible>> =
            chunks.iter().map(|c| Ok(c.to_vec())).collect();
        let seen = Arc::new(Mutex::new(Instant::now()));
        let parsed: Vec<_> = parse_stream(futures::stream::iter(owned), seen)
            .collect()
            .await;
        parsed
            .into_iter()
            .map(|p| decode(p.expect("the test's bytes parse")))
            .collect()
    }

    fn worker_ids(events: Vec<Result<Option<StreamedEvent>>>) -> Vec<String> {
        events
            .into_iter()
            .map(|e| e.unwrap().unwrap().data.worker_id.unwrap())
            .collect()
    }

    #[tokio::test]
    async fn events_parse_and_comments_are_skipped() {
        let events = events_of(&[
            b": keep-alive\n\n",
            b"id: 7\nevent: worker.message\ndata: {\"workerId\":\"w-1\"}\n\n",
        ])
        .await;
        assert_eq!(events.len(), 1);
        let event = events.into_iter().next().unwrap().unwrap().unwrap();
        assert_eq!((event.id, event.name.as_str()), (7, "worker.message"));
        assert_eq!(event.data.worker_id.as_deref(), Some("w-1"));
        let bad = events_of(&[b"id: 1\nevent: x\ndata: {oops\n\n"]).await;
        assert!(bad[0].is_err());
    }

    #[tokio::test]
    async fn an_offer_has_no_id_and_other_events_without_one_are_skipped() {
        let events = events_of(&[
            b"event: task.offered\ndata: {}\n\n",
            b"event: other\ndata: {}\n\n",
        ])
        .await;
        let offer = events[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!((offer.id, offer.name.as_str()), (0, TASK_OFFERED));
        assert!(events[1].as_ref().unwrap().is_none());
    }

    #[tokio::test]
    async fn multi_line_data_joins_with_newlines() {
        let events = events_of(&[b"id: 2\nevent: x\ndata: {\"workerId\":\ndata: \"a\"}\n\n"]).await;
        assert_eq!(worker_ids(events), ["a"]);
        // The join is a newline: inside a JSON string that is refused, so it is seen.
        let text =
            events_of(&[b"id: 3\nevent: x\ndata: {\"workerId\": \"one\ndata: two\"}\n\n"]).await;
        assert!(text[0].is_err());
    }

    #[tokio::test]
    async fn a_character_split_across_chunks_is_decoded_whole() {
        let whole = "id: 4\nevent: x\ndata: {\"workerId\":\"é✓\"}\r\n\r\n".as_bytes();
        let split = whole.iter().position(|&b| b == 0xC3).unwrap() + 1;
        let events = events_of(&[&whole[..split], &whole[split..]]).await;
        assert_eq!(worker_ids(events), ["é✓"]);
    }
}
