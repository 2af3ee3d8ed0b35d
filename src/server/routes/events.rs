//! `GET /api/events`: the live event stream (Server-Sent Events).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, KeepAliveStream, Sse};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::api::EventsQuery;
use crate::core::events::{
    AgentAudience, EventData, KEEP_ALIVE, STREAM_RESET, StoredEvent, TASK_OFFERED,
};
use crate::core::policy::Deed;
use crate::core::{agents, keys, runners};
use crate::server::AppState;
use crate::server::auth::{Caller, bearer_token};
use crate::server::error::{ApiError, ApiResult, Params};
use crate::server::events::{READ_BATCH, StreamSlot};
use crate::server::presence::Held;
use crate::server::waiters::{self, StreamEnlisted};

type EventStream = Sse<KeepAliveStream<ReceiverStream<Result<SseEvent, Infallible>>>>;

#[utoipa::path(get, path = "/api/events", tag = "events",
    params(EventsQuery, ("Last-Event-ID" = Option<i64>, Header, nullable = false, description = "Resume after this event id (the `id:` of an event; 0 or below replays all); it wins over `lastEventId`")),
    responses(
        (status = 200, description = "Server-Sent Events: `task.created`, `task.updated`, `worker.updated`, `worker.message`, each with an increasing `id:` and JSON `data:`. A stream resumed from an event that retention has deleted since starts with `stream.reset` (`{\"reason\", \"purgedThrough\"}`): read the state again.", content_type = "text/event-stream", body = EventData),
        ApiError,
    ))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Params(query): Params<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<EventStream> {
    if let Some(ws) = &query.workspace_id {
        caller.may_in_named(&state, Deed::Read, ws).await?;
    }
    // The query's id is read even when the header wins (a bad one is refused, never
    // ignored). A resume point before the first event (0 or below) replays all.
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| ApiError::BadRequest("Last-Event-ID must be an event id".into()))?,
        ),
        None => query.last_event_id,
    }
    .map(|id| id.max(0));

    let slot = state.events.open_stream(caller.name()).map_err(|max| {
        ApiError::TooManyRequests(format!(
            "this caller already has {max} event streams open on this server (its \
             --max-streams-per-caller); close one first"
        ))
    })?;
    let key_hash = match &caller {
        Caller::Admin => None,
        Caller::Account(_) => Some(keys::hash_key(bearer_token(&headers)?)),
    };
    // An agent following the stream stays listed as connected for as long as it does.
    let presence = match &query.agent_id {
        Some(agent_id) => {
            let account = caller.require_account()?;
            agents::check_id(agent_id)?;
            Some(state.presence.hold(agent_id.clone(), account.id.clone()))
        }
        None => None,
    };
    let offers = match (query.offers.unwrap_or(false), &query.agent_id) {
        (false, _) => None,
        (true, None) => {
            return Err(ApiError::BadRequest(
                "offers are made to an agent: give agentId too".into(),
            ));
        }
        (true, Some(agent_id)) => {
            let runners: Vec<String> = query
                .runners
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect();
            runners::check_advertised(&runners)?;
            let account = caller.require_account()?;
            Some(
                state
                    .waiters
                    .enlist_stream(
                        &state,
                        account,
                        query.workspace_id.as_deref(),
                        &runners,
                        agent_id,
                    )
                    .await?,
            )
        }
    };

    // Subscribe before reading the backlog, so nothing falls between the two.
    let live = match (&offers, &caller) {
        (Some(_), Caller::Account(account)) => state.events.subscribe_agent(&account.id),
        _ => state.events.subscribe(),
    };
    let start = resume.unwrap_or_else(|| state.events.last_id());
    let view = View {
        account: caller.scope(),
        key_hash,
        workspace: query.workspace_id,
        own_runs_only: offers.is_some(),
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(follow(
        state,
        (slot, presence, offers),
        view,
        start,
        live,
        tx,
    ));
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// What one subscriber may see.
struct View {
    /// The account watching, or `None` for the admin.
    account: Option<String>,
    /// The hash of the key the account connected with.
    key_hash: Option<String>,
    /// The `?workspaceId=` filter.
    workspace: Option<String>,
    /// An agent's stream that takes offers: only the events its runs need
    /// ([`StoredEvent::agent_audience`]).
    own_runs_only: bool,
}

/// What to do with one event.
enum Verdict {
    Send,
    Skip,
    /// The caller's key no longer works: end the stream.
    End,
}

impl View {
    async fn judge(&mut self, state: &AppState, event: &StoredEvent) -> Verdict {
        if self.own_runs_only {
            match event.agent_audience() {
                AgentAudience::Nobody => return Verdict::Skip,
                AgentAudience::Account(id) if self.account.as_ref() != Some(id) => {
                    return Verdict::Skip;
                }
                AgentAudience::Account(_) | AgentAudience::Everyone => {}
            }
        }
        if self
            .workspace
            .as_ref()
            .is_some_and(|ws| *ws != event.workspace_id)
        {
            return Verdict::Skip;
        }
        let (Some(account), Some(key_hash)) = (&self.account, &self.key_hash) else {
            return Verdict::Send;
        };
        // Read at most every few seconds for all the streams of the key.
        match state.events.access(key_hash).await {
            Ok(Some(access)) if access.account_id == *account => {
                if access.workspaces.contains(&event.workspace_id) {
                    Verdict::Send
                } else {
                    Verdict::Skip
                }
            }
            Ok(_) => Verdict::End,
            // Without a fresh answer, show nothing rather than too much.
            Err(_) => Verdict::Skip,
        }
    }
}

fn to_sse(event: &StoredEvent) -> SseEvent {
    SseEvent::default()
        .id(event.id.to_string())
        .event(event.name.clone())
        .data(&*event.data)
}

/// Sends everything after `last` the view allows: first from the database, then live.
///
/// `held` lives as long as the stream: its slot among the caller's streams, the
/// presence of the agent following it, if one is, and its place among those waiting
/// for offers, if it takes them.
async fn follow(
    state: AppState,
    held: (StreamSlot, Option<Held>, Option<StreamEnlisted>),
    mut view: View,
    mut last: i64,
    mut live: broadcast::Receiver<Arc<StoredEvent>>,
    tx: mpsc::Sender<Result<SseEvent, Infallible>>,
) {
    if !catch_up(&state, &mut view, &mut last, &tx).await {
        return;
    }
    loop {
        let received = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = held.0.revoked.cancelled() => return,
            _ = tx.closed() => return,
            _ = woken(&held.2) => {
                if !send_offer(held.2.as_ref(), &tx).await {
                    return;
                }
                continue;
            }
            _ = answer_due(&held.2) => {
                if let Some(enlisted) = &held.2
                    && let Some(task) = enlisted.waiter.take_overdue()
                    && let Err(e) = waiters::pass_on(&state, &enlisted.waiter, &task.id, false).await
                {
                    tracing::warn!(error = %e, "cannot pass an unanswered offer on; the sweep will");
                }
                continue;
            }
            received = live.recv() => received,
        };
        match received {
            Ok(event) => {
                if event.id > last && !deliver(&state, &mut view, &mut last, &event, &tx).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if !catch_up(&state, &mut view, &mut last, &tx).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Until the stream's waiter is woken (never, for a stream without offers).
async fn woken(offers: &Option<StreamEnlisted>) {
    match offers {
        Some(enlisted) => enlisted.waiter.woken().await,
        None => std::future::pending().await,
    }
}

/// Until the offer the stream sent last is due unanswered (never, without one).
async fn answer_due(offers: &Option<StreamEnlisted>) {
    match offers.as_ref().and_then(|o| o.waiter.answer_due()) {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends the agent a [`TASK_OFFERED`] event: the task it was woken for, or none (look
/// for work). False once the client is gone.
async fn send_offer(
    offers: Option<&StreamEnlisted>,
    tx: &mpsc::Sender<Result<SseEvent, Infallible>>,
) -> bool {
    let Some(enlisted) = offers else {
        return true;
    };
    let task = enlisted.waiter.take_offer();
    let event = SseEvent::default()
        .event(TASK_OFFERED)
        .json_data(EventData {
            task: task.clone(),
            ..EventData::default()
        })
        .unwrap_or_default();
    if let Some(task) = task {
        enlisted.waiter.sent(task);
    }
    tx.send(Ok(event)).await.is_ok()
}

/// Reads and sends the events after `last` from the database. False once the client
/// is gone or the database cannot be read (the client reconnects and resumes).
///
/// When retention has deleted events after `last`, the client first gets a
/// [`STREAM_RESET`] event (with the id of the newest deleted event) telling it to read
/// the state afresh: what it missed is gone, and a silent gap would be a lie.
async fn catch_up(
    state: &AppState,
    view: &mut View,
    last: &mut i64,
    tx: &mpsc::Sender<Result<SseEvent, Infallible>>,
) -> bool {
    match state.store.events_purged_through().await {
        Ok(purged) if *last < purged => {
            let reset = SseEvent::default()
                .id(purged.to_string())
                .event(STREAM_RESET)
                .json_data(EventData {
                    reason: Some(
                        "events after the one you resumed from were deleted by retention; \
                         read the state again"
                            .into(),
                    ),
                    purged_through: Some(purged),
                    ..EventData::default()
                })
                .unwrap_or_default();
            if tx.send(Ok(reset)).await.is_err() {
                return false;
            }
            *last = purged;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "event retention unreadable; closing the stream");
            return false;
        }
    }
    loop {
        let batch = match state.store.events_after(*last, READ_BATCH).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "event backlog unreadable; closing the stream");
                return false;
            }
        };
        let full = batch.len() == READ_BATCH as usize;
        for event in &batch {
            if !deliver(state, view, last, event, tx).await {
                return false;
            }
        }
        if !full {
            return true;
        }
    }
}

async fn deliver(
    state: &AppState,
    view: &mut View,
    last: &mut i64,
    event: &StoredEvent,
    tx: &mpsc::Sender<Result<SseEvent, Infallible>>,
) -> bool {
    *last = event.id;
    match view.judge(state, event).await {
        Verdict::Send => tx.send(Ok(to_sse(event))).await.is_ok(),
        Verdict::Skip => true,
        Verdict::End => false,
    }
}
