//! Triggers: another system makes a task by firing a trigger with the trigger's own
//! token, and may pass a JSON body whose values fill the task's title and
//! description.

use serde_json::Value;

use super::RuleError;
use super::ids::{IdKind, new_id};
use super::model::{Task, TaskTemplate, Trigger};
use super::time::Timestamp;
use super::validate;

/// A new trigger, its name and template checked (placeholders filled with nothing,
/// the title must still make a task).
pub fn new(
    workspace_id: String,
    name: &str,
    task: TaskTemplate,
    created_by: &str,
    now: Timestamp,
) -> Result<Trigger, RuleError> {
    validate::text("name", name, validate::MAX_NAME_LEN)?;
    task.task(workspace_id.clone(), now)?;
    Ok(Trigger {
        id: new_id(IdKind::Trigger),
        workspace_id,
        name: name.trim().to_owned(),
        task,
        fired: 0,
        last_fired_at: None,
        created_by: created_by.to_owned(),
        created_at: now,
    })
}

/// The task a firing makes: the template, with every `{{payload.PATH}}` of its title
/// and description filled from `payload`, then checked as any new task.
pub fn task(
    template: &TaskTemplate,
    workspace_id: String,
    payload: &Value,
    now: Timestamp,
) -> Result<Task, RuleError> {
    let filled = TaskTemplate {
        title: fill(&template.title, payload),
        description: fill(&template.description, payload),
        ..template.clone()
    };
    filled.task(workspace_id, now)
}

/// `text` with each `{{payload.PATH}}` replaced by what PATH (dot-separated keys and
/// array indices, `{{payload}}` for the whole body) names in `payload`: a string as
/// it is, another value as its JSON, and nothing where the path leads nowhere.
/// Spaces inside the braces are allowed; other `{{…}}` stay as they are.
pub fn fill(text: &str, payload: &Value) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open + 2..].find("}}") else {
            break;
        };
        let inner = rest[open + 2..open + 2 + close].trim();
        let path = match inner.strip_prefix("payload") {
            Some("") => Some(""),
            Some(rest) => rest.strip_prefix('.'),
            None => None,
        };
        out.push_str(&rest[..open]);
        match path {
            Some(path) => out.push_str(&render(lookup(payload, path))),
            None => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &rest[open + 2 + close + 2..];
    }
    out.push_str(rest);
    out
}

fn lookup<'v>(payload: &'v Value, path: &str) -> Option<&'v Value> {
    if path.is_empty() {
        return Some(payload);
    }
    path.split('.').try_fold(payload, |value, key| match value {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn render(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_are_filled_from_the_body() {
        let body = json!({"alert": {"name": "disk full", "hosts": ["db1", "db2"], "level": 3}});
        assert_eq!(
            fill(
                "Fix {{payload.alert.name}} on {{ payload.alert.hosts.1 }}",
                &body
            ),
            "Fix disk full on db2"
        );
        assert_eq!(fill("level {{payload.alert.level}}", &body), "level 3");
        assert_eq!(fill("{{payload.alert.hosts}}", &body), r#"["db1","db2"]"#);
        assert_eq!(fill("[{{payload.nope.deeper}}]", &body), "[]");
        assert_eq!(
            fill("{{other}} {{payload.alert.name", &body),
            "{{other}} {{payload.alert.name"
        );
        assert_eq!(fill("all: {{payload}}", &json!("x")), "all: x");
        assert_eq!(fill("none", &Value::Null), "none");
    }

    #[test]
    fn a_filled_title_is_checked_like_any() {
        let template = TaskTemplate {
            title: "{{payload.title}}".into(),
            description: "From {{payload.who}}".into(),
            ..Default::default()
        };
        let now = crate::core::time::now();
        let task = task(
            &template,
            "ws-1".into(),
            &json!({"title": "Deploy", "who": "CI"}),
            now,
        )
        .unwrap();
        assert_eq!(
            (task.title.as_str(), task.description.as_str()),
            ("Deploy", "From CI")
        );
        let err = super::task(&template, "ws-1".into(), &json!({}), now).unwrap_err();
        assert!(err.to_string().contains("title"), "{err}");
    }
}
