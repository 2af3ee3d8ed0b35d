//! Notifications: a webhook is told when a task it follows reaches a status people
//! wait for (`task.waiting_input`, `task.completed`, …).
//!
//! Every notification is stored as a delivery before it is sent, keyed by webhook,
//! task, status and attempt, so a task's progress lines (which change the task but not
//! its status) or a dispatcher passing over the same events twice queue it once. A
//! delivery is retried with growing pauses until it is taken or it has been tried for
//! [`GIVE_UP_AFTER_HOURS`].

use chrono::Duration;
use serde_json::{Value, json};

use super::RuleError;
use super::model::{Delivery, DeliveryState, NotifyEvent, Task, TaskStatus, Webhook};
use super::time::Timestamp;

/// How long a delivery is retried before it is given up, in hours.
pub const GIVE_UP_AFTER_HOURS: i64 = 24;
/// The most a delivery is tried.
pub const MAX_ATTEMPTS: i32 = 20;

/// What a task's event tells a webhook, if anything: the status it has just reached.
/// `created` is the event `task.created` only.
pub fn event_of(event_name: &str, task: &Task) -> Option<NotifyEvent> {
    if event_name == "task.created" {
        return Some(NotifyEvent::Created);
    }
    if event_name != "task.updated" {
        return None;
    }
    Some(match task.status {
        TaskStatus::Running => NotifyEvent::Running,
        TaskStatus::WaitingInput => NotifyEvent::WaitingInput,
        TaskStatus::Planned => NotifyEvent::Planned,
        TaskStatus::Completed => NotifyEvent::Completed,
        TaskStatus::Failed => NotifyEvent::Failed,
        TaskStatus::Cancelled => NotifyEvent::Cancelled,
        _ => return None,
    })
}

/// Whether `webhook` follows `event` of a task of `workspace_id`.
pub fn follows(webhook: &Webhook, event: NotifyEvent, workspace_id: &str) -> bool {
    webhook.events.contains(&event)
        && webhook
            .workspace_id
            .as_deref()
            .is_none_or(|ws| ws == workspace_id)
}

/// What makes a notification one: a task reaching a status in one attempt. A second
/// event for the same (a progress line while it runs) queues nothing more.
pub fn dedupe_key(event: NotifyEvent, task: &Task) -> String {
    format!("{}:{}:{}", task.id, event.as_str(), task.attempts)
}

/// The line people read in a chat (Slack and Discord incoming webhooks show `text`
/// and `content` as they are).
pub fn text(event: NotifyEvent, task: &Task) -> String {
    let what = match event {
        NotifyEvent::Created => "queued",
        NotifyEvent::Running => "started",
        NotifyEvent::WaitingInput => "is waiting for an answer",
        NotifyEvent::Planned => "has a plan to approve",
        NotifyEvent::Completed => "completed",
        NotifyEvent::Failed => "failed",
        NotifyEvent::Cancelled => "was cancelled",
    };
    let mut line = format!("buildd: task “{}” ({}) {what}", task.title, task.id);
    let pr = task
        .result
        .as_ref()
        .and_then(|r| r.get("prUrl"))
        .and_then(Value::as_str);
    if let Some(pr) = pr {
        line += &format!(": {pr}");
    } else if let Some(error) = task
        .error
        .as_deref()
        .filter(|_| event == NotifyEvent::Failed)
    {
        line += &format!(": {error}");
    }
    line
}

/// The JSON a webhook is sent.
pub fn body(event: NotifyEvent, task: &Task, delivery_id: &str) -> Value {
    let text = text(event, task);
    json!({
        "text": text,
        "content": text,
        "event": event.as_str(),
        "deliveryId": delivery_id,
        "task": task,
    })
}

/// When a delivery that failed its `attempts`-th try is tried again, or `None` when it
/// is given up: doubling pauses from 1 s, at most 10 minutes apart.
pub fn retry_at(attempts: i32, created_at: Timestamp, now: Timestamp) -> Option<Timestamp> {
    if attempts >= MAX_ATTEMPTS || now - created_at >= Duration::hours(GIVE_UP_AFTER_HOURS) {
        return None;
    }
    let pause = Duration::seconds(1i64 << attempts.clamp(0, 10)).min(Duration::minutes(10));
    Some(now + pause)
}

/// The longest webhook secret.
pub const MAX_SECRET_LEN: usize = 200;

/// A new webhook, checked: an `http(s)` URL, at least one event (each once), a secret
/// of 1 to [`MAX_SECRET_LEN`] characters if it has one.
pub fn webhook(
    url: &str,
    events: &[NotifyEvent],
    workspace_id: Option<String>,
    secret: Option<&str>,
    now: Timestamp,
) -> Result<Webhook, RuleError> {
    super::validate::web_url("url", url)?;
    if events.is_empty() {
        return Err(RuleError::Invalid(format!(
            "events must name at least one of: {}",
            NotifyEvent::ALL
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some(secret) = secret {
        super::validate::text("secret", secret, MAX_SECRET_LEN)?;
    }
    let mut unique = Vec::with_capacity(events.len());
    for event in events {
        if !unique.contains(event) {
            unique.push(*event);
        }
    }
    Ok(Webhook {
        id: super::ids::new_id(super::ids::IdKind::Webhook),
        workspace_id,
        url: url.to_owned(),
        events: unique,
        has_secret: secret.is_some(),
        created_at: now,
    })
}

/// A new delivery of `event` of `task` to `webhook_id`, due now.
pub fn delivery(webhook_id: &str, event: NotifyEvent, task: &Task, now: Timestamp) -> Delivery {
    Delivery {
        id: super::ids::new_id(super::ids::IdKind::Delivery),
        webhook_id: webhook_id.to_owned(),
        event,
        task_id: task.id.clone(),
        state: DeliveryState::Pending,
        attempts: 0,
        last_status: None,
        last_error: None,
        next_attempt_at: Some(now),
        created_at: now,
        delivered_at: None,
    }
}

/// How one try went: the receiver's HTTP status, or why there was none.
pub type Attempt = Result<u16, String>;

/// Records a try: a 2xx delivers; anything else waits for [`retry_at`], or gives up.
pub fn after_attempt(delivery: &mut Delivery, attempt: Attempt, now: Timestamp) {
    delivery.attempts += 1;
    match attempt {
        Ok(status) if (200..300).contains(&status) => {
            delivery.state = DeliveryState::Delivered;
            delivery.delivered_at = Some(now);
            delivery.next_attempt_at = None;
            delivery.last_status = Some(status.into());
            delivery.last_error = None;
            return;
        }
        Ok(status) => {
            delivery.last_status = Some(status.into());
            delivery.last_error = Some(format!("the receiver answered HTTP {status}"));
        }
        Err(why) => {
            delivery.last_status = None;
            delivery.last_error = Some(why);
        }
    }
    delivery.next_attempt_at = retry_at(delivery.attempts, delivery.created_at, now);
    if delivery.next_attempt_at.is_none() {
        delivery.state = DeliveryState::Failed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::time;

    fn webhook(workspace: Option<&str>, events: &[NotifyEvent]) -> Webhook {
        Webhook {
            id: "whk-1".into(),
            workspace_id: workspace.map(str::to_owned),
            url: "https://hooks.example.com/x".into(),
            events: events.to_vec(),
            has_secret: false,
            created_at: time::now(),
        }
    }

    #[test]
    fn a_task_event_names_the_status_it_reached() {
        let mut task = Task::new("ws-1".into(), "Fix it", time::now());
        assert_eq!(event_of("task.created", &task), Some(NotifyEvent::Created));
        assert_eq!(event_of("task.updated", &task), None, "pending again");
        task.status = TaskStatus::WaitingInput;
        assert_eq!(
            event_of("task.updated", &task),
            Some(NotifyEvent::WaitingInput)
        );
        assert_eq!(event_of("worker.updated", &task), None);
        task.status = TaskStatus::Completed;
        assert_eq!(
            event_of("task.updated", &task),
            Some(NotifyEvent::Completed)
        );
    }

    #[test]
    fn webhooks_follow_their_events_in_their_workspace() {
        let everywhere = webhook(None, &[NotifyEvent::Completed]);
        assert!(follows(&everywhere, NotifyEvent::Completed, "ws-9"));
        assert!(!follows(&everywhere, NotifyEvent::Failed, "ws-9"));
        let one = webhook(Some("ws-1"), &[NotifyEvent::Completed]);
        assert!(follows(&one, NotifyEvent::Completed, "ws-1"));
        assert!(!follows(&one, NotifyEvent::Completed, "ws-2"));
    }

    #[test]
    fn one_status_of_one_attempt_is_one_notification() {
        let mut task = Task::new("ws-1".into(), "Fix it", time::now());
        task.attempts = 1;
        let first = dedupe_key(NotifyEvent::Running, &task);
        task.progress = Some("half way".into());
        assert_eq!(dedupe_key(NotifyEvent::Running, &task), first);
        task.attempts = 2;
        assert_ne!(dedupe_key(NotifyEvent::Running, &task), first);
    }

    #[test]
    fn the_line_says_what_happened_and_where_to_look() {
        let mut task = Task::new("ws-1".into(), "Fix it", time::now());
        task.result = Some(json!({"prUrl": "https://github.com/o/r/pull/7"}));
        let line = text(NotifyEvent::Completed, &task);
        assert!(
            line.contains("“Fix it”") && line.ends_with("completed: https://github.com/o/r/pull/7"),
            "{line}"
        );
        let body = body(NotifyEvent::Completed, &task, "dlv-1");
        assert_eq!(body["text"], body["content"]);
        assert_eq!(body["event"], "task.completed");
        assert_eq!(body["task"]["id"], task.id.as_str());
    }

    #[test]
    fn a_try_delivers_or_waits_or_gives_up() {
        let now = time::now();
        let task = Task::new("ws-1".into(), "Fix it", now);
        let mut d = delivery("whk-1", NotifyEvent::Completed, &task, now);
        after_attempt(&mut d, Ok(500), now);
        assert_eq!(
            (d.state, d.attempts, d.last_status),
            (DeliveryState::Pending, 1, Some(500))
        );
        assert_eq!(d.next_attempt_at, Some(now + Duration::seconds(2)));
        after_attempt(&mut d, Err("connection refused".into()), now);
        assert_eq!(d.last_error.as_deref(), Some("connection refused"));
        after_attempt(&mut d, Ok(204), now);
        assert_eq!((d.state, d.attempts), (DeliveryState::Delivered, 3));
        assert_eq!((d.delivered_at, d.next_attempt_at), (Some(now), None));
        let mut late = delivery("whk-1", NotifyEvent::Failed, &task, now);
        after_attempt(&mut late, Ok(404), now + Duration::hours(30));
        assert_eq!(late.state, DeliveryState::Failed);
    }

    #[test]
    fn retries_double_then_give_up() {
        let created = time::now();
        assert_eq!(
            retry_at(1, created, created),
            Some(created + Duration::seconds(2))
        );
        assert_eq!(
            retry_at(15, created, created),
            Some(created + Duration::minutes(10))
        );
        assert_eq!(retry_at(MAX_ATTEMPTS, created, created), None);
        assert_eq!(retry_at(1, created, created + Duration::hours(25)), None);
    }
}
