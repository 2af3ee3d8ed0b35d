//! Claims: the write sequence of taking tasks, and the grouping of one account's
//! claims into shared transactions.
//!
//! Every claim locks its account's row, because the account's limits must hold until
//! commit; an account's claims therefore run one after another whatever we do. The
//! ones that queue up behind a running claim are made together, in the account's next
//! transaction: it locks the account, reads today's cost, moves the usage counter and
//! commits once for all of them, where separate claims paid each of those (and a
//! commit's flush) once per claim. Each claim of a group is still decided on its own,
//! in arrival order, against the counts the ones before it left, so a group ends as
//! the same claims made one after another would: limits, the events written in the
//! same transaction, `SKIP LOCKED` against other servers, all unchanged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::oneshot;

use super::*;

/// A claim as asked: what for, and when (`now` for the rules, `asked` to stamp the
/// claim as of its pick).
#[derive(Clone)]
pub(super) struct Asked {
    pub request: ClaimRequest,
    pub now: Timestamp,
    pub asked: Instant,
}

/// One claim waiting for its account's next transaction, and where its answer goes.
struct Waiting {
    asked: Asked,
    answer: oneshot::Sender<Result<Vec<Claimed>>>,
}

/// One account's claims waiting, and the turn a group holds while it is in its
/// transaction.
#[derive(Default)]
struct AccountClaims {
    waiting: Mutex<Vec<Waiting>>,
    turn: tokio::sync::Mutex<()>,
}

/// The claims of this server waiting, per account. An account is known here only
/// while one of its claims is on its way.
#[derive(Default)]
pub(super) struct ClaimGroups {
    accounts: Mutex<HashMap<String, Arc<AccountClaims>>>,
}

impl ClaimGroups {
    /// Makes the claim in the account's next transaction, with every other claim of
    /// the account waiting by then; returns what it took.
    pub(super) async fn claim<B: Backend>(
        self: &Arc<Self>,
        backend: &Arc<B>,
        account_id: &str,
        asked: Asked,
    ) -> Result<Vec<Claimed>> {
        let account = self.account(account_id);
        let (answer, answered) = oneshot::channel();
        lock(&account.waiting).push(Waiting { asked, answer });
        // The group runs on a task of its own: a caller that goes away (its client
        // hung up) must not cancel the claims of the others in its group.
        let (groups, backend, account_id) = (self.clone(), backend.clone(), account_id.to_owned());
        tokio::spawn(async move {
            run_next_group(&*backend, &account, &account_id).await;
            drop(account);
            groups.forget_if_idle(&account_id);
        });
        answered
            .await
            .map_err(|_| StoreError::Backend("the claim's group ended without an answer".into()))?
    }

    fn account(&self, account_id: &str) -> Arc<AccountClaims> {
        lock(&self.accounts)
            .entry(account_id.to_owned())
            .or_default()
            .clone()
    }

    /// Forgets the account once no claim of it is on its way (only the map holds it).
    fn forget_if_idle(&self, account_id: &str) {
        let mut accounts = lock(&self.accounts);
        if accounts
            .get(account_id)
            .is_some_and(|a| Arc::strong_count(a) == 1)
        {
            accounts.remove(account_id);
        }
    }
}

/// The lock's data; a panic while it was held cannot leave these maps and queues
/// half-changed, so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits for the account's turn, then makes every claim waiting by then in one
/// transaction and answers each. Finds none when an earlier group took them all.
async fn run_next_group<B: Backend>(backend: &B, account: &AccountClaims, account_id: &str) {
    let _turn = account.turn.lock().await;
    let group = std::mem::take(&mut *lock(&account.waiting));
    if group.is_empty() {
        return;
    }
    let (asked, answers): (Vec<Asked>, Vec<_>) =
        group.into_iter().map(|w| (w.asked, w.answer)).unzip();
    let made = make(backend, account_id, asked.clone()).await;
    match made {
        Ok(claimed) => {
            for (answer, claimed) in answers.into_iter().zip(claimed) {
                // The caller may have gone; its claims stand, as a lone claim's would.
                let _ = answer.send(Ok(claimed));
            }
        }
        Err(e) if answers.len() == 1 => {
            let _ = answers.into_iter().next().map(|a| a.send(Err(e)));
        }
        Err(_) => {
            // A group fails as a whole (the database, or one claim's error): each
            // claim is made again on its own, for its own answer.
            for (asked, answer) in asked.into_iter().zip(answers) {
                let made = make(backend, account_id, vec![asked]).await;
                let _ = answer.send(made.map(|mut each| each.pop().unwrap_or_default()));
            }
        }
    }
}

/// Makes `asked`'s claims in one transaction; returns each one's tasks, in order.
async fn make<B: Backend>(
    backend: &B,
    account_id: &str,
    asked: Vec<Asked>,
) -> Result<Vec<Vec<Claimed>>> {
    let account_id = account_id.to_owned();
    let claimed = backend
        .write(move |tx| async move { claim_group(tx, &account_id, &asked).await }.boxed())
        .await?;
    if claimed.iter().any(|c| !c.is_empty()) {
        backend.events_written();
    }
    Ok(claimed)
}

/// The claims of one account, in one transaction, in order: each gets what the
/// account's limits leave it after the ones before.
async fn claim_group<T: Tx>(
    tx: &mut T,
    account_id: &str,
    group: &[Asked],
) -> Result<Vec<Vec<Claimed>>> {
    let dialect = T::DIALECT;
    let latest = group.iter().map(|a| a.now).max().unwrap_or_else(time::now);
    // The account's limits are re-read as they are now, under its lock.
    let LockedAccount {
        account,
        mut active,
        cost_today,
    } = lock_account(tx, account_id, latest).await?;
    let mut guarded = false;
    let mut answers = Vec::with_capacity(group.len());
    let mut events = Vec::new();
    let mut stamped = latest;
    for asked in group {
        let slots = claim::free_slots(&account, active, cost_today, asked.request.max_tasks);
        if slots == 0 {
            answers.push(Vec::new());
            continue;
        }
        // The pick must walk `tasks_pending` in dispatch order and stop at the first
        // task it may take. Left to themselves, the planners may read every pending
        // task (or the whole workspace) and sort it, which makes each claim cost
        // O(queue length).
        if let Some(setup) = dialect.before_pick.filter(|_| !guarded) {
            tx.execute(setup, Vec::new()).await?;
        }
        guarded = true;
        let picked = pick(tx, &account, &asked.request, slots, asked.now).await?;
        // Stamped as of the pick, which saw every commit before it: `now` plus however
        // long the claim waited for its turn and its locks, so a dependency that
        // completed meanwhile still reads as completed before its dependent was
        // claimed.
        let now = asked.now + elapsed(asked.asked);
        stamped = stamped.max(now);
        let mut claimed = Vec::with_capacity(picked.len());
        for mut task in picked {
            let assigned = claim::assign(&mut task, &account, now);
            // Saved before the next pick, which then no longer sees it pending.
            save_task(tx, &task).await?;
            events.extend(assigned.events);
            claimed.push(Claimed {
                worker: assigned.worker,
                task,
                token: assigned.token,
            });
        }
        active += claimed.len() as i64;
        answers.push(claimed);
    }
    insert_workers(tx, answers.iter().flatten()).await?;
    insert_events(tx, &events, stamped).await?;
    let taken = UsageChange {
        active_workers: answers.iter().map(|c| c.len() as i64).sum(),
        ..UsageChange::default()
    };
    record_usage(tx, &account.id, &taken).await?;
    Ok(answers)
}

/// The first `slots` pending tasks `account` may take for `request`, in dispatch
/// order, locked; tasks another transaction holds are passed over.
async fn pick<T: Tx>(
    tx: &mut T,
    account: &Account,
    request: &ClaimRequest,
    slots: u32,
    now: Timestamp,
) -> Result<Vec<Task>> {
    let dialect = T::DIALECT;
    let [any, own] = claim::preferences_for(account.account_type);
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks {} WHERE status = 'pending' \
         AND runner_preference IN ($2, $3) \
         AND workspace_id IN (SELECT workspace_id FROM account_workspaces \
                              WHERE account_id = $1 AND can_claim) \
         AND (CAST($4 AS TEXT) IS NULL OR workspace_id = $4) \
         AND (preferred_account_id IS NULL OR preferred_account_id = $1 \
              OR preferred_until <= $6) \
         AND (runner IS NULL OR {}($7, ',' || runner || ',') > 0) \
         ORDER BY priority DESC, created_at, id LIMIT $5{}",
        dialect.pending_index, dialect.position, dialect.skip_locked
    );
    let values = args![
        &account.id,
        any.as_str(),
        own.as_str(),
        request.workspace_id.as_deref(),
        slots,
        now,
        runners::as_search_list(&request.runners),
    ];
    tx.query(&sql, values, task_from_row).await
}

/// The claims' workers, with their tokens' digests, in one statement.
async fn insert_workers<'a, T: Tx>(
    tx: &mut T,
    claimed: impl Iterator<Item = &'a Claimed>,
) -> Result<()> {
    let columns = format!("{WORKER_COLUMNS}, token_hash");
    let rows: Vec<Vec<Arg>> = claimed
        .map(|c| {
            let mut values = worker_args(&c.worker);
            values.extend(args![keys::hash_key(&c.token)]);
            values
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    tx.insert_many("workers", &columns, rows).await
}

/// See [`Store::claim_task`]. The task is locked before the account, in the order
/// every other write takes them.
pub(super) async fn claim_task<T: Tx>(
    tx: &mut T,
    account_id: &str,
    task_id: &str,
    now: Timestamp,
    asked: std::time::Instant,
) -> Result<Claimed> {
    let mut task = load_task(tx, task_id, true)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("task {task_id}")))?;
    let LockedAccount {
        account,
        active,
        cost_today,
    } = lock_account(tx, account_id, now).await?;
    // As in a claim: stamped as of when the task was ours to read.
    let now = now + elapsed(asked);
    claim::check_explicit(&task, &account, active, cost_today, now)?;
    let assigned = claim::assign(&mut task, &account, now);
    save_task(tx, &task).await?;
    let claimed = Claimed {
        worker: assigned.worker,
        task,
        token: assigned.token,
    };
    insert_workers(tx, std::iter::once(&claimed)).await?;
    insert_events(tx, &assigned.events, now).await?;
    let taken = UsageChange {
        active_workers: 1,
        ..UsageChange::default()
    };
    record_usage(tx, &account.id, &taken).await?;
    Ok(claimed)
}

/// An account as a claim sees it: locked until commit, with its count of workers
/// holding a slot and what its workers started today (UTC) have cost.
struct LockedAccount {
    account: Account,
    active: i64,
    cost_today: f64,
}

/// The account, locked until commit: this serialises the account's claims, so its
/// counts stay true until commit. One statement reads the day's cost too: a claim is
/// a handful of round trips, and each one counts.
async fn lock_account<T: Tx>(
    tx: &mut T,
    account_id: &str,
    now: Timestamp,
) -> Result<LockedAccount> {
    let sql = format!(
        "SELECT {ACCOUNT_COLUMNS}, active_workers, \
         COALESCE((SELECT cost_usd FROM account_usage \
                   WHERE account_id = accounts.id AND day = $2), 0.0) \
         FROM accounts WHERE id = $1{}",
        T::DIALECT.for_update
    );
    tx.query_optional(&sql, args![account_id, time::utc_day(now)], |r| {
        Ok(LockedAccount {
            account: account_from_row(r)?,
            active: r.get()?,
            cost_today: r.get()?,
        })
    })
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("account {account_id}")))
}

/// How long since `asked`, in the whole milliseconds timestamps are kept in, rounded
/// up and one more for the millisecond `asked`'s own timestamp was cut by: so the sum
/// is never before the moment it stands for.
fn elapsed(asked: std::time::Instant) -> chrono::Duration {
    let micros = i64::try_from(asked.elapsed().as_micros()).unwrap_or(0);
    chrono::Duration::milliseconds((micros + 999) / 1000 + 1)
}
