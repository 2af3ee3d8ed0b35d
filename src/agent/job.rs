//! One claimed task, from its worktree to its final report.
//!
//! A job runs its runner in segments: the first run, then one more for each answer a
//! person gives and each `start` after a pause, all in the same worktree and session.
//! While a segment runs, the job streams its output to the server, keeps the worker's
//! session, turns and cost up to date, and heartbeats; a heartbeat that says `cancel`
//! stops the run's whole process group.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::git;
use super::github::{self, PullRequest};
use super::process::RunProcess;
use super::runner::{Finish, RunSpec, Runner, question_in};
use super::spool::{Delivery, FinalReport, Spool};
use crate::client::{Client, ClientError, decode};
use crate::core::model::{Task, TaskStatus, Worker};

/// How often buffered output is sent to the server.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// The least time between two progress updates (session, turns, cost) of one worker.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Output lines buffered before a flush is due regardless of the clock.
const FLUSH_AT: usize = 200;
/// Output kept in memory while the server cannot be reached; older lines beyond it are
/// dropped, with a note, rather than letting a long outage eat the machine's memory.
const MAX_BUFFERED: usize = 50_000;

/// Where pull requests go, for `--pr`.
#[derive(Debug, Clone)]
pub struct PrSettings {
    pub api_url: String,
    pub token: String,
}

/// What every job of one agent shares.
pub struct JobContext {
    pub client: Client,
    pub runner: Arc<dyn Runner>,
    /// The user's checkout, which worktrees branch from.
    pub repo: PathBuf,
    pub worktrees: PathBuf,
    pub spool: Arc<Spool>,
    pub push: bool,
    pub pr: Option<PrSettings>,
    /// SIGTERM: runs may finish, but nobody waits for people any more.
    pub draining: CancellationToken,
    /// The grace period is over: stop the runs.
    pub stopping: CancellationToken,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    Completed(String),
    Failed(String),
    Cancelled,
    /// The agent stopped the run (shutdown), or the server took the worker back.
    Interrupted(String),
}

/// How one segment ended.
enum Segment {
    Finished(Finish),
    Cancelled,
    Paused,
    CostCapped,
    Stopped,
    /// The server no longer knows the worker as ours (it expired while we were away).
    Lost(String),
}

/// What a heartbeat (and a look at the task when it says `cancel`) tells the job.
enum Control {
    Carry,
    Answer(String),
    Cancel,
    Pause,
    Lost(String),
}

pub struct Job {
    ctx: Arc<JobContext>,
    worker: Worker,
    task: Task,
    heartbeat_every: Duration,
    /// Wakes the job when an event concerns its worker or task.
    nudge: Arc<Notify>,
    worktree: PathBuf,
    branch: String,
    session_id: Option<String>,
    /// Cost and turns of the segments that have ended.
    cost_before: f64,
    turns_before: i64,
    cost: f64,
    turns: i64,
    progress_sent: Option<(Option<String>, f64, i64)>,
    progress_at: Instant,
    outbox: Vec<Value>,
}

impl Job {
    pub fn new(
        ctx: Arc<JobContext>,
        worker: Worker,
        task: Task,
        heartbeat_every: Duration,
        nudge: Arc<Notify>,
    ) -> Self {
        let worktree = ctx.worktrees.join(&task.id);
        let branch = git::branch_for(&task.id);
        Job {
            ctx,
            worker,
            task,
            heartbeat_every,
            nudge,
            worktree,
            branch,
            session_id: None,
            cost_before: 0.0,
            turns_before: 0,
            cost: 0.0,
            turns: 0,
            progress_sent: None,
            progress_at: Instant::now(),
            outbox: Vec::new(),
        }
    }

    /// Runs the task to its end and reports it. True when it completed.
    pub async fn run(mut self) -> bool {
        info!(task = %self.task.id, worker = %self.worker.id, title = %self.task.title, "claimed");
        let end = self.drive().await;
        self.finish(end).await
    }

    async fn drive(&mut self) -> End {
        let starting = json!({ "status": "starting", "branch": self.branch });
        if let Err(e) = self.patch(&starting).await {
            return End::Interrupted(format!("the server refused the start: {e}"));
        }
        if let Err(e) = std::fs::create_dir_all(&self.ctx.worktrees) {
            return End::Failed(format!("cannot create the worktrees directory: {e}"));
        }
        if let Err(e) = git::add_worktree(&self.ctx.repo, &self.worktree, &self.branch).await {
            return End::Failed(format!("cannot create the worktree: {e}"));
        }
        let mut prompt = task_prompt(&self.task);
        loop {
            if let Err(e) = self.patch(&json!({ "status": "running" })).await {
                // Paused before the run began: wait for `start`, then begin.
                if e.status() == Some(409) && matches!(self.beat().await, Control::Pause) {
                    if let Err(end) = self.wait_for_start().await {
                        return end;
                    }
                    continue;
                }
                return End::Interrupted(format!("the server refused the run: {e}"));
            }
            let segment = self.run_segment(prompt).await;
            self.cost_before = self.cost;
            self.turns_before = self.turns;
            prompt = match segment {
                Segment::Finished(finish) if finish.is_error => return End::Failed(finish.text),
                Segment::Finished(finish) => match question_in(&finish.text) {
                    None => return End::Completed(finish.text),
                    Some(question) => match self.ask(question).await {
                        Ok(answer) => answer,
                        Err(end) => return end,
                    },
                },
                Segment::Paused => match self.wait_for_start().await {
                    Ok(()) => self.ctx.runner.carry_on_prompt().to_owned(),
                    Err(end) => return end,
                },
                Segment::Cancelled => return End::Cancelled,
                Segment::CostCapped => {
                    return End::Failed(format!(
                        "stopped: the run cost ${:.4}, over the task's maxCostUsd of ${:.4}",
                        self.cost,
                        self.task.max_cost_usd.unwrap_or_default()
                    ));
                }
                Segment::Stopped => {
                    return End::Interrupted(
                        "the agent shut down and stopped the run after its grace period".into(),
                    );
                }
                Segment::Lost(reason) => return End::Interrupted(reason),
            };
        }
    }

    /// One run of the runner, until it ends or is stopped.
    async fn run_segment(&mut self, prompt: String) -> Segment {
        let budget = self.task.max_cost_usd.map(|max| max - self.cost_before);
        if budget.is_some_and(|b| b <= 0.0) {
            return Segment::CostCapped;
        }
        let spec = RunSpec {
            prompt,
            workdir: self.worktree.clone(),
            resume: self.session_id.clone(),
            budget_usd: budget,
        };
        let mut command = self.ctx.runner.command(&spec);
        command.current_dir(&self.worktree);
        // The account key is the agent's, not the run's.
        command
            .env_remove("BUILDD_API_KEY")
            .env("BUILDD_TASK_ID", &self.task.id)
            .env("BUILDD_WORKER_ID", &self.worker.id);
        let (mut process, stdout) = match RunProcess::spawn(command) {
            Ok(started) => started,
            Err(e) => {
                return Segment::Finished(Finish {
                    text: format!("cannot start the runner: {e}"),
                    is_error: true,
                });
            }
        };
        let mut lines = BufReader::new(stdout).lines();
        let mut parser = self.ctx.runner.parser();
        let mut finish = None;
        let mut last_line = String::new();
        let mut heartbeat = tokio::time::interval(self.heartbeat_every);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        loop {
            let control = tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    if line.trim().is_empty() {
                        continue;
                    }
                    let report = parser.line(&line);
                    last_line = line;
                    self.push_message(report.message);
                    if report.session_id.is_some() {
                        self.session_id = report.session_id;
                    }
                    if let Some(turns) = report.turns {
                        self.turns = self.turns_before + turns;
                    }
                    if let Some(cost) = report.cost_usd {
                        self.cost = self.cost_before + cost;
                    }
                    if report.finish.is_some() {
                        finish = report.finish;
                    }
                    if self.task.max_cost_usd.is_some_and(|max| self.cost > max) {
                        process.stop().await;
                        return Segment::CostCapped;
                    }
                    if self.outbox.len() >= FLUSH_AT {
                        self.flush().await;
                    }
                    continue;
                }
                _ = flush.tick() => {
                    self.flush().await;
                    self.report_progress(false).await;
                    continue;
                }
                _ = heartbeat.tick() => self.beat().await,
                _ = self.nudge.notified() => self.beat().await,
                _ = self.ctx.stopping.cancelled() => {
                    process.stop().await;
                    return Segment::Stopped;
                }
            };
            let stopped = match control {
                Control::Carry | Control::Answer(_) => continue,
                Control::Cancel => Segment::Cancelled,
                Control::Pause => Segment::Paused,
                Control::Lost(reason) => Segment::Lost(reason),
            };
            info!(task = %self.task.id, "stopping the run");
            process.stop().await;
            return stopped;
        }
        let status = process.wait().await;
        self.report_progress(true).await;
        Segment::Finished(finish.unwrap_or_else(|| {
            let ok = status.as_ref().is_ok_and(|s| s.success());
            Finish {
                text: if ok {
                    last_line
                } else {
                    format!("the runner failed ({}): {last_line}", describe(&status))
                },
                is_error: !ok,
            }
        }))
    }

    /// Puts the worker in `waiting_input` with `question` and waits for the answer.
    async fn ask(&mut self, question: String) -> Result<String, End> {
        info!(task = %self.task.id, question = %question, "waiting for an answer");
        self.flush().await;
        let update = json!({
            "status": "waiting_input",
            "question": question,
            "sessionId": self.session_id,
            "costUsd": self.cost,
            "turns": self.turns,
        });
        if let Err(e) = self.patch(&update).await {
            return Err(End::Interrupted(format!(
                "the server refused the question: {e}"
            )));
        }
        loop {
            match self.wait_for_control().await? {
                Control::Answer(answer) => return Ok(answer),
                Control::Carry => {}
                Control::Cancel => return Err(End::Cancelled),
                // Paused while waiting: `start` brings the run back without the
                // question, which it will ask again if it still needs to.
                Control::Pause => {
                    self.wait_for_start().await?;
                    return Ok(self.ctx.runner.carry_on_prompt().to_owned());
                }
                Control::Lost(reason) => return Err(End::Interrupted(reason)),
            }
        }
    }

    /// Waits while the worker is paused, until a person starts it again.
    async fn wait_for_start(&mut self) -> Result<(), End> {
        info!(task = %self.task.id, "paused");
        self.flush().await;
        loop {
            match self.wait_for_control().await? {
                Control::Pause => {}
                Control::Carry | Control::Answer(_) => {
                    info!(task = %self.task.id, "started again");
                    return Ok(());
                }
                Control::Cancel => return Err(End::Cancelled),
                Control::Lost(reason) => return Err(End::Interrupted(reason)),
            }
        }
    }

    /// The next heartbeat's word, while no run is going; SIGTERM ends the wait.
    async fn wait_for_control(&mut self) -> Result<Control, End> {
        tokio::select! {
            _ = tokio::time::sleep(self.heartbeat_every) => {}
            _ = self.nudge.notified() => {}
            _ = self.ctx.draining.cancelled() => {
                return Err(End::Interrupted(
                    "the agent shut down while the task waited for a person".into(),
                ));
            }
        }
        Ok(self.beat().await)
    }

    async fn beat(&mut self) -> Control {
        let answer = match self.ctx.client.heartbeat(&self.worker.id).await {
            Ok(answer) => answer,
            Err(e) => return self.refused(e),
        };
        if answer["cancel"] == true {
            // Cancelled task, or paused worker: the task says which.
            return match self.ctx.client.get_task(&self.task.id).await {
                Ok(task) if task["status"] == TaskStatus::Cancelled.as_str() => Control::Cancel,
                Ok(_) => Control::Pause,
                Err(e) => self.refused(e),
            };
        }
        match answer["reply"].as_str() {
            Some(reply) => Control::Answer(reply.to_owned()),
            None => Control::Carry,
        }
    }

    /// A failed call: the server being away changes nothing (the lease covers it), but
    /// a server that refuses the worker has taken it back.
    fn refused(&self, e: ClientError) -> Control {
        if e.is_transient() {
            Control::Carry
        } else {
            warn!(task = %self.task.id, error = %e, "the server no longer accepts this worker");
            Control::Lost(format!("the server took the worker back: {e}"))
        }
    }

    async fn patch(&self, update: &Value) -> Result<(), ClientError> {
        let mut attempt = 0;
        loop {
            match self.ctx.client.update_worker(&self.worker.id, update).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_transient() && attempt < 8 => {
                    attempt += 1;
                    tokio::time::sleep(crate::client::backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends session, turns and cost when they changed, at most every
    /// [`PROGRESS_EVERY`] unless `now`.
    async fn report_progress(&mut self, now: bool) {
        let progress = (self.session_id.clone(), self.cost, self.turns);
        if self.progress_sent.as_ref() == Some(&progress)
            || (!now && self.progress_at.elapsed() < PROGRESS_EVERY)
        {
            return;
        }
        let update = json!({ "sessionId": progress.0, "costUsd": progress.1, "turns": progress.2 });
        // Progress is worth a try, not a wait: the next report carries it anyway.
        if self
            .ctx
            .client
            .update_worker(&self.worker.id, &update)
            .await
            .is_ok()
        {
            self.progress_sent = Some(progress);
            self.progress_at = Instant::now();
        }
    }

    fn push_message(&mut self, message: Value) {
        if self.outbox.len() >= MAX_BUFFERED {
            let dropped = self.outbox.len() / 2;
            self.outbox.drain(..dropped);
            self.outbox.insert(
                0,
                json!({ "type": "buildd_notice", "text": format!("{dropped} lines of output were dropped while the server could not be reached") }),
            );
        }
        self.outbox.push(message);
    }

    /// Sends the buffered output; what the server cannot take now stays for later.
    async fn flush(&mut self) {
        match self
            .ctx
            .client
            .append_all(&self.worker.id, &mut self.outbox)
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_transient() => {}
            Err(e) => {
                warn!(task = %self.task.id, error = %e, "the server refused the run's output; dropping it");
                self.outbox.clear();
            }
        }
    }

    /// Commits what the run left, publishes it when asked, removes the worktree, and
    /// hands the final report to the spool. True when the task completed.
    async fn finish(mut self, end: End) -> bool {
        let commit = if self.worktree.exists() {
            let message = match &end {
                End::Completed(_) => format!("{}\n\nbuildd task {}", self.task.title, self.task.id),
                _ => format!(
                    "Unfinished: {}\n\nbuildd task {} (worker {})",
                    self.task.title, self.task.id, self.worker.id
                ),
            };
            match git::commit_all(&self.worktree, &message).await {
                Ok(commit) => commit,
                Err(e) => {
                    warn!(task = %self.task.id, error = %e, "cannot commit the run's changes");
                    None
                }
            }
        } else {
            None
        };
        let mut end = end;
        let mut pr_url = None;
        if let (End::Completed(_), Some(_)) = (&end, &commit) {
            match self.publish().await {
                Ok(url) => pr_url = url,
                Err(e) => {
                    end = End::Failed(format!("the work is committed on {}, but {e}", self.branch))
                }
            }
        }
        git::remove_worktree(&self.ctx.repo, &self.worktree).await;

        let mut update = json!({
            "sessionId": self.session_id,
            "costUsd": self.cost,
            "turns": self.turns,
            "commitSha": commit,
            "prUrl": pr_url,
        });
        let completed = matches!(end, End::Completed(_));
        match &end {
            End::Completed(text) => {
                update["status"] = json!("completed");
                update["result"] = json!({
                    "text": text,
                    "branch": self.branch,
                    "commitSha": commit,
                    "prUrl": pr_url,
                });
            }
            End::Failed(reason) | End::Interrupted(reason) => {
                update["status"] = json!("error");
                update["error"] = json!(reason);
            }
            End::Cancelled => {
                update["status"] = json!("error");
                update["error"] = json!("the task was cancelled");
            }
        }
        if let Some(map) = update.as_object_mut() {
            map.retain(|_, v| !v.is_null());
        }
        match &end {
            End::Completed(_) => info!(task = %self.task.id, commit = ?commit, "completed"),
            other => info!(task = %self.task.id, end = ?other, "ended without completing"),
        }
        let report = FinalReport {
            worker_id: self.worker.id.clone(),
            messages: std::mem::take(&mut self.outbox),
            update,
        };
        let delivery = self.ctx.spool.submit(&self.ctx.client, report).await;
        if delivery == Delivery::Spooled {
            warn!(task = %self.task.id, "the server is unreachable; the result waits in the spool");
        }
        completed && delivery != Delivery::Refused
    }

    /// `--push` and `--pr`: the branch to `origin`, and a pull request for it.
    async fn publish(&self) -> Result<Option<String>, String> {
        if !self.ctx.push && self.ctx.pr.is_none() {
            return Ok(None);
        }
        git::push(&self.worktree, &self.branch)
            .await
            .map_err(|e| format!("the push failed: {e}"))?;
        let Some(pr) = &self.ctx.pr else {
            return Ok(None);
        };
        let workspace = self
            .ctx
            .client
            .get_workspace(&self.task.workspace_id)
            .await
            .ok();
        let repo_url = match workspace.as_ref().and_then(|w| w["repoUrl"].as_str()) {
            Some(url) => Some(url.to_owned()),
            None => git::origin_url(&self.ctx.repo).await,
        };
        let repo = repo_url.as_deref().and_then(github::repo_from_url).ok_or(
            "no GitHub repository to open the pull request in (set the workspace's repoUrl)",
        )?;
        let base = workspace
            .as_ref()
            .and_then(|w| w["defaultBranch"].as_str())
            .unwrap_or("main")
            .to_owned();
        let body = format!(
            "{}\n\n---\nOpened by buildd for task `{}`.",
            self.task.description, self.task.id
        );
        github::open_pull_request(&PullRequest {
            api_url: &pr.api_url,
            token: &pr.token,
            repo: &repo,
            head: &self.branch,
            base: &base,
            title: &self.task.title,
            body: body.trim_start(),
        })
        .await
        .map(Some)
    }
}

/// What the runner is first told: the task's title, then its description.
fn task_prompt(task: &Task) -> String {
    if task.description.trim().is_empty() {
        task.title.clone()
    } else {
        format!("{}\n\n{}", task.title, task.description)
    }
}

fn describe(status: &std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => "unknown status".into(),
        },
        Err(e) => e.to_string(),
    }
}

/// A claimed entry from `POST /api/workers/claim`: the worker, with its task inside.
pub fn claimed(entry: &Value) -> Result<(Worker, Task), ClientError> {
    Ok((decode(entry)?, decode(&entry["task"])?))
}
