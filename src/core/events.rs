//! Events: what the stores write, in the same transaction as the change they describe,
//! so that a subscriber resuming from an event id misses nothing.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::messages::{INSTRUCTION, USER_REPLY, is_instruction, is_user_reply};
use super::model::{Task, TaskStatus, Worker, WorkerStatus};

/// An event as stored, with the id `GET /api/events` sends and resumes from. Ids
/// increase in commit order.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub name: String,
    pub workspace_id: String,
    /// The JSON text as it was stored. Subscribers get it as it is: one event reaches
    /// many streams, and none of them parses or serialises it again.
    pub data: Arc<str>,
    /// [`StoredEvent::agent_audience`], worked out by the first stream that asks.
    pub audience: OnceLock<AgentAudience>,
}

/// Which agents' streams that take offers need an event. There an agent hears only
/// what it acts on for its account's runs (a cancel, a pause or a start, an answer or
/// an instruction) and learns of new work from offers:
/// the rest of the cluster's events would only cost it and the server, ten thousand
/// times over for ten thousand agents.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentAudience {
    Nobody,
    /// The agents of this account: one of its tasks or workers changed.
    Account(String),
    /// Every agent: a person's reply or instruction to a run (the event does not name
    /// the run's account), or a reset of the stream.
    Everyone,
}

impl StoredEvent {
    pub fn new(id: i64, name: String, workspace_id: String, data: Arc<str>) -> Self {
        StoredEvent {
            id,
            name,
            workspace_id,
            data,
            audience: OnceLock::new(),
        }
    }

    /// Which agents' streams taking offers need this event (parsed once per event,
    /// however many streams ask).
    pub fn agent_audience(&self) -> &AgentAudience {
        self.audience.get_or_init(|| {
            let parsed = || serde_json::from_str::<EventData>(&self.data).unwrap_or_default();
            match self.name.as_str() {
                STREAM_RESET => AgentAudience::Everyone,
                // What `buildd agent` acts on for a run of its own (`nudge_jobs` in
                // src/agent/mod.rs): a cancelled task, a worker paused or started
                // again. Every other change of a run is its own report coming back.
                "task.updated" => parsed()
                    .task
                    .filter(|t| t.status == TaskStatus::Cancelled)
                    .and_then(|t| t.claimed_by)
                    .map_or(AgentAudience::Nobody, AgentAudience::Account),
                "worker.updated" => parsed()
                    .worker
                    .filter(|w| matches!(w.status, WorkerStatus::Paused | WorkerStatus::Starting))
                    .map_or(AgentAudience::Nobody, |w| {
                        AgentAudience::Account(w.account_id)
                    }),
                // Most events are a runner's output: those are told apart without
                // parsing them.
                "worker.message"
                    if !self.data.contains(USER_REPLY) && !self.data.contains(INSTRUCTION) =>
                {
                    AgentAudience::Nobody
                }
                "worker.message" => match parsed().message {
                    Some(m) if is_user_reply(&m) || is_instruction(&m) => AgentAudience::Everyone,
                    _ => AgentAudience::Nobody,
                },
                _ => AgentAudience::Nobody,
            }
        })
    }

    /// Whether this event may make a waiting claim succeed: a new task, or one back
    /// in the queue.
    pub fn offers_work(&self) -> bool {
        // Only a task's new status tells; other events need no parsing.
        match self.name.as_str() {
            "task.updated" => serde_json::from_str::<EventData>(&self.data)
                .is_ok_and(|data| offers_work(&self.name, &data)),
            name => offers_work(name, &EventData::default()),
        }
    }
}

/// How often the server writes a keep-alive comment on an idle event stream.
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a client waits on a silent event stream before it counts the connection
/// as dead and reconnects: three keep-alives missed.
pub const STREAM_IDLE_LIMIT: std::time::Duration = KEEP_ALIVE.saturating_mul(3);

/// The name of the event a stream sends first when the client resumed from an event
/// that retention has deleted since: what happened in between is gone, so the client
/// must read the state afresh instead of trusting that it missed nothing.
pub const STREAM_RESET: &str = "stream.reset";

/// The event an agent's stream that takes offers (`?agentId=…&offers=true`) gets when
/// a task it may take is offered to it alone: `{"task":{…}}`, or `{}` to look for work
/// in general (grants changed, or offers may have been missed). It has no `id:`: it is
/// not in the event log, and resuming neither repeats nor skips it.
pub const TASK_OFFERED: &str = "task.offered";

/// How long an offered task waits for the agent's claim before it is offered to the
/// next agent: an agent that is full, outside its hours or gone does not answer.
pub const OFFER_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// How many `/api/events` streams one caller (an account, or the admin token) may
/// hold open on one server by default (`--max-streams-per-caller`). Every agent holds
/// one, and a fleet often shares an account: 500 CI jobs of one action account, each
/// running `buildd agent --once`, are 500 streams. An idle stream costs the server
/// about 26 KiB (`bench/idle_fleet.rs`: 1,000 streams, 33 MiB against 7 MiB without),
/// so a runaway client that opens all 4,096 holds about 100 MiB before it is refused
/// with 429: bounded, while any real fleet of one account fits.
pub const DEFAULT_MAX_STREAMS_PER_CALLER: usize = 4096;

/// Whether an event named `name` carrying `data` may make a claim succeed: a new task,
/// or one back in the queue. Waiting claims on the server and idle agents both wake on
/// it.
pub fn offers_work(name: &str, data: &EventData) -> bool {
    match name {
        "task.created" | STREAM_RESET => true,
        "task.updated" => data
            .task
            .as_ref()
            .is_some_and(|t| t.status == TaskStatus::Pending),
        _ => false,
    }
}

/// The `data:` of an event: `task.created` and `task.updated` carry the `task`,
/// `worker.updated` the `worker`, `worker.message` the `workerId` and the `message`,
/// and `stream.reset` its `reason` and `purgedThrough`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<Worker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Any JSON value: one entry of the runner's stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged_through: Option<i64>,
}

impl EventData {
    fn into_value(self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// One change, as `GET /api/events` will send it: a name, the workspace it belongs to
/// (for per-account scoping) and the full resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub workspace_id: String,
    pub data: Value,
}

impl Event {
    pub fn task_created(task: &Task) -> Self {
        Self::task("task.created", task)
    }

    pub fn task_updated(task: &Task) -> Self {
        Self::task("task.updated", task)
    }

    pub fn worker_updated(worker: &Worker) -> Self {
        Event {
            name: "worker.updated",
            workspace_id: worker.workspace_id.clone(),
            data: EventData {
                worker: Some(worker.clone()),
                ..EventData::default()
            }
            .into_value(),
        }
    }

    pub fn worker_message(worker: &Worker, message: &Value) -> Self {
        Event {
            name: "worker.message",
            workspace_id: worker.workspace_id.clone(),
            data: EventData {
                worker_id: Some(worker.id.clone()),
                message: Some(message.clone()),
                ..EventData::default()
            }
            .into_value(),
        }
    }

    fn task(name: &'static str, task: &Task) -> Self {
        Event {
            name,
            workspace_id: task.workspace_id.clone(),
            data: EventData {
                task: Some(task.clone()),
                ..EventData::default()
            }
            .into_value(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: Value) -> StoredEvent {
        StoredEvent::new(1, name.into(), "ws-1".into(), data.to_string().into())
    }

    #[test]
    fn an_agent_stream_gets_its_own_runs_and_peoples_words_only() {
        let created = event("task.created", serde_json::json!({}));
        assert_eq!(*created.agent_audience(), AgentAudience::Nobody);
        let reset = event(STREAM_RESET, serde_json::json!({}));
        assert_eq!(*reset.agent_audience(), AgentAudience::Everyone);
        let output = serde_json::json!({"workerId": "wrk-1", "message": {"type": "assistant"}});
        assert_eq!(
            *event("worker.message", output).agent_audience(),
            AgentAudience::Nobody
        );
        let reply = serde_json::json!({
            "workerId": "wrk-1",
            "message": crate::core::messages::user_reply("yes")
        });
        assert_eq!(
            *event("worker.message", reply).agent_audience(),
            AgentAudience::Everyone
        );
        // Unreadable data concerns no agent rather than every one.
        let garbled = StoredEvent::new(2, "task.updated".into(), "ws-1".into(), "{".into());
        assert_eq!(*garbled.agent_audience(), AgentAudience::Nobody);
    }
}
