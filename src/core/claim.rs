//! Claiming: which tasks an account may take, how many, and what taking one does.

use serde::{Deserialize, Serialize};

use super::RuleError;
use super::events::Event;
use super::ids::{IdKind, new_id};
use super::keys;
use super::model::{
    Account, AccountType, Grant, RunnerPreference, Task, TaskStatus, Worker, WorkerStatus,
};
use super::time::Timestamp;

/// The most tasks one claim request may ask for.
pub const MAX_TASKS_PER_CLAIM: u32 = 50;
/// The longest a claim may wait for a task, in seconds.
pub const MAX_WAIT_SECS: u64 = 30;

/// A claim's size and wait as asked (`None`: the defaults, one task and no wait),
/// checked against [`MAX_TASKS_PER_CLAIM`] and [`MAX_WAIT_SECS`].
pub fn bounds(max_tasks: Option<u32>, wait: Option<u64>) -> Result<(u32, u64), RuleError> {
    let max_tasks = max_tasks.unwrap_or(1);
    if !(1..=MAX_TASKS_PER_CLAIM).contains(&max_tasks) {
        return Err(RuleError::Invalid(format!(
            "maxTasks must be between 1 and {MAX_TASKS_PER_CLAIM}"
        )));
    }
    let wait = wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(RuleError::Invalid(format!(
            "wait must be at most {MAX_WAIT_SECS} seconds"
        )));
    }
    Ok((max_tasks, wait))
}

/// The runner preferences an account of `account_type` may take: `any` and its own.
pub fn preferences_for(account_type: AccountType) -> [RunnerPreference; 2] {
    let own = match account_type {
        AccountType::User => RunnerPreference::User,
        AccountType::Service => RunnerPreference::Service,
        AccountType::Action => RunnerPreference::Action,
    };
    [RunnerPreference::Any, own]
}

/// Whether an account of `account_type` may run a task that prefers `preference`.
pub fn routes_to(preference: RunnerPreference, account_type: AccountType) -> bool {
    preferences_for(account_type).contains(&preference)
}

/// Whether a claim of `account` waiting for work in `workspaces` (those it may claim
/// in, narrowed to the one it asked for) may take `task`, just offered: what a claim
/// would check that needs no database. Its limits are the claim's own to find, so a
/// claim woken for a task it then cannot take passes the task on.
pub fn may_take(
    task: &Task,
    account: &Account,
    workspaces: &std::collections::HashSet<String>,
    runners: &[String],
    now: Timestamp,
) -> bool {
    task.status == TaskStatus::Pending
        && workspaces.contains(&task.workspace_id)
        && routes_to(task.runner_preference, account.account_type)
        && super::runners::can_run(task, runners)
        && super::workflow::preference_allows(task, &account.id, now)
}

/// The GitHub repository (`owner/repo`) to wake with a `repository_dispatch` for a new
/// `task`: an action task, and an action account with a `githubRepo` that may claim in
/// the task's workspace (`grant`). A GitHub Actions runner only runs when woken, so
/// these accounts are told instead of waiting to claim.
pub fn dispatch_repo<'a>(
    task: &Task,
    account: &'a Account,
    grant: Option<&Grant>,
) -> Option<&'a str> {
    let wanted = task.runner_preference == RunnerPreference::Action
        && account.account_type == AccountType::Action
        && grant.is_some_and(|g| g.can_claim && g.workspace_id == task.workspace_id);
    account.github_repo.as_deref().filter(|_| wanted)
}

/// How many tasks the account may take now: what it asked for, capped by its free
/// worker slots, and nothing at all once today's spend has reached `maxCostPerDay`.
pub fn free_slots(account: &Account, active_workers: i64, cost_today: f64, requested: u32) -> u32 {
    if limit_reached(account, active_workers, cost_today).is_some() {
        return 0;
    }
    let free = (concurrency_cap(account) - active_workers).max(0);
    requested.min(u32::try_from(free).unwrap_or(u32::MAX))
}

/// How many workers the account may hold at once. Every worker that holds a slot
/// holds a Claude session (a run waiting for an answer or paused keeps its session
/// to resume it), so `maxConcurrentSessions`, where set, caps workers as well.
pub fn concurrency_cap(account: &Account) -> i64 {
    match account.max_concurrent_sessions {
        Some(sessions) => account.max_concurrent_workers.min(sessions),
        None => account.max_concurrent_workers,
    }
}

/// Which of its limits keeps the account from taking any task now, if one does.
pub fn limit_reached(
    account: &Account,
    active_workers: i64,
    cost_today: f64,
) -> Option<EmptyClaim> {
    if budget_spent(account, cost_today) {
        Some(EmptyClaim::DailyBudget)
    } else if active_workers >= concurrency_cap(account) {
        Some(EmptyClaim::ConcurrencyLimit)
    } else {
        None
    }
}

/// Why the account's running workers must stop, once its workers started today have
/// cost its `maxCostPerDay` (claims stop at the same line, [`limit_reached`]).
pub fn over_budget(account: &Account, cost_today: f64) -> Option<String> {
    budget_spent(account, cost_today).then(|| {
        format!(
            "account {} reached its maxCostPerDay of ${:.2} today (${cost_today:.2} spent)",
            account.id,
            account.max_cost_per_day.unwrap_or_default()
        )
    })
}

/// Whether what the account's workers started today have cost reaches its
/// `maxCostPerDay`: the one line claims stop at and running workers are stopped at.
fn budget_spent(account: &Account, cost_today: f64) -> bool {
    account
        .max_cost_per_day
        .is_some_and(|limit| cost_today >= limit)
}

/// Why a claim took no task: the `reason` of an empty claim answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmptyClaim {
    /// No task is pending in the workspaces the account may claim in.
    NoPendingWork,
    /// The account's workers fill its `maxConcurrentWorkers`.
    ConcurrencyLimit,
    /// Its workers started today (UTC) have cost its `maxCostPerDay`.
    DailyBudget,
    /// The account may claim in no workspace (or not in the one asked for).
    NoGrant,
    /// Nothing is pending, but tasks wait for their dependencies or a plan's approval.
    AllBlocked,
    /// The pending tasks are for another kind of runner (`runnerPreference`).
    OtherRunners,
    /// The pending tasks are follow-ups held for the account that ran their parent.
    HeldForFollowup,
    /// Tasks fit, but other claims were taking them at that moment: claim again.
    Contended,
    /// The pending tasks it may take name runners (`codex`, …) the claim did not
    /// list.
    NoRunner,
}

impl EmptyClaim {
    /// Whether the claim took nothing because of its account's own limits: then no
    /// other waiter of that account could take the task either.
    pub fn account_limited(self) -> bool {
        matches!(self, EmptyClaim::ConcurrencyLimit | EmptyClaim::DailyBudget)
    }

    pub const ALL: &[EmptyClaim] = &[
        EmptyClaim::NoPendingWork,
        EmptyClaim::ConcurrencyLimit,
        EmptyClaim::DailyBudget,
        EmptyClaim::NoGrant,
        EmptyClaim::AllBlocked,
        EmptyClaim::OtherRunners,
        EmptyClaim::HeldForFollowup,
        EmptyClaim::Contended,
        EmptyClaim::NoRunner,
    ];

    /// The name the API gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            EmptyClaim::NoPendingWork => "no_pending_work",
            EmptyClaim::ConcurrencyLimit => "concurrency_limit",
            EmptyClaim::DailyBudget => "daily_budget",
            EmptyClaim::NoGrant => "no_grant",
            EmptyClaim::AllBlocked => "all_blocked",
            EmptyClaim::OtherRunners => "other_runners",
            EmptyClaim::HeldForFollowup => "held_for_followup",
            EmptyClaim::Contended => "contended",
            EmptyClaim::NoRunner => "no_runner",
        }
    }

    /// A sentence for logs and people.
    pub fn describe(self) -> &'static str {
        match self {
            EmptyClaim::NoPendingWork => "no task is pending",
            EmptyClaim::ConcurrencyLimit => "the account runs as many workers as it may",
            EmptyClaim::DailyBudget => "the account has spent its maxCostPerDay today",
            EmptyClaim::NoGrant => "the account may claim in no workspace (canClaim)",
            EmptyClaim::AllBlocked => "every task waits for its dependencies or a plan's approval",
            EmptyClaim::OtherRunners => "the pending tasks are for other kinds of runner",
            EmptyClaim::HeldForFollowup => {
                "the pending tasks are follow-ups held for other accounts"
            }
            EmptyClaim::Contended => "other claims took the tasks that fit",
            EmptyClaim::NoRunner => "the pending tasks need runners this agent does not have",
        }
    }
}

/// What the queue holds for an account that claimed nothing, as far as it may see
/// (its `canClaim` workspaces, or the one it asked for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// It may claim in at least one workspace.
    pub granted: bool,
    /// Pending tasks it may take (routed to it, not held for another account, and
    /// naming no runner or one the claim listed).
    pub takeable: bool,
    /// Pending tasks it could take with any runner.
    pub takeable_by_runner: bool,
    /// Pending tasks routed to it, held for another account's follow-up or not.
    pub routed: bool,
    /// Pending tasks of any runner preference.
    pub pending: bool,
    /// Tasks `blocked` or `planned`.
    pub waiting: bool,
}

/// Why an account under its limits ([`limit_reached`] comes first) claimed nothing,
/// from what the queue holds.
pub fn why_empty(backlog: &Backlog) -> EmptyClaim {
    if !backlog.granted {
        EmptyClaim::NoGrant
    } else if backlog.takeable {
        EmptyClaim::Contended
    } else if backlog.takeable_by_runner {
        EmptyClaim::NoRunner
    } else if backlog.routed {
        EmptyClaim::HeldForFollowup
    } else if backlog.pending {
        EmptyClaim::OtherRunners
    } else if backlog.waiting {
        EmptyClaim::AllBlocked
    } else {
        EmptyClaim::NoPendingWork
    }
}

/// `POST /api/workers {taskId}`: whether `account` may take this one task now, under
/// the rules of any claim (its grant is the policy's to check,
/// [`super::policy::Deed::Claim`]). A runner preference that does not route to the
/// account: 403; not pending, or held for another account's follow-up: 409; no free
/// worker slot or today's budget spent: 409, since that passes.
pub fn check_explicit(
    task: &Task,
    account: &Account,
    active_workers: i64,
    cost_today: f64,
    now: Timestamp,
) -> Result<(), RuleError> {
    if !routes_to(task.runner_preference, account.account_type) {
        return Err(RuleError::Forbidden(format!(
            "task {} is for {} runners; account {} is a {} account",
            task.id, task.runner_preference, account.id, account.account_type
        )));
    }
    if task.status != TaskStatus::Pending {
        return Err(RuleError::Conflict(format!(
            "task {} is {}, not pending",
            task.id, task.status
        )));
    }
    if !super::workflow::preference_allows(task, &account.id, now) {
        return Err(RuleError::Conflict(format!(
            "task {} is held for the account that ran its parent until {}",
            task.id,
            task.preferred_until
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        )));
    }
    if let Some(limit) = limit_reached(account, active_workers, cost_today) {
        let why = if limit == EmptyClaim::DailyBudget {
            format!(
                "has spent its maxCostPerDay of ${:.2} today",
                account.max_cost_per_day.unwrap_or_default()
            )
        } else {
            format!(
                "runs {active_workers} of its {} concurrent workers (maxConcurrentWorkers, \
                 maxConcurrentSessions)",
                concurrency_cap(account)
            )
        };
        return Err(RuleError::Conflict(format!("account {} {why}", account.id)));
    }
    Ok(())
}

/// A task handed to an account.
#[derive(Debug)]
pub struct Assignment {
    /// The worker that carries the attempt, born `idle` with a fresh lease.
    pub worker: Worker,
    /// The worker's token ([`keys::new_worker_token`]) in plain text: the claim's
    /// answer shows it to the agent once, and the store keeps only its digest.
    pub token: String,
    pub events: Vec<Event>,
}

/// Hands `task` to `account`: the task becomes `assigned` with one more attempt
/// counted (and the progress line of an earlier attempt cleared), and the worker that
/// will carry the attempt is born `idle` with a fresh lease and a token of its own.
pub fn assign(task: &mut Task, account: &Account, now: Timestamp) -> Assignment {
    let worker = Worker {
        id: new_id(IdKind::Worker),
        task_id: task.id.clone(),
        workspace_id: task.workspace_id.clone(),
        account_id: account.id.clone(),
        status: WorkerStatus::Idle,
        cost_usd: 0.0,
        turns: 0,
        session_id: None,
        branch: None,
        commit_sha: None,
        pr_url: None,
        question: None,
        error: None,
        progress: None,
        runner: task.runner.clone(),
        model: task.model.clone(),
        started_at: now,
        heartbeat_at: now,
        finished_at: None,
        pending_reply: None,
        pending_instructions: Vec::new(),
    };
    task.status = TaskStatus::Assigned;
    task.attempts += 1;
    task.claimed_by = Some(account.id.clone());
    task.worker_id = Some(worker.id.clone());
    task.claimed_at = Some(now);
    task.progress = None;
    let events = vec![Event::task_updated(task), Event::worker_updated(&worker)];
    Assignment {
        worker,
        token: keys::new_worker_token(),
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::AuthType;
    use crate::core::time;

    fn account(max_workers: i64, max_cost: Option<f64>) -> Account {
        Account {
            id: "acc-1".into(),
            account_type: AccountType::Service,
            name: "svc".into(),
            auth_type: AuthType::Api,
            max_concurrent_workers: max_workers,
            max_concurrent_sessions: None,
            max_cost_per_day: max_cost,
            github_repo: None,
            created_at: time::now(),
        }
    }

    #[test]
    fn only_an_accounts_own_limits_pass_an_offer_past_its_other_agents() {
        let limited: Vec<EmptyClaim> = EmptyClaim::ALL
            .iter()
            .copied()
            .filter(|r| r.account_limited())
            .collect();
        assert_eq!(
            limited,
            [EmptyClaim::ConcurrencyLimit, EmptyClaim::DailyBudget]
        );
    }

    #[test]
    fn an_explicit_claim_follows_every_rule_of_a_claim() {
        let now = time::now();
        let acc = account(1, Some(5.0));
        let task = pending_task(RunnerPreference::Any);
        assert!(check_explicit(&task, &acc, 0, 0.0, now).is_ok());
        let forbidden = |r: Result<(), RuleError>| matches!(r, Err(RuleError::Forbidden(_)));
        let conflict = |r: Result<(), RuleError>| matches!(r, Err(RuleError::Conflict(_)));
        let for_users = pending_task(RunnerPreference::User);
        assert!(forbidden(check_explicit(&for_users, &acc, 0, 0.0, now)));
        assert!(conflict(check_explicit(&task, &acc, 1, 0.0, now)));
        let err = check_explicit(&task, &acc, 0, 5.0, now).unwrap_err();
        assert!(err.to_string().contains("maxCostPerDay"), "{err}");
        let mut running = task.clone();
        running.status = TaskStatus::Running;
        assert!(conflict(check_explicit(&running, &acc, 0, 0.0, now)));
        let mut held = task.clone();
        held.preferred_account_id = Some("acc-other".into());
        held.preferred_until = Some(now + chrono::Duration::seconds(60));
        assert!(conflict(check_explicit(&held, &acc, 0, 0.0, now)));
    }

    #[test]
    fn a_waiting_claim_is_offered_only_what_it_may_take() {
        let now = time::now();
        let acc = account(1, None);
        let task = pending_task(RunnerPreference::Any);
        let granted: std::collections::HashSet<String> = [task.workspace_id.clone()].into();
        assert!(may_take(&task, &acc, &granted, &[], now));
        assert!(
            !may_take(&task, &acc, &Default::default(), &[], now),
            "another workspace"
        );
        assert!(!may_take(
            &pending_task(RunnerPreference::User),
            &acc,
            &granted,
            &[],
            now
        ));
        let mut blocked = task.clone();
        blocked.status = TaskStatus::Blocked;
        assert!(!may_take(&blocked, &acc, &granted, &[], now));
        let mut held = task.clone();
        held.preferred_account_id = Some("acc-other".into());
        held.preferred_until = Some(now + chrono::Duration::seconds(60));
        assert!(!may_take(&held, &acc, &granted, &[], now));
        held.preferred_until = Some(now);
        assert!(
            may_take(&held, &acc, &granted, &[], now),
            "the hold is over"
        );
        let mut for_codex = task.clone();
        for_codex.runner = Some("codex".into());
        assert!(!may_take(&for_codex, &acc, &granted, &[], now));
        assert!(!may_take(
            &for_codex,
            &acc,
            &granted,
            &["claude".into()],
            now
        ));
        assert!(may_take(
            &for_codex,
            &acc,
            &granted,
            &["claude".into(), "codex".into()],
            now
        ));
    }

    #[test]
    fn an_empty_claim_names_the_first_thing_in_its_way() {
        let full = Backlog {
            granted: true,
            takeable: true,
            takeable_by_runner: true,
            routed: true,
            pending: true,
            waiting: true,
        };
        let a = account(2, Some(1.0));
        assert_eq!(limit_reached(&a, 0, 1.0), Some(EmptyClaim::DailyBudget));
        assert_eq!(
            limit_reached(&a, 2, 0.5),
            Some(EmptyClaim::ConcurrencyLimit)
        );
        assert_eq!(limit_reached(&a, 1, 0.5), None);
        let cases = [
            (Backlog::default(), EmptyClaim::NoGrant),
            (full, EmptyClaim::Contended),
            (
                Backlog {
                    takeable: false,
                    ..full
                },
                EmptyClaim::NoRunner,
            ),
            (
                Backlog {
                    takeable: false,
                    takeable_by_runner: false,
                    ..full
                },
                EmptyClaim::HeldForFollowup,
            ),
            (
                Backlog {
                    takeable: false,
                    takeable_by_runner: false,
                    routed: false,
                    ..full
                },
                EmptyClaim::OtherRunners,
            ),
            (
                Backlog {
                    granted: true,
                    waiting: true,
                    ..Backlog::default()
                },
                EmptyClaim::AllBlocked,
            ),
            (
                Backlog {
                    granted: true,
                    ..Backlog::default()
                },
                EmptyClaim::NoPendingWork,
            ),
        ];
        for (backlog, reason) in cases {
            assert_eq!(why_empty(&backlog), reason, "{backlog:?}");
        }
    }

    #[test]
    fn reasons_are_named_as_the_api_names_them() {
        for reason in EmptyClaim::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }

    #[test]
    fn sessions_cap_workers_where_set() {
        let mut a = account(3, None);
        assert_eq!(free_slots(&a, 0, 0.0, 5), 3);
        a.max_concurrent_sessions = Some(1);
        assert_eq!(free_slots(&a, 0, 0.0, 5), 1);
        assert_eq!(
            limit_reached(&a, 1, 0.0),
            Some(EmptyClaim::ConcurrencyLimit)
        );
        a.max_concurrent_sessions = Some(10);
        assert_eq!(concurrency_cap(&a), 3);
    }

    #[test]
    fn routing_table() {
        use RunnerPreference as P;
        assert!(routes_to(P::Any, AccountType::User));
        assert!(routes_to(P::User, AccountType::User));
        assert!(!routes_to(P::Service, AccountType::User));
        assert!(!routes_to(P::Action, AccountType::Service));
        assert!(routes_to(P::Action, AccountType::Action));
    }

    #[test]
    fn slots_respect_workers_and_daily_cost() {
        assert_eq!(free_slots(&account(3, None), 0, 0.0, 5), 3);
        assert_eq!(free_slots(&account(3, None), 2, 0.0, 5), 1);
        assert_eq!(free_slots(&account(3, None), 4, 0.0, 5), 0);
        assert_eq!(free_slots(&account(3, Some(10.0)), 0, 9.99, 1), 1);
        assert_eq!(free_slots(&account(3, Some(10.0)), 0, 10.0, 1), 0);
    }

    fn pending_task(preference: RunnerPreference) -> Task {
        let now = time::now();
        Task {
            id: "task-1".into(),
            runner_preference: preference,
            ..Task::new("ws-1".into(), "t", now)
        }
    }

    #[test]
    fn only_action_tasks_wake_action_accounts_that_may_claim_them() {
        let mut action = account(1, None);
        action.account_type = AccountType::Action;
        action.github_repo = Some("acme/widgets".into());
        let grant = |ws: &str, can_claim| Grant {
            account_id: "acc-1".into(),
            workspace_id: ws.into(),
            can_claim,
            can_create: false,
        };
        let task = pending_task(RunnerPreference::Action);
        assert_eq!(
            dispatch_repo(&task, &action, Some(&grant("ws-1", true))),
            Some("acme/widgets")
        );
        assert_eq!(
            dispatch_repo(&task, &action, Some(&grant("ws-1", false))),
            None
        );
        assert_eq!(
            dispatch_repo(&task, &action, Some(&grant("ws-2", true))),
            None
        );
        assert_eq!(dispatch_repo(&task, &action, None), None);
        assert_eq!(
            dispatch_repo(
                &pending_task(RunnerPreference::Any),
                &action,
                Some(&grant("ws-1", true))
            ),
            None
        );
        let mut service = action.clone();
        service.account_type = AccountType::Service;
        assert_eq!(
            dispatch_repo(&task, &service, Some(&grant("ws-1", true))),
            None
        );
        action.github_repo = None;
        assert_eq!(
            dispatch_repo(&task, &action, Some(&grant("ws-1", true))),
            None
        );
    }

    #[test]
    fn claim_bounds_default_and_refuse_out_of_range() {
        assert_eq!(bounds(None, None), Ok((1, 0)));
        assert_eq!(bounds(Some(50), Some(30)), Ok((50, 30)));
        assert!(bounds(Some(0), None).is_err());
        assert!(bounds(Some(51), None).is_err());
        assert!(bounds(None, Some(31)).is_err());
    }

    #[test]
    fn assigning_counts_an_attempt_and_links_both_ways() {
        let now = time::now();
        let mut task = pending_task(RunnerPreference::Any);
        task.progress = Some("an earlier attempt's line".into());
        let Assignment {
            worker,
            token,
            events,
        } = assign(&mut task, &account(1, None), now);
        assert_eq!(task.status, TaskStatus::Assigned);
        assert_eq!(task.progress, None);
        assert!(keys::looks_like_worker_token(&token));
        assert_eq!(task.attempts, 1);
        assert_eq!(task.worker_id.as_deref(), Some(worker.id.as_str()));
        assert_eq!(worker.status, WorkerStatus::Idle);
        assert_eq!(worker.workspace_id, "ws-1");
        assert_eq!(events.len(), 2);
    }
}
