//! The write sequence of a GitHub delivery: everything it does, in one transaction
//! with its id, in each workspace whose repository it names. What a happening means
//! is decided in [`crate::core::github`]; this finds the tasks it is about and moves
//! the rows.

use super::*;
use crate::core::github::{self, CiFailure, Delivery, FailedCheck, Happening};
use crate::core::model::{ArtifactKind, GithubAction, GithubReaction, NotifyEvent};

/// See [`crate::store::Store::receive_github`].
pub(super) async fn receive<T: Tx>(
    tx: &mut T,
    delivery_id: &str,
    event: &str,
    workspaces: &[Workspace],
    delivery: &Delivery,
    now: Timestamp,
) -> Result<Option<Received>> {
    // A repeated delivery waits here for the first one's commit, then finds it.
    let sql = "INSERT INTO github_deliveries (id, event, received_at) VALUES ($1, $2, $3) \
               ON CONFLICT (id) DO NOTHING";
    if tx.execute(sql, args![delivery_id, event, now]).await? == 0 {
        return Ok(None);
    }
    let mut received = Received::default();
    for ws in workspaces {
        let mut react = Reacting {
            ws,
            repo: &delivery.repo,
            now,
            received: &mut received,
        };
        react.to(tx, &delivery.happening).await?;
    }
    Ok(Some(received))
}

/// What a delivery does in one workspace, collected into `received`.
struct Reacting<'a> {
    ws: &'a Workspace,
    /// The delivery's repository, `owner/name`.
    repo: &'a str,
    now: Timestamp,
    received: &'a mut Received,
}

impl Reacting<'_> {
    fn note(&mut self, action: GithubAction, task_id: Option<&str>, detail: impl Into<String>) {
        self.received.reactions.push(GithubReaction {
            workspace_id: self.ws.id.clone(),
            action,
            task_id: task_id.map(str::to_owned),
            detail: detail.into(),
        });
    }

    async fn to<T: Tx>(&mut self, tx: &mut T, happening: &Happening) -> Result<()> {
        match happening {
            Happening::IssueLabelled { issue, labels } => {
                let label = &self.ws.github_label;
                if !labels.iter().any(|l| l.eq_ignore_ascii_case(label)) {
                    self.note(GithubAction::Nothing, None, format!("not labelled {label}"));
                    return Ok(());
                }
                let source = Source {
                    id: new_id(IdKind::Source),
                    workspace_id: self.ws.id.clone(),
                    source_type: github::ISSUE_SOURCE.to_owned(),
                    external_id: Some(github::issue_key(self.repo, issue.number)),
                    url: Some(issue.html_url.clone()),
                    created_at: self.now,
                };
                let source_id = locked_source(tx, &source).await?;
                if let Some(task) = first_task_of(tx, &source_id).await? {
                    let detail = format!("the issue is task {} already", task.id);
                    self.note(GithubAction::Nothing, Some(&task.id), detail);
                    return Ok(());
                }
                let mut task = github::issue_task(self.ws.id.clone(), issue, self.now);
                task.source_id = Some(source_id);
                let task = create_task(tx, task, None).await?;
                self.note(
                    GithubAction::Created,
                    Some(&task.id),
                    "a task for the issue",
                );
                self.received.created.push(task);
            }
            Happening::IssueClosed(issue) => {
                let Some(source_id) = self.issue_source(tx, issue).await? else {
                    return self.no_task_for_issue();
                };
                let sql = "SELECT id FROM tasks WHERE source_id = $1 \
                           AND status NOT IN ('completed', 'failed', 'cancelled') \
                           ORDER BY created_at, id";
                let open: Vec<String> = tx.query(sql, args![&source_id], |r| r.get()).await?;
                if open.is_empty() {
                    self.note(GithubAction::Nothing, None, "the issue's tasks have ended");
                }
                for id in open {
                    apply(tx, &id, Action::Cancel, self.now).await?;
                    self.note(GithubAction::Cancelled, Some(&id), "the issue was closed");
                }
            }
            Happening::IssueReopened(issue) => {
                let Some(source_id) = self.issue_source(tx, issue).await? else {
                    return self.no_task_for_issue();
                };
                let Some(task) = first_task_of(tx, &source_id).await? else {
                    return self.no_task_for_issue();
                };
                if task.status == TaskStatus::Cancelled {
                    retry(tx, &task.id, self.now).await?;
                    self.note(
                        GithubAction::Retried,
                        Some(&task.id),
                        "the issue was reopened",
                    );
                } else {
                    let detail = format!("task {} is {}, not cancelled", task.id, task.status);
                    self.note(GithubAction::Nothing, Some(&task.id), detail);
                }
            }
            Happening::Command {
                issue,
                message,
                author,
            } => {
                let current = match &issue.pull_request {
                    Some(pr) => match task_of_pull_request(tx, &self.ws.id, &pr.html_url).await? {
                        Some(task) => latest_on_branch(tx, &task).await?,
                        None => {
                            let detail = "the pull request is not one of buildd's";
                            self.note(GithubAction::Nothing, None, detail);
                            return Ok(());
                        }
                    },
                    None => match self.issue_source(tx, issue).await? {
                        Some(source_id) => latest_task_of(tx, &source_id).await?,
                        None => None,
                    },
                };
                let Some(current) = current else {
                    return self.no_task_for_issue();
                };
                let message = github::command_followup(author, message, &issue.html_url);
                self.carry_on(tx, current, &message).await?;
            }
            Happening::ChecksFailed {
                branch,
                head_sha,
                checks,
            } => {
                let Some(task) = self.task_of_branch(tx, branch).await? else {
                    return Ok(());
                };
                self.checks_failed(tx, task, branch, head_sha, checks)
                    .await?;
            }
            Happening::ChangesRequested {
                branch,
                body,
                author,
                comments,
                ..
            } => {
                let Some(task) = self.task_of_branch(tx, branch).await? else {
                    return Ok(());
                };
                let current = latest_on_branch(tx, &task).await?.unwrap_or(task);
                let message = github::review_message(author, body, comments);
                self.carry_on(tx, current, &message).await?;
            }
            Happening::Merged { branch, pr_url } => {
                let Some(task) = self.task_of_branch(tx, branch).await? else {
                    return Ok(());
                };
                self.merged(tx, &task, pr_url).await?;
            }
        }
        Ok(())
    }

    fn no_task_for_issue(&mut self) -> Result<()> {
        let detail = format!(
            "no task for this issue (label it {} to make one)",
            self.ws.github_label
        );
        self.note(GithubAction::Nothing, None, detail);
        Ok(())
    }

    async fn issue_source<T: Tx>(
        &self,
        tx: &mut T,
        issue: &github::Issue,
    ) -> Result<Option<String>> {
        let sql = "SELECT id FROM sources WHERE workspace_id = $1 AND type = $2 \
                   AND external_id = $3";
        let key = github::issue_key(self.repo, issue.number);
        let values = args![&self.ws.id, github::ISSUE_SOURCE, &key];
        tx.query_optional(sql, values, |r| r.get()).await
    }

    /// The task (of this workspace) whose `buildd/<id>` branch `branch` is, locked.
    async fn task_of_branch<T: Tx>(&mut self, tx: &mut T, branch: &str) -> Result<Option<Task>> {
        let task = match github::task_of_branch(branch) {
            Some(id) => load_task(tx, id, true)
                .await?
                .filter(|t| t.workspace_id == self.ws.id),
            None => None,
        };
        if task.is_none() {
            let detail = format!("{branch} is not the branch of a task of this workspace");
            self.note(GithubAction::Nothing, None, detail);
        }
        Ok(task)
    }

    /// More work on what `current` did, asked for in `message`: a follow-up when it has
    /// ended, the answer to its question when it waits for one, an instruction to its
    /// run when it is running, and otherwise a comment it will be read with.
    async fn carry_on<T: Tx>(&mut self, tx: &mut T, current: Task, message: &str) -> Result<()> {
        let id = current.id.clone();
        match current.status {
            status if status.is_terminal() => {
                let last_worker = match &current.worker_id {
                    Some(w) => load_worker(tx, w, false).await?,
                    None => None,
                };
                let mut task =
                    workflow::followup(&current, last_worker.as_ref(), message, self.now)?;
                task.branch = github::followup_branch(&current, last_worker.as_ref());
                if task.branch.is_some() {
                    task.base_branch = task.branch.clone();
                }
                task.source_id = current.source_id.clone();
                let task = create_task(tx, task, None).await?;
                let detail = format!("a follow-up of task {id}");
                self.note(GithubAction::FollowedUp, Some(&task.id), detail);
                self.received.created.push(task);
            }
            TaskStatus::WaitingInput => {
                let reply = Action::Reply {
                    message: message.to_owned(),
                };
                apply(tx, &id, reply, self.now).await?;
                self.note(
                    GithubAction::Replied,
                    Some(&id),
                    "the answer to its question",
                );
            }
            TaskStatus::Running | TaskStatus::Assigned if current.worker_id.is_some() => {
                let worker = current.worker_id.clone().unwrap_or_default();
                let instruct = Action::Instruct {
                    message: message.to_owned(),
                };
                apply(tx, &worker, instruct, self.now).await?;
                self.note(
                    GithubAction::Instructed,
                    Some(&id),
                    "sent to its running worker",
                );
            }
            _ => {
                insert_comment(tx, &id, "github", message, self.now).await?;
                let detail = format!(
                    "task {id} is {}; the request is a comment on it",
                    current.status
                );
                self.note(GithubAction::Nothing, Some(&id), detail);
            }
        }
        Ok(())
    }

    async fn checks_failed<T: Tx>(
        &mut self,
        tx: &mut T,
        task: Task,
        branch: &str,
        head_sha: &str,
        checks: &[FailedCheck],
    ) -> Result<()> {
        // The task's row lock (taken by `task_of_branch`) keeps two commits' failures
        // from counting the same fixes.
        let source = Source {
            id: new_id(IdKind::Source),
            workspace_id: self.ws.id.clone(),
            source_type: github::CHECK_SOURCE.to_owned(),
            external_id: Some(format!("{}@{head_sha}", task.id)),
            url: None,
            created_at: self.now,
        };
        let source_id = locked_source(tx, &source).await?;
        if let Some(fix) = first_task_of(tx, &source_id).await? {
            if fix.status == TaskStatus::Pending {
                let description = github::more_checks(&fix.description, checks);
                let sql = "UPDATE tasks SET description = $2 WHERE id = $1";
                tx.execute(sql, args![&fix.id, &description]).await?;
                let detail = "the failures are added to the fix of this commit, not yet claimed";
                self.note(GithubAction::FixExtended, Some(&fix.id), detail);
            } else {
                let detail = format!("task {} fixes this commit already", fix.id);
                self.note(GithubAction::Nothing, Some(&fix.id), detail);
            }
            return Ok(());
        }
        let sql = "SELECT COUNT(*) FROM tasks t JOIN sources s ON s.id = t.source_id \
                   WHERE t.parent_id = $1 AND s.type = $2";
        let fixes: i64 = tx
            .scalar(sql, args![&task.id, github::CHECK_SOURCE])
            .await?;
        let max = self.ws.max_ci_retries;
        match github::ci_failure(&task, branch, head_sha, checks, fixes, max, self.now) {
            CiFailure::Fix(mut fix) => {
                fix.source_id = Some(source_id);
                let fix = create_task(tx, *fix, None).await?;
                let detail = format!("fix {} of {max} for task {}", fixes + 1, task.id);
                self.note(GithubAction::FixCreated, Some(&fix.id), detail);
                self.received.created.push(fix);
            }
            CiFailure::GiveUp(why) => {
                let mut task = task;
                let detail = why.clone();
                if task.error.as_deref() != Some(why.as_str()) {
                    task.error = Some(why.clone());
                    save_task(tx, &task).await?;
                    insert_comment(tx, &task.id, "github", &why, self.now).await?;
                    insert_events(tx, &[Event::task_updated(&task)], self.now).await?;
                }
                self.note(GithubAction::GaveUp, Some(&task.id), detail);
            }
        }
        Ok(())
    }

    async fn merged<T: Tx>(&mut self, tx: &mut T, task: &Task, pr_url: &str) -> Result<()> {
        let worker = match &task.worker_id {
            Some(w) => load_worker(tx, w, false).await?,
            None => None,
        };
        let Some(worker) = worker else {
            let detail = format!("task {} has had no run to credit the merge to", task.id);
            self.note(GithubAction::Nothing, Some(&task.id), detail);
            return Ok(());
        };
        let sql = "SELECT COUNT(*) FROM artifacts WHERE task_id = $1 AND kind = $2";
        let kind = ArtifactKind::Merged;
        let recorded: i64 = tx.scalar(sql, args![&task.id, kind.as_str()]).await?;
        if recorded == 0 {
            let merged = Artifact {
                kind,
                value: pr_url.to_owned(),
            };
            insert_artifacts(tx, &worker, &[merged], self.now).await?;
        }
        self.note(
            GithubAction::Merged,
            Some(&task.id),
            "the pull request was merged",
        );
        Ok(())
    }
}

/// The id of the workspace's source like `source` (made if there is none), locked
/// until commit: deliveries about one issue or one commit then take turns, and the
/// second finds the first one's task.
async fn locked_source<T: Tx>(tx: &mut T, source: &Source) -> Result<String> {
    let id = upsert_source(tx, source).await?;
    let sql = format!(
        "SELECT id FROM sources WHERE id = $1{}",
        T::DIALECT.for_update
    );
    tx.query(&sql, args![&id], |r| r.get::<String>()).await?;
    Ok(id)
}

/// The first task made for a source: the issue's own task (its follow-ups come
/// after it), or a commit's fix.
async fn first_task_of<T: Tx>(tx: &mut T, source_id: &str) -> Result<Option<Task>> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE source_id = $1 ORDER BY created_at, id LIMIT 1"
    );
    tx.query_optional(&sql, args![source_id], task_from_row)
        .await
}

/// The newest task of a source: the follow-up that carries on its latest work.
async fn latest_task_of<T: Tx>(tx: &mut T, source_id: &str) -> Result<Option<Task>> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE source_id = $1 \
         ORDER BY created_at DESC, id DESC LIMIT 1"
    );
    tx.query_optional(&sql, args![source_id], task_from_row)
        .await
}

/// The newest task working on `task`'s branch: `task` itself, or a fix or follow-up
/// that carries on its pull request.
async fn latest_on_branch<T: Tx>(tx: &mut T, task: &Task) -> Result<Option<Task>> {
    let branch = github::branch_of(task);
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 OR (branch = $2 AND workspace_id = $3) \
         ORDER BY created_at DESC, id DESC LIMIT 1"
    );
    let values = args![&task.id, &branch, &task.workspace_id];
    tx.query_optional(&sql, values, task_from_row).await
}

/// The task whose run opened the pull request at `url`.
async fn task_of_pull_request<T: Tx>(
    tx: &mut T,
    workspace_id: &str,
    url: &str,
) -> Result<Option<Task>> {
    let sql = "SELECT task_id FROM workers WHERE pr_url = $1 AND workspace_id = $2 \
               ORDER BY started_at DESC LIMIT 1";
    let id: Option<String> = tx
        .query_optional(sql, args![url, workspace_id], |r| r.get())
        .await?;
    match id {
        Some(id) => load_task(tx, &id, false).await,
        None => Ok(None),
    }
}

async fn insert_comment<T: Tx>(
    tx: &mut T,
    task_id: &str,
    author: &str,
    body: &str,
    now: Timestamp,
) -> Result<()> {
    let sql = "INSERT INTO comments (task_id, author, body, created_at) VALUES ($1, $2, $3, $4)";
    tx.execute(sql, args![task_id, author, body, now])
        .await
        .map(drop)
}

/// Queues the comment of the issue `task` is about (if it is about one) as the task
/// reaches `event`; the count queued (0 or 1). The comment's latest text replaces any
/// text still waiting, so GitHub is told the newest state once, not every step.
pub(super) async fn queue_issue_report<T: Tx>(
    tx: &mut T,
    task: &Task,
    event: NotifyEvent,
    now: Timestamp,
) -> Result<usize> {
    let Some(source_id) = &task.source_id else {
        return Ok(0);
    };
    let Some(body) = github::issue_report(event, task) else {
        return Ok(0);
    };
    let sql = "SELECT external_id FROM sources WHERE id = $1 AND type = $2";
    let key: Option<Option<String>> = tx
        .query_optional(sql, args![source_id, github::ISSUE_SOURCE], |r| r.get())
        .await?;
    let Some((repo, number)) = key
        .flatten()
        .as_deref()
        .and_then(github::issue_of_key)
        .map(|(r, n)| (r.to_owned(), n))
    else {
        return Ok(0);
    };
    let sql = "INSERT INTO issue_reports (source_id, repo, issue_number, body, attempts, \
               queued_at, next_attempt_at) VALUES ($1, $2, $3, $4, 0, $5, $5) \
               ON CONFLICT (source_id) DO UPDATE SET body = excluded.body, attempts = 0, \
               last_error = NULL, queued_at = excluded.queued_at, \
               next_attempt_at = excluded.next_attempt_at";
    tx.execute(sql, args![source_id, &repo, number, &body, now])
        .await?;
    Ok(1)
}

/// See [`crate::store::Store::take_issue_reports`].
pub(super) async fn take_issue_reports<T: Tx>(
    tx: &mut T,
    now: Timestamp,
    limit: u32,
    lease: chrono::Duration,
) -> Result<Vec<IssueReport>> {
    let sql = format!(
        "SELECT source_id, repo, issue_number, comment_id, body FROM issue_reports \
         WHERE next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2{}",
        T::DIALECT.skip_locked
    );
    let taken = tx
        .query(&sql, args![now, limit], |r| {
            Ok(IssueReport {
                source_id: r.get()?,
                repo: r.get()?,
                issue_number: r.get()?,
                comment_id: r.get()?,
                body: r.get()?,
            })
        })
        .await?;
    for report in &taken {
        let sql = "UPDATE issue_reports SET next_attempt_at = $2 WHERE source_id = $1";
        tx.execute(sql, args![&report.source_id, now + lease])
            .await?;
    }
    Ok(taken)
}

/// See [`crate::store::Store::record_issue_report`]. A text that changed while this
/// one was on its way is due at once; a failure is retried as notifications are
/// ([`notify::retry_at`]), then given up with its reason kept.
pub(super) async fn record_issue_report<T: Tx>(
    tx: &mut T,
    report: &IssueReport,
    sent: std::result::Result<i64, String>,
    now: Timestamp,
) -> Result<()> {
    let sql = format!(
        "SELECT body, attempts, queued_at FROM issue_reports WHERE source_id = $1{}",
        T::DIALECT.for_update
    );
    let Some((body, attempts, queued_at)) = tx
        .query_optional(&sql, args![&report.source_id], |r| {
            Ok((r.get::<String>()?, r.get::<i32>()?, r.get::<Timestamp>()?))
        })
        .await?
    else {
        return Ok(());
    };
    match sent {
        Ok(comment_id) => {
            let next = (body != report.body).then_some(now);
            let sql = "UPDATE issue_reports SET comment_id = $2, sent_body = $3, attempts = 0, \
                       last_error = NULL, next_attempt_at = $4 WHERE source_id = $1";
            let values = args![&report.source_id, comment_id, &report.body, next];
            tx.execute(sql, values).await?;
        }
        Err(error) => {
            let attempts = attempts + 1;
            let next = notify::retry_at(attempts, queued_at, now);
            let sql = "UPDATE issue_reports SET attempts = $2, last_error = $3, \
                       next_attempt_at = $4 WHERE source_id = $1";
            let values = args![&report.source_id, attempts, &error, next];
            tx.execute(sql, values).await?;
        }
    }
    Ok(())
}
