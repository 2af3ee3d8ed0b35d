//! Events: what the stores write, in the same transaction as the change they describe,
//! so that a subscriber resuming from an event id misses nothing.

use std::sync::Arc;

use serde_json::{Value, json};

use super::model::{Task, Worker};

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
}

impl StoredEvent {
    /// Whether this event may make a waiting claim succeed: a new task, or one back
    /// in the queue.
    pub fn offers_work(&self) -> bool {
        // Only a task's new status tells; other events need no parsing.
        match self.name.as_str() {
            "task.updated" => serde_json::from_str::<Value>(&self.data)
                .is_ok_and(|data| offers_work(&self.name, &data)),
            name => offers_work(name, &Value::Null),
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

/// How many `/api/events` streams one caller (an account, or the admin token) may
/// hold open on one server. Agents need one each and a person a few dashboard tabs;
/// more is a leak.
pub const MAX_STREAMS_PER_CALLER: usize = 64;

/// Whether an event named `name` carrying `data` may make a claim succeed: a new task,
/// or one back in the queue. Waiting claims on the server and idle agents both wake on
/// it.
pub fn offers_work(name: &str, data: &Value) -> bool {
    match name {
        "task.created" | STREAM_RESET => true,
        "task.updated" => data["task"]["status"] == "pending",
        _ => false,
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
            data: json!({ "worker": worker }),
        }
    }

    pub fn worker_message(worker: &Worker, message: &Value) -> Self {
        Event {
            name: "worker.message",
            workspace_id: worker.workspace_id.clone(),
            data: json!({ "workerId": worker.id, "message": message }),
        }
    }

    fn task(name: &'static str, task: &Task) -> Self {
        Event {
            name,
            workspace_id: task.workspace_id.clone(),
            data: json!({ "task": task }),
        }
    }
}
