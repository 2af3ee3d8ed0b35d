//! The shared store suite: every test runs against SQLite, and against Postgres when
//! `BUILDD_TEST_DATABASE_URL` is set (`.ci/run` sets it), each on a fresh database.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use buildd::core::actions::{Action, WorkerUpdate};
use buildd::core::ids::{IdKind, new_id};
use buildd::core::keys;
use buildd::core::lease::Cutoffs;
use buildd::core::model::*;
use buildd::core::page::{PageRequest, Position};
use buildd::core::time::{self, Timestamp};
use buildd::store::{ClaimRequest, Claimed, Store, TaskFilter, WorkerFilter};
use chrono::Duration;
use serde_json::json;

/// Runs each named test once per backend.
macro_rules! store_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite:{}", dir.path().join("buildd.db").display());
                    super::$name(buildd::store::open(&url).await.unwrap()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(url) = super::common::pg_database().await else {
                        return;
                    };
                    super::$name(buildd::store::open(&url).await.unwrap()).await;
                }
            )*
        }
    };
}

store_suite!(
    accounts_workspaces_and_grants,
    claims_follow_priority_routing_and_grants,
    worker_cap_holds,
    daily_cost_cap_counts_only_today,
    the_task_mirrors_its_worker,
    errors_requeue_until_attempts_run_out,
    stale_workers_expire_exactly_once,
    messages_are_numbered_per_worker,
    a_burst_of_events_is_numbered_whole_and_in_order,
    concurrent_claims_never_share_a_task,
    one_accounts_claims_at_once_share_its_limit,
    artifacts_and_comments_stay_with_the_task,
    tasks_from_one_source_share_it,
    attachments_keep_their_bytes,
    json_reads_back_exactly_as_written,
    retention_deletes_old_events_and_finished_output_only,
    cancelling_a_paused_task_frees_its_slot,
    usage_counters_match_the_rows_after_random_operations,
    dependencies_block_until_the_last_one_completes,
    failure_propagates_and_retry_brings_dependents_back,
    dependencies_must_exist_in_the_workspace,
    dependencies_ending_together_unblock_their_dependent,
    approving_a_plan_makes_its_steps_once,
    explicit_claims_follow_the_rules_of_a_claim,
    a_followup_waits_for_its_parents_account,
    instructions_reach_the_worker_once,
    pages_split_tasks_created_in_the_same_millisecond,
    a_runs_diff_is_kept_and_replaced_whole,
    a_workers_token_lives_as_long_as_the_worker,
    a_subtasks_parent_is_a_task_of_its_workspace,
    claims_take_only_tasks_whose_runner_they_list,
    a_runner_failure_moves_the_task_to_its_fallback,
);

type Db = Arc<dyn Store>;

fn account(account_type: AccountType, max_workers: i64, max_cost: Option<f64>) -> Account {
    Account {
        id: new_id(IdKind::Account),
        account_type,
        name: format!("{account_type} account"),
        auth_type: AuthType::Api,
        max_concurrent_workers: max_workers,
        max_concurrent_sessions: None,
        max_cost_per_day: max_cost,
        github_repo: None,
        created_at: time::now(),
    }
}

async fn new_account(db: &Db, a: &Account) -> String {
    let key = keys::new_account_key(a.account_type);
    db.create_account(a, &keys::hash_key(&key)).await.unwrap();
    key
}

async fn new_workspace(db: &Db) -> Workspace {
    let ws = Workspace::new(
        "ws",
        Some("https://example.invalid/repo.git".into()),
        time::now(),
    );
    db.create_workspace(&ws).await.unwrap();
    ws
}

async fn grant(db: &Db, a: &Account, ws: &Workspace, can_claim: bool) {
    let g = Grant {
        account_id: a.id.clone(),
        workspace_id: ws.id.clone(),
        can_claim,
        can_create: true,
    };
    db.put_grant(&g).await.unwrap();
}

async fn new_task(
    db: &Db,
    ws: &Workspace,
    pref: RunnerPreference,
    priority: i32,
    max_attempts: i32,
) -> Task {
    let task = Task {
        description: "d".into(),
        runner_preference: pref,
        priority,
        max_attempts,
        max_cost_usd: Some(2.5),
        ..Task::new(ws.id.clone(), &format!("p{priority} {pref}"), time::now())
    };
    db.create_task(&task, None).await.unwrap();
    // Distinct creation times keep "oldest first" meaningful.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    task
}

async fn claim(db: &Db, a: &Account, max_tasks: u32) -> Vec<(Worker, Task)> {
    claim_at(db, a, max_tasks, time::now()).await
}

async fn claim_at(db: &Db, a: &Account, max_tasks: u32, now: Timestamp) -> Vec<(Worker, Task)> {
    db.claim(
        a,
        &ClaimRequest {
            max_tasks,
            workspace_id: None,
            runners: Vec::new(),
        },
        now,
    )
    .await
    .unwrap()
    .into_iter()
    .map(|c| (c.worker, c.task))
    .collect()
}

async fn set_status(
    db: &Db,
    worker: &str,
    status: WorkerStatus,
    cost: Option<f64>,
) -> buildd::store::Applied {
    let update = WorkerUpdate {
        status: Some(status),
        cost_usd: cost,
        ..WorkerUpdate::default()
    };
    db.apply(worker, Action::update(update), time::now())
        .await
        .unwrap()
}

async fn accounts_workspaces_and_grants(db: Db) {
    let a = account(AccountType::User, 3, Some(10.0));
    let key = new_account(&db, &a).await;
    assert_eq!(
        db.account_by_key_hash(&keys::hash_key(&key)).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        db.account_by_key_hash(&keys::hash_key("buildd_user_wrong"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(db.get_account(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(
        db.list_accounts(&PageRequest::default())
            .await
            .unwrap()
            .items,
        vec![a.clone()]
    );

    let ws1 = new_workspace(&db).await;
    let ws2 = new_workspace(&db).await;
    assert_eq!(db.get_workspace(&ws1.id).await.unwrap(), Some(ws1.clone()));
    assert_eq!(db.list_workspaces(None).await.unwrap().len(), 2);
    assert!(db.list_workspaces(Some(&a.id)).await.unwrap().is_empty());

    grant(&db, &a, &ws2, false).await;
    grant(&db, &a, &ws2, true).await; // a second grant replaces the first
    let g = db.get_grant(&a.id, &ws2.id).await.unwrap().unwrap();
    assert!(g.can_claim && g.can_create);
    assert_eq!(
        db.list_workspaces(Some(&a.id)).await.unwrap(),
        vec![ws2.clone()]
    );
    assert!(db.delete_grant(&a.id, &ws2.id).await.unwrap());
    assert!(!db.delete_grant(&a.id, &ws2.id).await.unwrap());
    assert_eq!(db.get_grant(&a.id, &ws2.id).await.unwrap(), None);
}

async fn claims_follow_priority_routing_and_grants(db: Db) {
    let ws = new_workspace(&db).await;
    let other_ws = new_workspace(&db).await;
    let user = account(AccountType::User, 10, None);
    let service = account(AccountType::Service, 10, None);
    let viewer = account(AccountType::Service, 10, None);
    for a in [&user, &service, &viewer] {
        new_account(&db, a).await;
    }
    grant(&db, &user, &ws, true).await;
    grant(&db, &service, &ws, true).await;
    grant(&db, &viewer, &ws, false).await;

    let old_low = new_task(&db, &ws, RunnerPreference::Any, 1, 3).await;
    let high = new_task(&db, &ws, RunnerPreference::Any, 5, 3).await;
    let new_low = new_task(&db, &ws, RunnerPreference::Any, 1, 3).await;
    let for_users = new_task(&db, &ws, RunnerPreference::User, 3, 3).await;
    let for_services = new_task(&db, &ws, RunnerPreference::Service, 9, 3).await;
    let for_actions = new_task(&db, &ws, RunnerPreference::Action, 9, 3).await;
    let elsewhere = new_task(&db, &other_ws, RunnerPreference::Any, 9, 3).await;

    assert!(
        claim(&db, &viewer, 5).await.is_empty(),
        "a grant without canClaim claims nothing"
    );

    let got: Vec<String> = claim(&db, &user, 3)
        .await
        .into_iter()
        .map(|(_, t)| t.id)
        .collect();
    assert_eq!(
        got,
        vec![high.id.clone(), for_users.id.clone(), old_low.id.clone()]
    );

    let got: Vec<(Worker, Task)> = claim(&db, &service, 10).await;
    let ids: Vec<&str> = got.iter().map(|(_, t)| t.id.as_str()).collect();
    assert_eq!(ids, vec![for_services.id.as_str(), new_low.id.as_str()]);
    let (worker, task) = &got[0];
    assert_eq!(task.status, TaskStatus::Assigned);
    assert_eq!(task.claimed_by.as_deref(), Some(service.id.as_str()));
    assert_eq!(task.worker_id.as_deref(), Some(worker.id.as_str()));
    assert_eq!(
        db.get_task(&task.id).await.unwrap().as_ref(),
        Some(task),
        "stored as returned"
    );
    assert_eq!(
        db.get_worker(&worker.id).await.unwrap().as_ref(),
        Some(worker),
        "stored as returned"
    );

    for (id, want) in [
        (&for_actions.id, TaskStatus::Pending),
        (&elsewhere.id, TaskStatus::Pending),
    ] {
        assert_eq!(db.get_task(id).await.unwrap().unwrap().status, want);
    }

    let pending = TaskFilter {
        status: Some(TaskStatus::Pending),
        page: PageRequest {
            after: None,
            limit: 100,
        },
        ..TaskFilter::default()
    };
    assert_eq!(db.list_tasks(&pending).await.unwrap().items.len(), 2);
    let visible = TaskFilter {
        visible_to: Some(user.id.clone()),
        page: PageRequest {
            after: None,
            limit: 100,
        },
        ..TaskFilter::default()
    };
    assert_eq!(
        db.list_tasks(&visible).await.unwrap().items.len(),
        6,
        "not the other workspace's task"
    );
    let newest = db
        .list_tasks(&TaskFilter {
            page: PageRequest {
                after: None,
                limit: 1,
            },
            ..TaskFilter::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(newest[0].id, elsewhere.id);
    let workers = db
        .list_workers(&WorkerFilter {
            task_id: Some(task.id.clone()),
            page: PageRequest {
                after: None,
                limit: 10,
            },
            ..WorkerFilter::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(workers, vec![worker.clone()]);
}

async fn worker_cap_holds(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 2, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    for p in 0..5 {
        new_task(&db, &ws, RunnerPreference::Any, p, 3).await;
    }
    assert_eq!(claim(&db, &a, 5).await.len(), 2);
    let held = claim(&db, &a, 5).await;
    assert!(held.is_empty(), "no slot left");

    let workers = db
        .list_workers(&WorkerFilter {
            page: PageRequest {
                after: None,
                limit: 10,
            },
            ..WorkerFilter::default()
        })
        .await
        .unwrap()
        .items;
    // A paused worker still holds its slot; a finished one frees it.
    db.apply(&workers[0].id, Action::Pause, time::now())
        .await
        .unwrap();
    assert!(claim(&db, &a, 5).await.is_empty());
    for s in [
        WorkerStatus::Starting,
        WorkerStatus::Running,
        WorkerStatus::Completed,
    ] {
        set_status(&db, &workers[1].id, s, None).await;
    }
    assert_eq!(claim(&db, &a, 5).await.len(), 1);
}

async fn daily_cost_cap_counts_only_today(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 10, Some(1.0));
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    for _ in 0..4 {
        new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    }
    // Yesterday's spend does not count against today.
    let yesterday = time::now() - Duration::days(1);
    let (old, _) = claim_at(&db, &a, 1, yesterday).await.remove(0);
    set_status(&db, &old.id, WorkerStatus::Starting, Some(50.0)).await;

    let (w, _) = claim(&db, &a, 1).await.remove(0);
    set_status(&db, &w.id, WorkerStatus::Starting, Some(0.6)).await;
    let (w2, _) = claim(&db, &a, 1).await.remove(0);
    set_status(&db, &w2.id, WorkerStatus::Starting, Some(0.4)).await;
    assert!(
        claim(&db, &a, 1).await.is_empty(),
        "today's spend reached maxCostPerDay"
    );
}

async fn the_task_mirrors_its_worker(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::User, 3, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    let task = new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let (w, _) = claim(&db, &a, 1).await.remove(0);

    let expected = [
        (WorkerStatus::Starting, TaskStatus::Assigned),
        (WorkerStatus::Running, TaskStatus::Running),
        (WorkerStatus::WaitingInput, TaskStatus::WaitingInput),
    ];
    for (ws_status, task_status) in expected {
        let applied = set_status(&db, &w.id, ws_status, None).await;
        assert_eq!(applied.task.status, task_status);
        assert_eq!(
            db.get_task(&task.id).await.unwrap().unwrap().status,
            task_status
        );
    }
    let replied = db
        .apply(
            &task.id,
            Action::Reply {
                message: "yes".into(),
            },
            time::now(),
        )
        .await
        .unwrap();
    assert_eq!(replied.task.status, TaskStatus::Running);
    let messages = db
        .list_messages(&w.id, &messages_after(0, 10))
        .await
        .unwrap()
        .items;
    assert_eq!(
        messages[0].message,
        json!({"type": "user_reply", "text": "yes"})
    );
    let beat = db
        .apply(&w.id, Action::Heartbeat, time::now())
        .await
        .unwrap();
    assert_eq!(beat.outcome.reply.as_deref(), Some("yes"));
    let beat = db
        .apply(&w.id, Action::Heartbeat, time::now())
        .await
        .unwrap();
    assert_eq!(
        beat.outcome.reply, None,
        "the reply was handed over once and is gone"
    );

    let done = WorkerUpdate {
        status: Some(WorkerStatus::Completed),
        cost_usd: Some(1.25),
        turns: Some(4),
        branch: Some(format!("buildd/{}", task.id)),
        commit_sha: Some("0123abcd".into()),
        result: Some(json!({"summary": "ok", "files": 2})),
        ..WorkerUpdate::default()
    };
    let applied = db
        .apply(&w.id, Action::update(done), time::now())
        .await
        .unwrap();
    let stored = db.get_task(&task.id).await.unwrap().unwrap();
    assert_eq!(stored, applied.task);
    assert_eq!(stored.status, TaskStatus::Completed);
    assert_eq!(stored.result, Some(json!({"summary": "ok", "files": 2})));
    let worker = db.get_worker(&w.id).await.unwrap().unwrap();
    assert_eq!(Some(&worker), applied.worker.as_ref());
    assert_eq!((worker.cost_usd, worker.turns), (1.25, 4));
    assert!(worker.finished_at.is_some());

    let again = db.apply(&w.id, Action::Heartbeat, time::now()).await;
    assert!(again.is_err(), "a finished worker is frozen");
    assert_eq!(
        db.get_worker(&w.id).await.unwrap().unwrap(),
        worker,
        "and unchanged"
    );
}

async fn errors_requeue_until_attempts_run_out(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::User, 3, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    let task = new_task(&db, &ws, RunnerPreference::Any, 0, 2).await;

    let (w1, _) = claim(&db, &a, 1).await.remove(0);
    let applied = set_status(&db, &w1.id, WorkerStatus::Error, None).await;
    assert_eq!(applied.task.status, TaskStatus::Pending);
    let (w2, t) = claim(&db, &a, 1).await.remove(0);
    assert_eq!((t.id.as_str(), t.attempts), (task.id.as_str(), 2));
    let applied = set_status(&db, &w2.id, WorkerStatus::Error, None).await;
    assert_eq!(applied.task.status, TaskStatus::Failed);
    assert!(claim(&db, &a, 1).await.is_empty());
}

async fn stale_workers_expire_exactly_once(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 5, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let claimed = claim(&db, &a, 2).await;
    let (stale, fresh) = (&claimed[0].0, &claimed[1].0);

    let later = time::now() + Duration::seconds(5);
    db.apply(&fresh.id, Action::Heartbeat, later).await.unwrap();
    let cutoff = later - Duration::seconds(1);
    let cutoffs = Cutoffs {
        leased: cutoff,
        paused: cutoff,
    };
    assert_eq!(
        db.stale_workers(cutoffs).await.unwrap(),
        vec![stale.id.clone()]
    );

    // Many sweepers at once: exactly one acts.
    let mut sweeps = Vec::new();
    for _ in 0..8 {
        let db = db.clone();
        let id = stale.id.clone();
        sweeps.push(tokio::spawn(async move {
            db.apply(&id, Action::Expire { cutoffs }, later)
                .await
                .unwrap()
                .outcome
                .changed
        }));
    }
    let mut acted = 0;
    for s in sweeps {
        acted += usize::from(s.await.unwrap());
    }
    assert_eq!(acted, 1);
    let task = db.get_task(&claimed[0].1.id).await.unwrap().unwrap();
    assert_eq!((task.status, task.attempts), (TaskStatus::Pending, 1));
    assert_eq!(
        db.get_worker(&stale.id).await.unwrap().unwrap().status,
        WorkerStatus::Error
    );
    assert!(db.stale_workers(cutoffs).await.unwrap().is_empty());
}

async fn messages_are_numbered_per_worker(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 5, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let claimed = claim(&db, &a, 2).await;
    let (w1, w2) = (&claimed[0].0, &claimed[1].0);

    let batch: Vec<_> = (0..5).map(|i| json!({"n": i})).collect();
    let append = |id: String, messages: Vec<serde_json::Value>, from: Option<i64>| {
        let db = db.clone();
        async move {
            let stored = db
                .append_messages(&id, &messages, from, time::now())
                .await
                .unwrap();
            (stored.appended, stored.last_seq)
        }
    };
    assert_eq!(append(w1.id.clone(), batch, None).await, (5, 5));
    assert_eq!(
        append(w1.id.clone(), vec![json!("six")], None).await,
        (1, 6)
    );
    assert_eq!(
        append(w2.id.clone(), vec![json!("first")], None).await,
        (1, 1)
    );

    // Numbered batches: a repeat stores nothing, an overlap only what is new, a gap
    // is fine.
    let numbered = |from: i64, n: i64| -> Vec<serde_json::Value> {
        (from..from + n).map(|i| json!({ "agent": i })).collect()
    };
    assert_eq!(append(w2.id.clone(), numbered(1, 3), Some(1)).await, (3, 4));
    assert_eq!(append(w2.id.clone(), numbered(1, 3), Some(1)).await, (0, 4));
    assert_eq!(append(w2.id.clone(), numbered(2, 4), Some(2)).await, (2, 6));
    assert_eq!(append(w2.id.clone(), numbered(9, 1), Some(9)).await, (1, 7));
    let stream: Vec<serde_json::Value> = db
        .list_messages(&w2.id, &messages_after(1, 100))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|m| m.message["agent"].clone())
        .collect();
    assert_eq!(stream, [1, 2, 3, 4, 5, 9].map(|i| json!(i)));

    let read = db
        .list_messages(&w1.id, &messages_after(3, 100))
        .await
        .unwrap()
        .items;
    let seqs: Vec<i64> = read.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![4, 5, 6]);
    assert_eq!(read[0].message, json!({"n": 3}));
    assert_eq!(
        db.list_messages(&w1.id, &messages_after(0, 2))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
}

/// More events at once than the Postgres sequencer stamps in one pass (10,000): every
/// one gets its public id, the ids follow each other without a gap, and in the order
/// the events were written.
async fn a_burst_of_events_is_numbered_whole_and_in_order(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 5, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let (worker, _) = claim(&db, &a, 1).await.remove(0);
    const BURST: i64 = 25_000;
    // Two writes of 12,500 each: a pass finds more waiting than it stamps.
    for chunk in 0..2 {
        let batch: Vec<_> = (0..BURST / 2)
            .map(|i| json!({"n": chunk * BURST / 2 + i}))
            .collect();
        db.append_messages(&worker.id, &batch, None, time::now())
            .await
            .unwrap();
    }
    // Postgres stamps the ids after commit: wait for all of them, but for less than
    // its sequencer's 5 s backstop, so that passes stopping short would show.
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        events = Vec::new();
        let mut after = 0;
        loop {
            let page = db.events_after(after, 5_000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.id;
            events.extend(page.into_iter().filter(|e| e.name == "worker.message"));
        }
        if events.len() as i64 >= BURST {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(events.len() as i64, BURST, "every event numbered");
    for pair in events.windows(2) {
        assert_eq!(pair[1].id, pair[0].id + 1, "ids follow each other");
    }
    let order: Vec<i64> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.data).ok())
        .filter_map(|d| d.pointer("/message/n").and_then(|n| n.as_i64()))
        .collect();
    assert_eq!(
        order,
        (0..BURST).collect::<Vec<_>>(),
        "in the order written"
    );
}

async fn concurrent_claims_never_share_a_task(db: Db) {
    let ws = new_workspace(&db).await;
    let mut accounts = Vec::new();
    for _ in 0..4 {
        let a = account(AccountType::Service, 1000, None);
        new_account(&db, &a).await;
        grant(&db, &a, &ws, true).await;
        accounts.push(a);
    }
    for _ in 0..60 {
        new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    }
    let mut claimers = Vec::new();
    for i in 0..16 {
        let db = db.clone();
        let a = accounts[i % accounts.len()].clone();
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = claim(&db, &a, 2).await;
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|(_, t)| t.id));
            }
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 60, "every task claimed");
    assert_eq!(unique.len(), 60, "no task claimed twice");
}

/// Many claims of one account at the same moment (which a server makes together, in
/// one transaction): between them they take no more than the account's limit, no task
/// twice, and each only what its own request may take.
async fn one_accounts_claims_at_once_share_its_limit(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 7, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    for _ in 0..10 {
        task_for(&db, &ws, "codex", None).await;
        new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    }
    let start = Arc::new(tokio::sync::Barrier::new(24));
    let mut claimers = Vec::new();
    for i in 0..24 {
        let (db, a, start) = (db.clone(), a.clone(), start.clone());
        let runners: &[&str] = if i % 2 == 0 { &["codex"] } else { &[] };
        claimers.push(tokio::spawn(async move {
            let request = ClaimRequest {
                max_tasks: 2,
                workspace_id: None,
                runners: runners.iter().map(|r| r.to_string()).collect(),
            };
            start.wait().await;
            let got = db.claim(&a, &request, time::now()).await.unwrap();
            (runners, got)
        }));
    }
    let mut taken = Vec::new();
    for c in claimers {
        let (runners, got) = c.await.unwrap();
        assert!(got.len() <= 2, "a claim took more than it asked for");
        for c in got {
            if let Some(runner) = &c.task.runner {
                assert!(
                    runners.contains(&runner.as_str()),
                    "{runner} for {runners:?}"
                );
            }
            assert_eq!(c.worker.task_id, c.task.id);
            taken.push(c.task.id);
        }
    }
    let unique: HashSet<_> = taken.iter().collect();
    assert_eq!(taken.len(), 7, "the account's limit, taken whole");
    assert_eq!(unique.len(), 7, "no task claimed twice");
    let usage = db.usage(&a.id, &time::utc_day(time::now())).await.unwrap();
    assert_eq!(usage.active_workers, 7);
    // Only this account may claim in the workspace: its workers are the ones it sees.
    let filter = WorkerFilter {
        visible_to: Some(a.id.clone()),
        page: PageRequest {
            after: None,
            limit: 100,
        },
        ..WorkerFilter::default()
    };
    assert_eq!(db.list_workers(&filter).await.unwrap().items.len(), 7);
}

async fn artifacts_and_comments_stay_with_the_task(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 5, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    let task = new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;

    // Two attempts; each leaves artifacts, and a refused update leaves none.
    let (w1, _) = claim(&db, &a, 1).await.remove(0);
    let first = WorkerUpdate {
        status: Some(WorkerStatus::Error),
        branch: Some(format!("buildd/{}", task.id)),
        artifacts: vec![Artifact {
            kind: ArtifactKind::File,
            value: "notes.md".into(),
        }],
        ..WorkerUpdate::default()
    };
    db.apply(&w1.id, Action::update(first), time::now())
        .await
        .unwrap();
    let refused = WorkerUpdate {
        status: Some(WorkerStatus::Running),
        commit_sha: Some("bad".into()),
        ..WorkerUpdate::default()
    };
    assert!(
        db.apply(&w1.id, Action::update(refused), time::now())
            .await
            .is_err()
    );
    let (w2, _) = claim(&db, &a, 1).await.remove(0);
    let second = WorkerUpdate {
        branch: Some(format!("buildd/{}", task.id)),
        commit_sha: Some("feedbeef".into()),
        pr_url: Some("https://github.com/o/r/pull/1".into()),
        ..WorkerUpdate::default()
    };
    db.apply(&w2.id, Action::update(second), time::now())
        .await
        .unwrap();

    let recorded = db
        .list_artifacts(&task.id, &PageRequest::default())
        .await
        .unwrap()
        .items;
    let seen: Vec<(&str, ArtifactKind, &str)> = recorded
        .iter()
        .map(|r| {
            (
                r.worker_id.as_str(),
                r.artifact.kind,
                r.artifact.value.as_str(),
            )
        })
        .collect();
    let branch = format!("buildd/{}", task.id);
    assert_eq!(
        seen,
        vec![
            (w1.id.as_str(), ArtifactKind::Branch, branch.as_str()),
            (w1.id.as_str(), ArtifactKind::File, "notes.md"),
            (w2.id.as_str(), ArtifactKind::Branch, branch.as_str()),
            (w2.id.as_str(), ArtifactKind::Commit, "feedbeef"),
            (
                w2.id.as_str(),
                ArtifactKind::Pr,
                "https://github.com/o/r/pull/1"
            ),
        ]
    );

    let first = db
        .add_comment(&task.id, "admin", "please add tests", time::now())
        .await
        .unwrap();
    let second = db
        .add_comment(&task.id, &a.id, "done", time::now())
        .await
        .unwrap();
    assert!(second.id > first.id);
    assert_eq!(
        db.list_comments(&task.id, &PageRequest::default())
            .await
            .unwrap()
            .items,
        vec![first, second]
    );
}

async fn tasks_from_one_source_share_it(db: Db) {
    let ws = new_workspace(&db).await;
    let other_ws = new_workspace(&db).await;
    let source = |ws: &Workspace, external: Option<&str>| Source {
        id: new_id(IdKind::Source),
        workspace_id: ws.id.clone(),
        source_type: "github_issue".into(),
        external_id: external.map(str::to_owned),
        url: external.map(|e| format!("https://github.com/{e}")),
        created_at: time::now(),
    };
    let template = new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let create = async |ws: &Workspace, src: Source| {
        let task = Task {
            id: new_id(IdKind::Task),
            workspace_id: ws.id.clone(),
            ..template.clone()
        };
        let created = db.create_task(&task, Some(&src)).await.unwrap();
        assert_eq!(
            db.get_task(&created.id).await.unwrap(),
            Some(created.clone())
        );
        created.source_id.unwrap()
    };
    let first = create(&ws, source(&ws, Some("o/r#12"))).await;
    let again = create(&ws, source(&ws, Some("o/r#12"))).await;
    let other_issue = create(&ws, source(&ws, Some("o/r#13"))).await;
    let elsewhere = create(&other_ws, source(&other_ws, Some("o/r#12"))).await;
    let anonymous_1 = create(&ws, source(&ws, None)).await;
    let anonymous_2 = create(&ws, source(&ws, None)).await;
    assert_eq!(first, again, "the same issue is one source");
    let distinct: HashSet<&String> = [&first, &other_issue, &elsewhere, &anonymous_1, &anonymous_2]
        .into_iter()
        .collect();
    assert_eq!(distinct.len(), 5);

    let stored = db.get_source(&first).await.unwrap().unwrap();
    assert_eq!(stored.external_id.as_deref(), Some("o/r#12"));
    assert_eq!(stored.url.as_deref(), Some("https://github.com/o/r#12"));
    let filter = TaskFilter {
        source_id: Some(first.clone()),
        page: PageRequest {
            after: None,
            limit: 10,
        },
        ..TaskFilter::default()
    };
    assert_eq!(db.list_tasks(&filter).await.unwrap().items.len(), 2);
    assert_eq!(
        db.get_task(&template.id).await.unwrap().unwrap().source_id,
        None
    );
}

async fn attachments_keep_their_bytes(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 5, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let (w, t) = claim(&db, &a, 1).await.remove(0);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let first = Attachment {
        id: new_id(IdKind::Attachment),
        worker_id: w.id.clone(),
        task_id: t.id.clone(),
        message_seq: Some(3),
        name: "shot.png".into(),
        content_type: "image/png".into(),
        size: bytes.len() as i64,
        created_at: time::now(),
    };
    db.add_attachment(&first, &bytes).await.unwrap();
    let second = Attachment {
        id: new_id(IdKind::Attachment),
        message_seq: None,
        name: "log.txt".into(),
        content_type: "text/plain".into(),
        size: 2,
        created_at: time::now() + Duration::milliseconds(1),
        ..first.clone()
    };
    db.add_attachment(&second, b"ok").await.unwrap();
    assert_eq!(
        db.list_attachments(&w.id).await.unwrap(),
        vec![first.clone(), second]
    );
    assert_eq!(
        db.get_attachment(&first.id).await.unwrap(),
        Some((first, bytes))
    );
    assert_eq!(db.get_attachment("att-none").await.unwrap(), None);
}

/// Runner output, results and events are any JSON: each must read back as it was
/// written, key order and extreme numbers included. (Postgres JSONB once rewrote the
/// largest double into text no reader of doubles takes, which stopped the event stream.)
async fn json_reads_back_exactly_as_written(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 5, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    let task = new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let from = db.last_event_id().await.unwrap();
    let (worker, _) = claim(&db, &a, 1).await.remove(0);

    let odd: serde_json::Value = serde_json::from_str(
        r#"{"zeta": 1.7976931348623157e308, "alpha": -5e-324, "big": 18446744073709551615, "nested": {"b": [1, 2.5], "a": null}}"#,
    )
    .unwrap();
    db.append_messages(&worker.id, std::slice::from_ref(&odd), None, time::now())
        .await
        .unwrap();
    let read = db
        .list_messages(&worker.id, &messages_after(0, 10))
        .await
        .unwrap()
        .items;
    assert_eq!(read[0].message, odd);
    assert_eq!(
        read[0].message.to_string(),
        odd.to_string(),
        "key order kept"
    );

    set_status(&db, &worker.id, WorkerStatus::Starting, None).await;
    set_status(
        &db,
        &worker.id,
        WorkerStatus::Running,
        Some(1.7976931348623157e308),
    )
    .await;
    let update = WorkerUpdate {
        status: Some(WorkerStatus::Completed),
        result: Some(odd.clone()),
        ..WorkerUpdate::default()
    };
    db.apply(&worker.id, Action::update(update), time::now())
        .await
        .unwrap();
    let done = db.get_task(&task.id).await.unwrap().unwrap();
    assert_eq!(done.result.as_ref().unwrap().to_string(), odd.to_string());

    // Postgres numbers events just after commit; wait for the completion's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let completed = loop {
        let events = db.events_after(from, 100).await.unwrap();
        if let Some(e) = events
            .into_iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(&e.data).unwrap())
            .find(|data| data["task"]["status"] == "completed")
        {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no completion event");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(completed["task"]["result"].to_string(), odd.to_string());
}

async fn retention_deletes_old_events_and_finished_output_only(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 5, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    for _ in 0..3 {
        new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    }
    let claimed = claim(&db, &a, 2).await;
    let (done, live) = (&claimed[0].0, &claimed[1].0);
    for w in [done, live] {
        db.append_messages(
            &w.id,
            &[json!("a"), json!("b"), json!("c")],
            None,
            time::now(),
        )
        .await
        .unwrap();
        let file = Attachment {
            id: new_id(IdKind::Attachment),
            worker_id: w.id.clone(),
            task_id: w.task_id.clone(),
            message_seq: None,
            name: "out.txt".into(),
            content_type: "text/plain".into(),
            size: 2,
            created_at: time::now(),
        };
        db.add_attachment(&file, b"hi").await.unwrap();
    }
    set_status(&db, &done.id, WorkerStatus::Starting, None).await;
    set_status(&db, &done.id, WorkerStatus::Running, None).await;
    set_status(&db, &done.id, WorkerStatus::Completed, None).await;

    let events_before = settled_events(&db).await;
    assert!(events_before.len() > 10);
    let newest = db.last_event_id().await.unwrap();
    assert_eq!(db.events_purged_through().await.unwrap(), 0);

    // Nothing is old enough yet.
    let past = time::now() - Duration::days(1);
    assert_eq!(db.purge_events(past, 1000).await.unwrap(), 0);
    assert_eq!(db.purge_worker_output(past, 1000).await.unwrap(), 0);

    // Everything is: events go in batches, the newest always stays.
    let future = time::now() + Duration::days(1);
    let mut deleted = 0;
    loop {
        let n = db.purge_events(future, 4).await.unwrap();
        assert!(n <= 4);
        if n == 0 {
            break;
        }
        deleted += n;
    }
    assert_eq!(deleted as usize, events_before.len() - 1);
    let left = db.events_after(0, 10_000).await.unwrap();
    assert_eq!(left.iter().map(|e| e.id).collect::<Vec<_>>(), [newest]);
    assert_eq!(db.events_purged_through().await.unwrap(), newest - 1);
    assert_eq!(db.last_event_id().await.unwrap(), newest);

    // New events go on numbering after the deleted ones.
    new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let next = settled_events(&db).await;
    assert!(
        next.len() > 1 && next.iter().all(|e| e.id >= newest),
        "{next:?}"
    );

    // Only the finished worker's output goes, in batches.
    let mut deleted = 0;
    loop {
        let n = db.purge_worker_output(future, 2).await.unwrap();
        if n == 0 {
            break;
        }
        deleted += n;
    }
    assert_eq!(deleted, 4, "three messages and an attachment");
    assert!(
        db.list_messages(&done.id, &messages_after(0, 100))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(db.list_attachments(&done.id).await.unwrap().is_empty());
    assert_eq!(
        db.list_messages(&live.id, &messages_after(0, 100))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    assert_eq!(db.list_attachments(&live.id).await.unwrap().len(), 1);
}

/// Every event, once the store has published all it wrote (Postgres numbers events
/// just after commit).
async fn settled_events(db: &Db) -> Vec<buildd::core::events::StoredEvent> {
    let mut seen = db.events_after(0, 10_000).await.unwrap();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = db.events_after(0, 10_000).await.unwrap();
        if now.len() == seen.len() {
            return now;
        }
        seen = now;
    }
}

async fn cancelling_a_paused_task_frees_its_slot(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 1, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    let first = new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let claimed = claim(&db, &a, 1).await;
    let worker = &claimed[0].0;
    db.apply(&worker.id, Action::Pause, time::now())
        .await
        .unwrap();
    assert!(
        claim(&db, &a, 1).await.is_empty(),
        "the paused worker holds the one slot"
    );
    db.apply(&first.id, Action::Cancel, time::now())
        .await
        .unwrap();
    let ended = db.get_worker(&worker.id).await.unwrap().unwrap();
    assert_eq!(ended.status, WorkerStatus::Error);
    assert_eq!(ended.error.as_deref(), Some("the task was cancelled"));
    let second = claim(&db, &a, 1).await;
    assert_eq!(second.len(), 1, "the slot is free again");

    // A paused worker whose agent went quiet expires after its own, longer cutoff.
    let worker = &second[0].0;
    db.apply(&worker.id, Action::Pause, time::now())
        .await
        .unwrap();
    let later = time::now() + Duration::seconds(10);
    let leased_only = Cutoffs {
        leased: later,
        paused: time::now() - Duration::seconds(10),
    };
    assert!(db.stale_workers(leased_only).await.unwrap().is_empty());
    let both = Cutoffs {
        leased: later,
        paused: later,
    };
    assert_eq!(
        db.stale_workers(both).await.unwrap(),
        vec![worker.id.clone()]
    );
    let expired = db
        .apply(&worker.id, Action::Expire { cutoffs: both }, later)
        .await
        .unwrap();
    assert_eq!(expired.worker.unwrap().status, WorkerStatus::Error);
    assert_eq!(
        db.usage(&a.id, &time::utc_day(later))
            .await
            .unwrap()
            .active_workers,
        0
    );
}

/// A random walk over claims, reports, pauses, starts, cancels, replies and expiries
/// across three accounts; after each step the usage counters the claims read must
/// equal what the worker rows add up to.
async fn usage_counters_match_the_rows_after_random_operations(db: Db) {
    use rand::{RngExt, SeedableRng};
    let seed: u64 = std::env::var("BUILDD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let now = time::now();
    let day = time::utc_day(now);
    let ws = new_workspace(&db).await;
    let mut accounts = Vec::new();
    for max in [1, 2, 3] {
        let a = account(AccountType::Service, max, None);
        new_account(&db, &a).await;
        grant(&db, &a, &ws, true).await;
        accounts.push(a);
    }
    let mut tasks = Vec::new();
    for _ in 0..12 {
        tasks.push(new_task(&db, &ws, RunnerPreference::Any, 0, 2).await.id);
    }
    let mut workers: Vec<String> = Vec::new();
    let statuses = [
        WorkerStatus::Starting,
        WorkerStatus::Running,
        WorkerStatus::WaitingInput,
        WorkerStatus::Completed,
        WorkerStatus::Error,
        WorkerStatus::Paused,
    ];
    for step in 0..300 {
        let pick = rng.random_range(0..9);
        let result = match (pick, workers.is_empty()) {
            (0 | 1, _) | (_, true) => {
                let a = &accounts[rng.random_range(0..accounts.len())];
                let request = ClaimRequest {
                    max_tasks: rng.random_range(1..=2),
                    workspace_id: None,
                    runners: Vec::new(),
                };
                let got = db.claim(a, &request, now).await.unwrap();
                workers.extend(got.into_iter().map(|c| c.worker.id));
                Ok(())
            }
            _ => {
                let worker = workers[rng.random_range(0..workers.len())].clone();
                let task = db.get_worker(&worker).await.unwrap().unwrap().task_id;
                let action = match pick {
                    2 | 3 => Action::update(WorkerUpdate {
                        status: Some(statuses[rng.random_range(0..statuses.len())]),
                        cost_usd: Some(f64::from(rng.random_range(0..100u32)) / 100.0),
                        ..WorkerUpdate::default()
                    }),
                    4 => Action::Pause,
                    5 => Action::Start,
                    6 => Action::Heartbeat,
                    7 => {
                        let cutoffs = buildd::core::lease::Cutoffs::at(
                            now + Duration::hours(1),
                            std::time::Duration::from_secs(rng.random_range(1..3000)),
                        );
                        Action::Expire { cutoffs }
                    }
                    _ => {
                        let id = if rng.random_bool(0.5) { &task } else { &worker };
                        let action = if rng.random_bool(0.5) {
                            Action::Cancel
                        } else {
                            Action::Reply {
                                message: "go on".into(),
                            }
                        };
                        let r = db.apply(id, action, now).await;
                        check_usage(&db, &accounts, &day, seed, step).await;
                        if let Err(e) = &r {
                            assert!(
                                !matches!(e, buildd::store::StoreError::Backend(_)),
                                "seed {seed}: {e}"
                            );
                        }
                        continue;
                    }
                };
                db.apply(&worker, action, now).await.map(drop)
            }
        };
        if let Err(e) = result {
            assert!(
                !matches!(e, buildd::store::StoreError::Backend(_)),
                "seed {seed}, step {step}: {e}"
            );
        }
        check_usage(&db, &accounts, &day, seed, step).await;
    }
}

/// Each account's counters against its worker rows.
async fn check_usage(db: &Db, accounts: &[Account], day: &str, seed: u64, step: usize) {
    let filter = WorkerFilter {
        page: PageRequest {
            after: None,
            limit: 10_000,
        },
        ..WorkerFilter::default()
    };
    let all = db.list_workers(&filter).await.unwrap().items;
    for a in accounts {
        let mine: Vec<&Worker> = all.iter().filter(|w| w.account_id == a.id).collect();
        let active = mine
            .iter()
            .filter(|w| WorkerStatus::ACTIVE.contains(&w.status))
            .count() as i64;
        let cost: f64 = mine
            .iter()
            .filter(|w| time::utc_day(w.started_at) == day)
            .map(|w| w.cost_usd)
            .sum();
        let usage = db.usage(&a.id, day).await.unwrap();
        assert_eq!(
            usage.active_workers, active,
            "seed {seed}, step {step}: active workers of {}",
            a.id
        );
        assert!(
            (usage.cost_usd - cost).abs() < 1e-9,
            "seed {seed}, step {step}: cost of {}: counter {} rows {cost}",
            a.id,
            usage.cost_usd
        );
        assert!(
            active <= a.max_concurrent_workers,
            "seed {seed}, step {step}: over the limit"
        );
    }
}

// ---- workflows ----

/// A task depending on `deps`, created now.
async fn dependent(db: &Db, ws: &Workspace, title: &str, deps: &[&Task]) -> Task {
    let task = Task {
        depends_on: deps.iter().map(|d| d.id.clone()).collect(),
        ..Task::new(ws.id.clone(), title, time::now())
    };
    db.create_task(&task, None).await.unwrap()
}

/// Claims `task` for `a` and takes its worker to `status`.
async fn run_to(db: &Db, a: &Account, task: &Task, status: WorkerStatus) -> Worker {
    let worker = db
        .claim_task(a, &task.id, time::now())
        .await
        .unwrap()
        .worker;
    for s in [WorkerStatus::Starting, WorkerStatus::Running] {
        set_status(db, &worker.id, s, None).await;
    }
    if status != WorkerStatus::Running {
        set_status(db, &worker.id, status, None).await;
    }
    worker
}

async fn status_of(db: &Db, id: &str) -> TaskStatus {
    db.get_task(id).await.unwrap().unwrap().status
}

async fn dependencies_block_until_the_last_one_completes(db: Db) {
    let a = account(AccountType::Service, 10, None);
    new_account(&db, &a).await;
    let ws = new_workspace(&db).await;
    grant(&db, &a, &ws, true).await;
    let first = dependent(&db, &ws, "first", &[]).await;
    let second = dependent(&db, &ws, "second", &[]).await;
    let last = dependent(&db, &ws, "last", &[&first, &second]).await;
    assert_eq!(last.status, TaskStatus::Blocked);
    assert_eq!(last.depends_on, [first.id.clone(), second.id.clone()]);
    // Never claimed while blocked, explicitly or not.
    let claimed: Vec<String> = claim(&db, &a, 10)
        .await
        .into_iter()
        .map(|(_, t)| t.id)
        .collect();
    assert_eq!(claimed.len(), 2);
    assert!(!claimed.contains(&last.id));
    let err = db.claim_task(&a, &last.id, time::now()).await.unwrap_err();
    assert!(err.to_string().contains("not pending"), "{err}");

    let workers = db
        .list_workers(&WorkerFilter {
            page: PageRequest {
                after: None,
                limit: 10,
            },
            ..WorkerFilter::default()
        })
        .await
        .unwrap()
        .items;
    let worker_of = |t: &Task| {
        workers
            .iter()
            .find(|w| w.task_id == t.id)
            .unwrap()
            .id
            .clone()
    };
    for w in [worker_of(&first), worker_of(&second)] {
        set_status(&db, &w, WorkerStatus::Starting, None).await;
        set_status(&db, &w, WorkerStatus::Running, None).await;
    }
    set_status(&db, &worker_of(&first), WorkerStatus::Completed, None).await;
    assert_eq!(status_of(&db, &last.id).await, TaskStatus::Blocked);
    let before = db.last_event_id().await.unwrap();
    let applied = set_status(&db, &worker_of(&second), WorkerStatus::Completed, None).await;
    assert_eq!(status_of(&db, &last.id).await, TaskStatus::Pending);
    // The unblocking is an event of the same transaction, which wakes claims.
    assert!(
        applied
            .outcome
            .events
            .iter()
            .any(|e| e.name == "task.updated"
                && e.data["task"]["id"] == last.id.as_str()
                && e.data["task"]["status"] == "pending")
    );
    let events = settled_events(&db).await;
    assert!(
        events
            .iter()
            .any(|e| e.id > before && e.offers_work() && e.data.contains(&last.id))
    );
    let links = db.task_links(&last.id).await.unwrap();
    assert_eq!(links.dependencies.len(), 2);
    assert!(
        links
            .dependencies
            .iter()
            .all(|d| d.status == TaskStatus::Completed)
    );
    assert_eq!(claim(&db, &a, 10).await[0].1.id, last.id);
}

async fn failure_propagates_and_retry_brings_dependents_back(db: Db) {
    let a = account(AccountType::Service, 10, None);
    new_account(&db, &a).await;
    let ws = new_workspace(&db).await;
    grant(&db, &a, &ws, true).await;
    let root = Task {
        max_attempts: 1,
        ..Task::new(ws.id.clone(), "root", time::now())
    };
    let root = db.create_task(&root, None).await.unwrap();
    let other = dependent(&db, &ws, "other", &[]).await;
    let child = dependent(&db, &ws, "child", &[&root]).await;
    let grandchild = dependent(&db, &ws, "grandchild", &[&child, &other]).await;
    let bystander = dependent(&db, &ws, "bystander", &[&other]).await;
    run_to(&db, &a, &root, WorkerStatus::Error).await;
    assert_eq!(status_of(&db, &root.id).await, TaskStatus::Failed);
    let child_now = db.get_task(&child.id).await.unwrap().unwrap();
    assert_eq!(child_now.status, TaskStatus::Failed);
    assert_eq!(
        child_now.error,
        Some(format!("dependency {} is failed", root.id))
    );
    let grandchild_now = db.get_task(&grandchild.id).await.unwrap().unwrap();
    assert_eq!(grandchild_now.status, TaskStatus::Failed);
    assert_eq!(
        grandchild_now.error,
        Some(format!("dependency {} is failed", child.id))
    );
    assert_eq!(status_of(&db, &bystander.id).await, TaskStatus::Blocked);
    // A new task on a failed one fails at once; retrying a dependent first is refused.
    let late = dependent(&db, &ws, "late", &[&child]).await;
    assert_eq!(late.status, TaskStatus::Failed);
    let err = db.retry(&child.id, time::now()).await.unwrap_err();
    assert!(err.to_string().contains("retry it first"), "{err}");
    assert!(
        db.retry(&other.id, time::now()).await.is_err(),
        "a pending task is no retry"
    );

    let retried = db.retry(&root.id, time::now()).await.unwrap();
    assert_eq!((retried.status, retried.attempts), (TaskStatus::Pending, 0));
    for t in [&child, &grandchild, &late] {
        let now = db.get_task(&t.id).await.unwrap().unwrap();
        assert_eq!(
            (now.status, now.error),
            (TaskStatus::Blocked, None),
            "{}",
            t.title
        );
    }
    run_to(&db, &a, &root, WorkerStatus::Completed).await;
    assert_eq!(status_of(&db, &child.id).await, TaskStatus::Pending);
    assert_eq!(status_of(&db, &grandchild.id).await, TaskStatus::Blocked);
    // Cancelling a blocked task fails its dependents too.
    db.apply(&child.id, Action::Cancel, time::now())
        .await
        .unwrap();
    assert_eq!(status_of(&db, &grandchild.id).await, TaskStatus::Failed);
}

async fn dependencies_must_exist_in_the_workspace(db: Db) {
    let ws = new_workspace(&db).await;
    let elsewhere = new_workspace(&db).await;
    let foreign = dependent(&db, &elsewhere, "foreign", &[]).await;
    for (deps, why) in [
        (
            vec!["task-nope".to_owned()],
            "task \"task-nope\" in workspace",
        ),
        (vec![foreign.id.clone()], "not found"),
    ] {
        let task = Task {
            depends_on: deps,
            ..Task::new(ws.id.clone(), "t", time::now())
        };
        let err = db.create_task(&task, None).await.unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        assert!(
            db.get_task(&task.id).await.unwrap().is_none(),
            "nothing is stored"
        );
    }
}

async fn dependencies_ending_together_unblock_their_dependent(db: Db) {
    let a = account(AccountType::Service, 50, None);
    new_account(&db, &a).await;
    let ws = new_workspace(&db).await;
    grant(&db, &a, &ws, true).await;
    for round in 0..10 {
        let left = dependent(&db, &ws, "left", &[]).await;
        let right = dependent(&db, &ws, "right", &[]).await;
        let join = dependent(&db, &ws, "join", &[&left, &right]).await;
        let l = run_to(&db, &a, &left, WorkerStatus::Running).await;
        let r = run_to(&db, &a, &right, WorkerStatus::Running).await;
        let (db1, db2) = (db.clone(), db.clone());
        let done = |db: Db, id: String| async move {
            set_status(&db, &id, WorkerStatus::Completed, None).await;
        };
        let (x, y) = tokio::join!(tokio::spawn(done(db1, l.id)), tokio::spawn(done(db2, r.id)));
        x.unwrap();
        y.unwrap();
        assert_eq!(
            status_of(&db, &join.id).await,
            TaskStatus::Pending,
            "round {round}"
        );
        db.apply(&join.id, Action::Cancel, time::now())
            .await
            .unwrap();
    }
}

fn plan(steps: &[(&str, &[&str])]) -> buildd::api::Plan {
    buildd::api::Plan {
        steps: steps
            .iter()
            .map(|(r, deps)| buildd::api::PlanStep {
                step_ref: r.to_string(),
                title: format!("Step {r}"),
                description: format!("do {r}"),
                depends_on: deps.iter().map(|d| d.to_string()).collect(),
            })
            .collect(),
    }
}

async fn approving_a_plan_makes_its_steps_once(db: Db) {
    let a = account(AccountType::Service, 10, None);
    new_account(&db, &a).await;
    let ws = new_workspace(&db).await;
    grant(&db, &a, &ws, true).await;
    let task = Task {
        mode: buildd::api::TaskMode::Plan,
        priority: 4,
        ..Task::new(ws.id.clone(), "plan it", time::now())
    };
    let task = db.create_task(&task, None).await.unwrap();
    let err = db.approve(&task.id, None, time::now()).await.unwrap_err();
    assert!(err.to_string().contains("not planned"), "{err}");
    let worker = db
        .claim_task(&a, &task.id, time::now())
        .await
        .unwrap()
        .worker;
    for s in [WorkerStatus::Starting, WorkerStatus::Running] {
        set_status(&db, &worker.id, s, None).await;
    }
    let proposed = plan(&[("schema", &[]), ("api", &["schema"]), ("docs", &[])]);
    let done = WorkerUpdate {
        status: Some(WorkerStatus::Completed),
        result: Some(json!({ "text": "planned", "plan": proposed })),
        ..WorkerUpdate::default()
    };
    db.apply(&worker.id, Action::update(done), time::now())
        .await
        .unwrap();
    assert_eq!(status_of(&db, &task.id).await, TaskStatus::Planned);

    let bad = plan(&[("a", &["b"]), ("b", &["a"])]);
    let err = db
        .approve(&task.id, Some(bad), time::now())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
    assert!(
        db.task_links(&task.id).await.unwrap().children.is_empty(),
        "nothing made"
    );
    assert_eq!(status_of(&db, &task.id).await, TaskStatus::Planned);

    let (approved, children) = db.approve(&task.id, None, time::now()).await.unwrap();
    assert_eq!(approved.status, TaskStatus::Completed);
    let by_title = |t: &str| children.iter().find(|c| c.title == t).unwrap();
    assert_eq!(by_title("Step schema").status, TaskStatus::Pending);
    assert_eq!(by_title("Step api").status, TaskStatus::Blocked);
    assert_eq!(
        by_title("Step api").depends_on,
        [by_title("Step schema").id.clone()]
    );
    assert!(
        children
            .iter()
            .all(|c| c.priority == 4 && c.parent_id.as_deref() == Some(task.id.as_str()))
    );
    let err = db.approve(&task.id, None, time::now()).await.unwrap_err();
    assert!(matches!(
        err,
        buildd::store::StoreError::Rule(buildd::core::RuleError::Conflict(_))
    ));
    let links = db.task_links(&task.id).await.unwrap();
    assert_eq!(links.children.len(), 3);
}

async fn explicit_claims_follow_the_rules_of_a_claim(db: Db) {
    let a = account(AccountType::Service, 1, None);
    new_account(&db, &a).await;
    let ws = new_workspace(&db).await;
    grant(&db, &a, &ws, true).await;
    let for_users = new_task(&db, &ws, RunnerPreference::User, 0, 3).await;
    let err = db
        .claim_task(&a, &for_users.id, time::now())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            buildd::store::StoreError::Rule(buildd::core::RuleError::Forbidden(_))
        ),
        "{err}"
    );
    let one = new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let two = new_task(&db, &ws, RunnerPreference::Any, 9, 3).await;
    let Claimed { worker, task, .. } = db.claim_task(&a, &one.id, time::now()).await.unwrap();
    assert_eq!(
        (task.id.as_str(), task.status),
        (one.id.as_str(), TaskStatus::Assigned)
    );
    assert_eq!(worker.account_id, a.id);
    assert_eq!(
        db.usage(&a.id, &time::utc_day(time::now()))
            .await
            .unwrap()
            .active_workers,
        1
    );
    let err = db.claim_task(&a, &two.id, time::now()).await.unwrap_err();
    assert!(err.to_string().contains("concurrent workers"), "{err}");
    let err = db.claim_task(&a, &one.id, time::now()).await.unwrap_err();
    assert!(err.to_string().contains("not pending"), "{err}");
    assert!(matches!(
        db.claim_task(&a, "task-nope", time::now()).await,
        Err(buildd::store::StoreError::NotFound(_))
    ));
}

async fn a_followup_waits_for_its_parents_account(db: Db) {
    let ran = account(AccountType::Service, 5, None);
    let other = account(AccountType::Service, 5, None);
    new_account(&db, &ran).await;
    new_account(&db, &other).await;
    let ws = new_workspace(&db).await;
    grant(&db, &ran, &ws, true).await;
    grant(&db, &other, &ws, true).await;
    let parent = dependent(&db, &ws, "parent", &[]).await;
    let worker = run_to(&db, &ran, &parent, WorkerStatus::Running).await;
    let report = WorkerUpdate {
        status: Some(WorkerStatus::Completed),
        session_id: Some("session-1".into()),
        branch: Some(format!("buildd/{}", parent.id)),
        ..WorkerUpdate::default()
    };
    let done = db
        .apply(&worker.id, Action::update(report), time::now())
        .await
        .unwrap();
    let now = time::now();
    let task =
        buildd::core::workflow::followup(&done.task, done.worker.as_ref(), "more", now).unwrap();
    let task = db.create_task(&task, None).await.unwrap();
    assert_eq!(task.resume_session_id.as_deref(), Some("session-1"));
    assert_eq!(task.base_branch, Some(format!("buildd/{}", parent.id)));
    assert!(
        claim_at(&db, &other, 5, now).await.is_empty(),
        "held for its parent's account"
    );
    let later = now + buildd::core::workflow::FOLLOWUP_PREFERENCE;
    let taken = claim_at(&db, &other, 5, later).await;
    assert_eq!(
        taken[0].1.id, task.id,
        "anyone may take it once the hold is over"
    );
    let followup = db.task_links(&parent.id).await.unwrap().children;
    assert_eq!(followup[0].id, task.id);
}

async fn instructions_reach_the_worker_once(db: Db) {
    let a = account(AccountType::Service, 5, None);
    new_account(&db, &a).await;
    let ws = new_workspace(&db).await;
    grant(&db, &a, &ws, true).await;
    let task = dependent(&db, &ws, "t", &[]).await;
    let worker = run_to(&db, &a, &task, WorkerStatus::Running).await;
    for m in ["use Postgres", "and add tests"] {
        let action = Action::Instruct { message: m.into() };
        db.apply(&worker.id, action, time::now()).await.unwrap();
    }
    let beat = db
        .apply(&worker.id, Action::Heartbeat, time::now())
        .await
        .unwrap();
    assert_eq!(beat.outcome.instructions, ["use Postgres", "and add tests"]);
    let beat = db
        .apply(&worker.id, Action::Heartbeat, time::now())
        .await
        .unwrap();
    assert!(beat.outcome.instructions.is_empty(), "each is sent once");
    let messages = db
        .list_messages(&worker.id, &messages_after(0, 10))
        .await
        .unwrap()
        .items;
    assert_eq!(messages.len(), 2);
    assert!(buildd::core::messages::is_instruction(&messages[0].message));
    set_status(&db, &worker.id, WorkerStatus::Completed, None).await;
    let err = db
        .apply(
            &worker.id,
            Action::Instruct {
                message: "late".into(),
            },
            time::now(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot change"), "{err}");
}

/// The page of a worker's messages numbered above `seq`.
fn messages_after(seq: i64, limit: u32) -> PageRequest {
    PageRequest {
        after: Some(Position::new(seq, "")),
        limit,
    }
}

/// Tasks created in one millisecond still page without a repeat or a gap (the id
/// breaks the tie), newest first; the counts name every status.
async fn pages_split_tasks_created_in_the_same_millisecond(db: Db) {
    let ws = new_workspace(&db).await;
    let at = time::now();
    let mut made = Vec::new();
    for i in 0..30 {
        let task = Task::new(
            ws.id.clone(),
            &format!("same {i}"),
            at + Duration::milliseconds(i / 10),
        );
        db.create_task(&task, None).await.unwrap();
        made.push(task.id);
    }
    let mut filter = TaskFilter {
        workspace_id: Some(ws.id.clone()),
        page: PageRequest {
            after: None,
            limit: 7,
        },
        ..TaskFilter::default()
    };
    let mut seen: Vec<Task> = Vec::new();
    loop {
        let page = db.list_tasks(&filter).await.unwrap();
        assert!(page.items.len() <= 7);
        seen.extend(page.items);
        match page.next {
            Some(next) => filter.page.after = Some(next),
            None => break,
        }
    }
    let mut got: Vec<String> = seen.iter().map(|t| t.id.clone()).collect();
    let keys: Vec<(Timestamp, String)> =
        seen.iter().map(|t| (t.created_at, t.id.clone())).collect();
    assert!(
        keys.windows(2).all(|w| w[0] > w[1]),
        "newest first, ties by id"
    );
    got.sort();
    made.sort();
    assert_eq!(got, made);

    // A cursor may name any time: far past and far future pages read as none and all.
    for (at, expected) in [(-3_007_840_608_283_030, 0), (999_999_999_999_999_999, 30)] {
        filter.page = PageRequest {
            after: Some(Position::new(at, "9")),
            limit: 100,
        };
        assert_eq!(db.list_tasks(&filter).await.unwrap().items.len(), expected);
        let workers = WorkerFilter {
            page: filter.page.clone(),
            ..WorkerFilter::default()
        };
        db.list_workers(&workers).await.unwrap();
    }

    let counts = db.task_counts(Some(&ws.id), None).await.unwrap();
    assert_eq!(counts.len(), TaskStatus::ALL.len());
    assert!(counts.contains(&(TaskStatus::Pending, 30)));
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<i64>(), 30);
}

/// A worker's diff reads back as written (files, patch, flags), and a second
/// recording replaces the first.
async fn a_runs_diff_is_kept_and_replaced_whole(db: Db) {
    use buildd::core::diff::{Diff, FileChange, NewDiff};
    let a = account(AccountType::Service, 2, None);
    new_account(&db, &a).await;
    let ws = new_workspace(&db).await;
    grant(&db, &a, &ws, true).await;
    new_task(&db, &ws, RunnerPreference::Any, 0, 1).await;
    let (worker, task) = claim(&db, &a, 1).await.pop().unwrap();
    assert_eq!(db.get_diff(&worker.id).await.unwrap(), None);
    let change = NewDiff {
        base_sha: "a1b2c3d4".into(),
        head_sha: Some("e5f6a7b8".into()),
        files: vec![
            FileChange {
                path: "src/ünï.rs".into(),
                old_path: Some("src/old.rs".into()),
                added: 3,
                removed: 1,
                binary: false,
            },
            FileChange {
                path: "logo.png".into(),
                old_path: None,
                added: 0,
                removed: 0,
                binary: true,
            },
        ],
        patch: "diff --git a/src/old.rs b/src/ünï.rs\n-x\n+y\n\ttab \\ \"quote\"\n".into(),
        truncated: true,
    };
    let diff = Diff::new(
        &worker.id,
        &task.id,
        Some("buildd/x".into()),
        change.clone(),
        time::now(),
    );
    db.put_diff(&diff).await.unwrap();
    let read = db.get_diff(&worker.id).await.unwrap().unwrap();
    assert_eq!(read.change, change);
    assert_eq!(
        (read.added, read.removed, read.task_id.as_str()),
        (3, 1, task.id.as_str())
    );
    let smaller = NewDiff {
        files: vec![],
        patch: String::new(),
        truncated: false,
        head_sha: None,
        ..change
    };
    db.put_diff(&Diff::new(
        &worker.id,
        &task.id,
        None,
        smaller.clone(),
        time::now(),
    ))
    .await
    .unwrap();
    assert_eq!(
        db.get_diff(&worker.id).await.unwrap().unwrap().change,
        smaller
    );
}

async fn a_workers_token_lives_as_long_as_the_worker(db: Db) {
    let a = account(AccountType::Service, 5, None);
    new_account(&db, &a).await;
    let ws = new_workspace(&db).await;
    grant(&db, &a, &ws, true).await;
    let first = new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let second = new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;
    let request = ClaimRequest {
        max_tasks: 1,
        workspace_id: None,
        runners: Vec::new(),
    };
    let claimed = db.claim(&a, &request, time::now()).await.unwrap();
    let explicit = db.claim_task(&a, &second.id, time::now()).await.unwrap();
    for Claimed { worker, token, .. } in claimed.iter().chain([&explicit]) {
        assert!(keys::looks_like_worker_token(token), "{token}");
        let found = db
            .worker_by_token_hash(&keys::hash_key(token))
            .await
            .unwrap();
        assert_eq!(found.map(|w| w.id), Some(worker.id.clone()));
    }
    assert_ne!(claimed[0].token, explicit.token);
    assert_eq!(claimed[0].task.id, first.id);
    // Nothing stores the token itself.
    let unknown = db.worker_by_token_hash(&claimed[0].token).await.unwrap();
    assert!(unknown.is_none());

    // The run's progress line shows on its worker and its task.
    let update = WorkerUpdate {
        progress: Some("Tests pass; docs next".into()),
        ..WorkerUpdate::default()
    };
    let worker_id = &claimed[0].worker.id;
    db.apply(worker_id, Action::update(update), time::now())
        .await
        .unwrap();
    let progress = Some("Tests pass; docs next".to_owned());
    let worker = db.get_worker(worker_id).await.unwrap().unwrap();
    assert_eq!(worker.progress, progress);
    assert_eq!(
        db.get_task(&first.id).await.unwrap().unwrap().progress,
        progress
    );

    // Paused, the worker keeps its token; ended, it loses it.
    let token = keys::hash_key(&claimed[0].token);
    set_status(&db, worker_id, WorkerStatus::Starting, None).await;
    set_status(&db, worker_id, WorkerStatus::Running, None).await;
    db.apply(worker_id, Action::Pause, time::now())
        .await
        .unwrap();
    assert!(db.worker_by_token_hash(&token).await.unwrap().is_some());
    db.apply(worker_id, Action::Start, time::now())
        .await
        .unwrap();
    set_status(&db, worker_id, WorkerStatus::Running, None).await;
    set_status(&db, worker_id, WorkerStatus::Completed, None).await;
    assert!(db.worker_by_token_hash(&token).await.unwrap().is_none());
    let other = keys::hash_key(&explicit.token);
    assert!(db.worker_by_token_hash(&other).await.unwrap().is_some());
    set_status(&db, &explicit.worker.id, WorkerStatus::Error, None).await;
    assert!(db.worker_by_token_hash(&other).await.unwrap().is_none());
}

async fn a_subtasks_parent_is_a_task_of_its_workspace(db: Db) {
    let ws = new_workspace(&db).await;
    let elsewhere = new_workspace(&db).await;
    let parent = dependent(&db, &ws, "parent", &[]).await;
    let foreign = dependent(&db, &elsewhere, "foreign", &[]).await;
    for wrong in ["task-nope", foreign.id.as_str()] {
        let task = Task {
            parent_id: Some(wrong.into()),
            ..Task::new(ws.id.clone(), "t", time::now())
        };
        let err = db.create_task(&task, None).await.unwrap_err();
        assert!(err.to_string().contains("parentId"), "{err}");
        assert!(db.get_task(&task.id).await.unwrap().is_none());
    }
    let child = Task {
        parent_id: Some(parent.id.clone()),
        ..Task::new(ws.id.clone(), "child", time::now())
    };
    db.create_task(&child, None).await.unwrap();
    let links = db.task_links(&parent.id).await.unwrap();
    assert_eq!(links.children.len(), 1);
    assert_eq!(links.children[0].id, child.id);
}

/// A claim listing `runners`.
async fn claim_with(db: &Db, a: &Account, runners: &[&str]) -> Vec<(Worker, Task)> {
    let request = ClaimRequest {
        max_tasks: 10,
        workspace_id: None,
        runners: runners.iter().map(|r| r.to_string()).collect(),
    };
    db.claim(a, &request, time::now())
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.worker, c.task))
        .collect()
}

/// A pending task that names `runner` (and `fallback`).
async fn task_for(db: &Db, ws: &Workspace, runner: &str, fallback: Option<&str>) -> Task {
    let task = Task {
        runner: Some(runner.into()),
        model: Some(format!("{runner}-model")),
        fallback_runner: fallback.map(str::to_owned),
        max_attempts: 3,
        ..Task::new(ws.id.clone(), &format!("for {runner}"), time::now())
    };
    db.create_task(&task, None).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    task
}

async fn claims_take_only_tasks_whose_runner_they_list(db: Db) {
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 10, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    let codex = task_for(&db, &ws, "codex", None).await;
    let gemini = task_for(&db, &ws, "gemini", None).await;
    // One name a prefix of another: found whole, not as a part.
    let gem = task_for(&db, &ws, "gem", None).await;
    let anyone = new_task(&db, &ws, RunnerPreference::Any, 0, 3).await;

    // A claim that lists nothing takes only the task that names no runner.
    let got = claim_with(&db, &a, &[]).await;
    let ids: Vec<&str> = got.iter().map(|(_, t)| t.id.as_str()).collect();
    assert_eq!(ids, [anyone.id.as_str()]);
    let request = ClaimRequest {
        max_tasks: 1,
        workspace_id: None,
        runners: vec!["claude".into()],
    };
    let backlog = db.backlog(&a, &request, time::now()).await.unwrap();
    assert_eq!(
        buildd::core::claim::why_empty(&backlog),
        buildd::core::claim::EmptyClaim::NoRunner,
        "{backlog:?}"
    );
    assert!(
        claim_with(&db, &a, &["claude", "gemini-pro"])
            .await
            .is_empty()
    );

    // An agent with gemini takes gemini's task only; the worker records runner
    // and model from the task.
    let got = claim_with(&db, &a, &["claude", "gemini"]).await;
    assert_eq!(got.len(), 1);
    let (worker, task) = &got[0];
    assert_eq!(task.id, gemini.id);
    assert_eq!(worker.runner.as_deref(), Some("gemini"));
    assert_eq!(worker.model.as_deref(), Some("gemini-model"));
    let stored = db.get_worker(&worker.id).await.unwrap().unwrap();
    assert_eq!(stored.runner.as_deref(), Some("gemini"));

    let got = claim_with(&db, &a, &["gem", "codex"]).await;
    let mut ids: Vec<&str> = got.iter().map(|(_, t)| t.id.as_str()).collect();
    ids.sort();
    let mut want = [codex.id.as_str(), gem.id.as_str()];
    want.sort();
    assert_eq!(ids, want);
}

async fn a_runner_failure_moves_the_task_to_its_fallback(db: Db) {
    use buildd::core::runners::RunnerFailure;
    let ws = new_workspace(&db).await;
    let a = account(AccountType::Service, 10, None);
    new_account(&db, &a).await;
    grant(&db, &a, &ws, true).await;
    let task = task_for(&db, &ws, "claude", Some("codex")).await;

    let (worker, _) = claim_with(&db, &a, &["claude"]).await.remove(0);
    // The agent says which model it ran; a plain error keeps the runner.
    let update = WorkerUpdate {
        status: Some(WorkerStatus::Error),
        error: Some("the tests failed".into()),
        model: Some("claude-opus-4-5".into()),
        ..WorkerUpdate::default()
    };
    let applied = db
        .apply(&worker.id, Action::update(update), time::now())
        .await
        .unwrap();
    assert_eq!(applied.task.runner.as_deref(), Some("claude"));
    let stored = db.get_worker(&worker.id).await.unwrap().unwrap();
    assert_eq!(stored.model.as_deref(), Some("claude-opus-4-5"));

    // The quota runs out: the next attempt is codex's, with the agent's model.
    let (worker, _) = claim_with(&db, &a, &["claude"]).await.remove(0);
    let update = WorkerUpdate {
        status: Some(WorkerStatus::Error),
        error: Some("API Error: 429".into()),
        failure: Some(RunnerFailure::Quota),
        ..WorkerUpdate::default()
    };
    let applied = db
        .apply(&worker.id, Action::update(update), time::now())
        .await
        .unwrap();
    assert_eq!(applied.task.status, TaskStatus::Pending);
    assert_eq!(applied.task.runner.as_deref(), Some("codex"));
    assert_eq!(applied.task.model, None);
    let error = applied.worker.unwrap().error.unwrap();
    assert!(error.contains("next attempt runs with codex"), "{error}");
    let stored = db.get_task(&task.id).await.unwrap().unwrap();
    assert_eq!(stored.runner.as_deref(), Some("codex"));
    assert!(claim_with(&db, &a, &["claude"]).await.is_empty());
    let (worker, _) = claim_with(&db, &a, &["codex"]).await.remove(0);
    assert_eq!(worker.runner.as_deref(), Some("codex"));
    assert_eq!(worker.model, None);
}
