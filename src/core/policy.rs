//! Who may do what: the one access policy every handler asks.
//!
//! There are two kinds of caller: the admin token, and accounts. An account acts in a
//! workspace through its grant there (`canClaim`, `canCreate`; any grant lets it see
//! the workspace), and on a worker it runs because it runs it. The handlers look up
//! the grant and the worker; the decision is made here, so it can be read, and
//! tested, in one place.

use super::model::{Account, Grant, Task};

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    Admin,
    Account(&'a Account),
}

/// What the actor wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deed {
    /// See a workspace, its tasks and their workers, artifacts and comments, or
    /// comment on a task.
    Read,
    /// Queue a task in a workspace.
    Create,
    /// Take a workspace's tasks to run.
    Claim,
    /// Change a task's course: cancel it, answer its question (a task's target), or
    /// pause and start its worker (a worker's target).
    Steer,
    /// Report a worker's progress, output and result.
    Report,
    /// Manage accounts, workspaces and grants, and read the server's metrics.
    Administer,
}

/// What the deed is done to.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The server as a whole.
    Server,
    /// Something of the workspace `id`; `grant` is the actor's there, if any.
    Workspace {
        id: &'a str,
        grant: Option<&'a Grant>,
    },
    /// The worker `id`, run by account `runner`, in the workspace `workspace` where
    /// the actor holds `grant`.
    Worker {
        id: &'a str,
        runner: &'a str,
        workspace: &'a str,
        grant: Option<&'a Grant>,
    },
    /// The account `id` itself (its key).
    Account { id: &'a str },
}

/// Why the policy said no: the message of the 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// The account doing its own work (claiming, reporting for its workers), which the
/// admin token cannot do: it runs no workers.
pub fn own_work<'a>(actor: Actor<'a>) -> Result<&'a Account, Denied> {
    match actor {
        Actor::Account(account) => Ok(account),
        Actor::Admin => Err(Denied(
            "this needs an account key, not the admin token".into(),
        )),
    }
}

/// Whether `actor` may do `deed` to `target`.
pub fn check(actor: Actor, deed: Deed, target: Target) -> Result<(), Denied> {
    let deny = |why: String| Err(Denied(why));
    let account = match actor {
        // The admin may do everything but an account's own work.
        Actor::Admin => {
            return match deed {
                Deed::Claim | Deed::Report => own_work(actor).map(drop),
                _ => Ok(()),
            };
        }
        Actor::Account(account) => account,
    };
    match (deed, target) {
        (Deed::Administer, _) | (_, Target::Server) => deny("this needs the admin token".into()),
        (_, Target::Account { id }) if id == account.id => Ok(()),
        (_, Target::Account { .. }) => deny("this needs the admin token".into()),
        (Deed::Report, Target::Worker { id, runner, .. }) => {
            if runner == account.id {
                Ok(())
            } else {
                deny(format!(
                    "only the account running worker {id} may report for it"
                ))
            }
        }
        (Deed::Steer, Target::Worker { id, runner, .. }) => {
            if runner == account.id {
                Ok(())
            } else {
                deny(format!(
                    "only the admin or the account running worker {id} may steer it"
                ))
            }
        }
        (Deed::Read, Target::Worker { runner, .. }) if runner == account.id => Ok(()),
        (
            deed,
            Target::Worker {
                workspace, grant, ..
            },
        ) => in_workspace(account, deed, grant, workspace),
        (deed, Target::Workspace { id, grant }) => in_workspace(account, deed, grant, id),
    }
}

/// What a run, calling with its worker token, may read: its own task, the tasks that
/// task depends on (their outcomes feed it) and its subtasks. Everything else a run
/// may do concerns its own worker, which the token names, or acts as its account
/// (creating a subtask needs the account's `canCreate`), so it needs no rule here.
pub fn run_may_read(own: &Task, target: &Task) -> Result<(), Denied> {
    if target.id == own.id
        || own.depends_on.contains(&target.id)
        || target.parent_id.as_deref() == Some(own.id.as_str())
    {
        return Ok(());
    }
    Err(Denied(format!(
        "a run may read only its own task {}, the tasks it depends on and its subtasks; \
         {} is none of them",
        own.id, target.id
    )))
}

/// What an account's grant lets it do in the workspace `workspace`.
fn in_workspace(
    account: &Account,
    deed: Deed,
    grant: Option<&Grant>,
    workspace: &str,
) -> Result<(), Denied> {
    let Some(grant) = grant else {
        return Err(Denied(format!(
            "account {} has no access to workspace {workspace}",
            account.id
        )));
    };
    let (right, granted) = match deed {
        Deed::Read => return Ok(()),
        Deed::Claim => ("canClaim", grant.can_claim),
        Deed::Create | Deed::Steer => ("canCreate", grant.can_create),
        Deed::Report | Deed::Administer => {
            return Err(Denied("this needs the admin token".into()));
        }
    };
    if granted {
        Ok(())
    } else {
        Err(Denied(format!("no {right} grant on workspace {workspace}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{AccountType, AuthType};
    use crate::core::time;

    fn account(id: &str) -> Account {
        Account {
            id: id.into(),
            account_type: AccountType::Service,
            name: id.into(),
            auth_type: AuthType::Api,
            max_concurrent_workers: 3,
            max_concurrent_sessions: None,
            max_cost_per_day: None,
            github_repo: None,
            created_at: time::now(),
        }
    }

    fn grant(claim: bool, create: bool) -> Grant {
        Grant {
            account_id: "acc-a".into(),
            workspace_id: "ws-1".into(),
            can_claim: claim,
            can_create: create,
        }
    }

    fn in_ws(grant: Option<&Grant>) -> Target<'_> {
        Target::Workspace { id: "ws-1", grant }
    }

    #[test]
    fn the_admin_may_do_all_but_an_accounts_own_work() {
        for deed in [Deed::Read, Deed::Create, Deed::Steer, Deed::Administer] {
            assert_eq!(check(Actor::Admin, deed, in_ws(None)), Ok(()));
        }
        assert_eq!(
            check(Actor::Admin, Deed::Administer, Target::Server),
            Ok(())
        );
        for deed in [Deed::Claim, Deed::Report] {
            let denied = check(Actor::Admin, deed, in_ws(None)).unwrap_err();
            assert!(denied.0.contains("account key"), "{denied}");
        }
    }

    #[test]
    fn grants_decide_what_an_account_does_in_a_workspace() {
        let a = account("acc-a");
        let me = Actor::Account(&a);
        assert!(check(me, Deed::Read, in_ws(None)).is_err());
        let none = grant(false, false);
        assert_eq!(check(me, Deed::Read, in_ws(Some(&none))), Ok(()));
        assert_eq!(
            check(me, Deed::Claim, in_ws(Some(&none))),
            Err(Denied("no canClaim grant on workspace ws-1".into()))
        );
        assert_eq!(
            check(me, Deed::Create, in_ws(Some(&none))),
            Err(Denied("no canCreate grant on workspace ws-1".into()))
        );
        assert!(check(me, Deed::Steer, in_ws(Some(&none))).is_err());
        let both = grant(true, true);
        for deed in [Deed::Read, Deed::Claim, Deed::Create, Deed::Steer] {
            assert_eq!(check(me, deed, in_ws(Some(&both))), Ok(()), "{deed:?}");
        }
        assert!(check(me, Deed::Administer, in_ws(Some(&both))).is_err());
        assert!(check(me, Deed::Read, Target::Server).is_err());
    }

    #[test]
    fn only_its_runner_reports_for_a_worker() {
        let (a, b) = (account("acc-a"), account("acc-b"));
        let both = grant(true, true);
        let worker = Target::Worker {
            id: "w-1",
            runner: "acc-a",
            workspace: "ws-1",
            grant: Some(&both),
        };
        assert_eq!(check(Actor::Account(&a), Deed::Report, worker), Ok(()));
        assert_eq!(
            check(Actor::Account(&b), Deed::Report, worker),
            Err(Denied(
                "only the account running worker w-1 may report for it".into()
            ))
        );
        // Steering a worker is for its runner and the admin; reading it for anyone
        // granted its workspace, and its runner even without a grant.
        assert_eq!(check(Actor::Account(&a), Deed::Steer, worker), Ok(()));
        assert!(check(Actor::Account(&b), Deed::Steer, worker).is_err());
        assert_eq!(check(Actor::Admin, Deed::Steer, worker), Ok(()));
        assert_eq!(check(Actor::Account(&b), Deed::Read, worker), Ok(()));
        let ungranted = Target::Worker {
            id: "w-1",
            runner: "acc-a",
            workspace: "ws-1",
            grant: None,
        };
        assert_eq!(check(Actor::Account(&a), Deed::Read, ungranted), Ok(()));
        assert!(check(Actor::Account(&b), Deed::Read, ungranted).is_err());
    }

    #[test]
    fn a_run_reads_its_task_its_dependencies_and_its_subtasks_only() {
        let now = time::now();
        let dependency = Task::new("ws-1".into(), "dep", now);
        let own = Task {
            depends_on: vec![dependency.id.clone()],
            ..Task::new("ws-1".into(), "own", now)
        };
        let subtask = Task {
            parent_id: Some(own.id.clone()),
            ..Task::new("ws-1".into(), "sub", now)
        };
        let sibling = Task::new("ws-1".into(), "other", now);
        for readable in [&own, &dependency, &subtask] {
            assert_eq!(run_may_read(&own, readable), Ok(()), "{}", readable.title);
        }
        let denied = run_may_read(&own, &sibling).unwrap_err();
        assert!(denied.0.contains(&sibling.id), "{denied}");
        // Nor does a dependency see the task waiting on it.
        assert!(run_may_read(&dependency, &own).is_err());
    }

    #[test]
    fn an_account_manages_its_own_key_only() {
        let a = account("acc-a");
        let me = Actor::Account(&a);
        assert_eq!(
            check(me, Deed::Steer, Target::Account { id: "acc-a" }),
            Ok(())
        );
        assert!(check(me, Deed::Steer, Target::Account { id: "acc-b" }).is_err());
        assert_eq!(
            check(Actor::Admin, Deed::Steer, Target::Account { id: "acc-b" }),
            Ok(())
        );
    }
}
