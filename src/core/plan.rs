//! Plans: a task run in `plan` mode proposes steps; a person approves them (as they
//! are or edited), revises them with feedback, or rejects them.
//!
//! Approving turns each step into a child task in one transaction, its `dependsOn`
//! resolved from the step's refs. A plan is checked whole before anything is made: a
//! ref that names no step, a cycle, too many steps or an empty title refuses it all.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::RuleError;
use super::model::{Task, TaskMode, TaskStatus};
use super::time::Timestamp;

/// The most steps one plan may have.
pub const MAX_STEPS: usize = 50;

/// What a planning run proposes, and what `POST /api/tasks/:id/approve` may take
/// edited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The steps, each to become one task.
    #[schema(inline, max_items = 50)]
    pub steps: Vec<PlanStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    /// A short name for the step, unique in the plan, that other steps' `dependsOn`
    /// use (e.g. `schema`, `api`, `tests`).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    #[serde(rename = "ref")]
    pub step_ref: String,
    /// What the step's task is called.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub title: String,
    /// What the step's task must do, in enough detail to do it without the plan.
    #[serde(default)]
    #[schema(max_length = 262144)]
    pub description: String,
    /// The refs of the steps that must be done before this one.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// The plan's steps in an order where each comes after those it depends on, or why
/// the plan cannot be approved.
pub fn validate(plan: &Plan) -> Result<Vec<usize>, RuleError> {
    let invalid = |m: String| Err(RuleError::Invalid(m));
    if plan.steps.is_empty() {
        return invalid("the plan has no steps".into());
    }
    if plan.steps.len() > MAX_STEPS {
        return invalid(format!(
            "the plan has {} steps; at most {MAX_STEPS} are allowed",
            plan.steps.len()
        ));
    }
    let index = |r: &str| plan.steps.iter().position(|s| s.step_ref == r);
    for (i, step) in plan.steps.iter().enumerate() {
        let n = i + 1;
        if step.step_ref.trim().is_empty() {
            return invalid(format!("step {n} has an empty ref"));
        }
        if step.step_ref.chars().count() > super::validate::MAX_NAME_LEN {
            return invalid(format!(
                "step {n}'s ref is longer than {} characters",
                super::validate::MAX_NAME_LEN
            ));
        }
        if index(&step.step_ref) != Some(i) {
            return invalid(format!("ref {:?} names more than one step", step.step_ref));
        }
        super::validate::text(
            &format!("step {:?}: title", step.step_ref),
            &step.title,
            super::validate::MAX_TITLE_LEN,
        )?;
        super::validate::optional_text(
            &format!("step {:?}: description", step.step_ref),
            Some(&step.description),
            super::validate::MAX_DESCRIPTION_LEN,
        )?;
        for dep in &step.depends_on {
            if index(dep).is_none() {
                return invalid(format!(
                    "step {:?} depends on {dep:?}, which is no step of the plan",
                    step.step_ref
                ));
            }
        }
    }
    // Kahn's algorithm: whatever cannot be ordered is on a cycle.
    let mut order = Vec::with_capacity(plan.steps.len());
    let mut placed = vec![false; plan.steps.len()];
    while order.len() < plan.steps.len() {
        let ready = (0..plan.steps.len()).find(|&i| {
            !placed[i]
                && plan.steps[i]
                    .depends_on
                    .iter()
                    .all(|d| index(d).is_some_and(|j| placed[j]))
        });
        match ready {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                let stuck: Vec<&str> = (0..plan.steps.len())
                    .filter(|&i| !placed[i])
                    .map(|i| plan.steps[i].step_ref.as_str())
                    .collect();
                return invalid(format!(
                    "the plan's steps depend on each other in a cycle: {}",
                    stuck.join(", ")
                ));
            }
        }
    }
    Ok(order)
}

/// `POST /api/tasks/:id/approve`: the child tasks of `plan` (the body's, or the one
/// the planning run left), in an order where dependencies come first, each already
/// naming its dependencies' ids. The plan task is completed. Its children inherit its
/// workspace, runner preference, priority, attempts, cost cap and base branch.
pub fn approve(
    task: &mut Task,
    edited: Option<Plan>,
    now: Timestamp,
) -> Result<Vec<Task>, RuleError> {
    if task.status != TaskStatus::Planned {
        return Err(RuleError::Conflict(format!(
            "task {} is {}, not planned: there is no plan to approve",
            task.id, task.status
        )));
    }
    let plan = match edited {
        Some(plan) => plan,
        None => proposed(task).ok_or_else(|| {
            RuleError::Conflict(format!(
                "task {} holds no plan; send one in the body",
                task.id
            ))
        })?,
    };
    let order = validate(&plan)?;
    let mut ids = vec![String::new(); plan.steps.len()];
    let mut children = Vec::with_capacity(order.len());
    for i in order {
        let step = &plan.steps[i];
        let mut child = Task {
            description: step.description.clone(),
            runner_preference: task.runner_preference,
            priority: task.priority,
            max_attempts: task.max_attempts,
            max_cost_usd: task.max_cost_usd,
            mode: TaskMode::Run,
            base_branch: task.base_branch.clone(),
            parent_id: Some(task.id.clone()),
            ..Task::new(task.workspace_id.clone(), &step.title, now)
        };
        child.depends_on = step
            .depends_on
            .iter()
            .filter_map(|r| plan.steps.iter().position(|s| &s.step_ref == r))
            .map(|j| ids[j].clone())
            .collect();
        ids[i] = child.id.clone();
        children.push(child);
    }
    task.status = TaskStatus::Completed;
    task.completed_at = Some(now);
    Ok(children)
}

/// The plan a planning run left in the task's result.
pub fn proposed(task: &Task) -> Option<Plan> {
    let plan = task.result.as_ref()?.get("plan")?.clone();
    serde_json::from_value(plan).ok()
}

/// `POST /api/tasks/:id/revise`: planning runs again, in the same session when the
/// agent has it, told what to change. `session` is the last planning run's.
pub fn revise(task: &mut Task, feedback: &str, session: Option<String>) -> Result<(), RuleError> {
    if task.status != TaskStatus::Planned {
        return Err(RuleError::Conflict(format!(
            "task {} is {}, not planned: there is no plan to revise",
            task.id, task.status
        )));
    }
    super::validate::text("feedback", feedback, super::actions::MAX_TEXT_LEN)?;
    task.status = TaskStatus::Pending;
    task.feedback = Some(feedback.trim().to_owned());
    task.resume_session_id = session.or(task.resume_session_id.take());
    task.attempts = 0;
    task.claimed_by = None;
    task.worker_id = None;
    task.claimed_at = None;
    Ok(())
}

/// `POST /api/tasks/:id/reject`: only a plan can be rejected; it is then cancelled.
pub fn reject(task: &Task) -> Result<(), RuleError> {
    if task.status != TaskStatus::Planned {
        return Err(RuleError::Conflict(format!(
            "task {} is {}, not planned: there is no plan to reject",
            task.id, task.status
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::time;
    use serde_json::json;

    fn step(r: &str, deps: &[&str]) -> PlanStep {
        PlanStep {
            step_ref: r.into(),
            title: format!("Do {r}"),
            description: format!("do {r}"),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn planned(plan: &Plan) -> Task {
        let mut t = Task::new("ws-1".into(), "plan it", time::now());
        t.mode = TaskMode::Plan;
        t.status = TaskStatus::Planned;
        t.priority = 7;
        t.result = Some(json!({ "text": "here", "plan": plan }));
        t
    }

    #[test]
    fn bad_plans_are_refused_with_the_reason() {
        let cases = [
            (vec![], "no steps"),
            (vec![step("a", &["zz"])], "no step of the plan"),
            (vec![step("a", &["b"]), step("b", &["a"])], "cycle: a, b"),
            (vec![step("a", &[]), step("a", &[])], "more than one step"),
            (
                vec![PlanStep {
                    title: " ".into(),
                    ..step("a", &[])
                }],
                "title must not be empty",
            ),
            (
                (0..=MAX_STEPS)
                    .map(|i| step(&format!("s{i}"), &[]))
                    .collect(),
                "at most 50",
            ),
        ];
        for (steps, why) in cases {
            let err = validate(&Plan { steps }).unwrap_err().to_string();
            assert!(err.contains(why), "{err} should say {why}");
        }
    }

    #[test]
    fn approval_makes_children_in_dependency_order_once() {
        let plan = Plan {
            steps: vec![
                step("api", &["schema"]),
                step("schema", &[]),
                step("tests", &["api", "schema"]),
            ],
        };
        let mut task = planned(&plan);
        let children = approve(&mut task, None, time::now()).unwrap();
        let titles: Vec<&str> = children.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["Do schema", "Do api", "Do tests"]);
        assert_eq!(children[1].depends_on, [children[0].id.clone()]);
        assert_eq!(
            children[2].depends_on,
            [children[1].id.clone(), children[0].id.clone()]
        );
        assert!(
            children
                .iter()
                .all(|c| c.parent_id.as_deref() == Some(task.id.as_str()) && c.priority == 7)
        );
        assert_eq!(task.status, TaskStatus::Completed);
        assert!(matches!(
            approve(&mut task, None, time::now()),
            Err(RuleError::Conflict(_))
        ));
    }

    #[test]
    fn an_edited_plan_replaces_the_proposed_one_and_a_bad_one_changes_nothing() {
        let mut task = planned(&Plan {
            steps: vec![step("a", &[])],
        });
        let before = task.clone();
        let bad = Plan {
            steps: vec![step("x", &["y"])],
        };
        assert!(approve(&mut task, Some(bad), time::now()).is_err());
        assert_eq!(task, before);
        let edited = Plan {
            steps: vec![step("x", &[]), step("y", &["x"])],
        };
        assert_eq!(
            approve(&mut task, Some(edited), time::now()).unwrap().len(),
            2
        );
    }

    #[test]
    fn revise_and_reject_need_a_plan() {
        let mut task = planned(&Plan {
            steps: vec![step("a", &[])],
        });
        task.attempts = 1;
        assert!(revise(&mut task, " ", None).is_err());
        revise(&mut task, "use Postgres", Some("s-1".into())).unwrap();
        assert_eq!(task.status, TaskStatus::Pending);
        assert_eq!(
            (
                task.feedback.as_deref(),
                task.resume_session_id.as_deref(),
                task.attempts
            ),
            (Some("use Postgres"), Some("s-1"), 0)
        );
        assert!(reject(&task).is_err());
        assert!(revise(&mut task, "again", None).is_err());
    }
}
