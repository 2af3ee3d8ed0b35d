//! One claimed task, from its worktree to its final report.
//!
//! A job runs its runner in segments: the first run, then one more for each answer a
//! person gives and each `start` after a pause, all in the same worktree and session.
//! While a segment runs, three things go on independently, so that none can stall
//! another: a reader drains the runner's pipe ([`output::read_output`]), a reporter
//! sends the output and the worker's session, turns and cost to the server, and the
//! job itself heartbeats and watches for cancel, pause, the cost cap and shutdown; a
//! heartbeat that says `cancel` stops the run's whole process group.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::git;
use super::github::{self, PullRequest};
use super::output::{self, Outbox, RunOutput, shortened};
use super::process::RunProcess;
use super::prompt;
use super::runner::{ALL_CREDENTIALS, Finish, RunSpec, RunTools, Runner, question_in};
use super::spool::{Delivery, FinalReport, SHUTDOWN_DELIVERY_LIMIT, Spool};
use crate::api::{
    ClaimedWorker, Plan, RunControl, RunResult, Task, TaskMode, Worker, WorkerStatus, WorkerUpdate,
};
use crate::client::{Client, ClientError};
use crate::core::actions::MAX_TEXT_LEN;
use crate::core::runners::RunnerFailure;

/// How often buffered output is sent to the server.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// The least time between two progress updates (session, turns, cost) of one worker.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long the reader gets to drain what is left in the pipe once the runner's
/// group is gone. Only a process that left the group (a daemon) can keep the pipe open
/// longer; its output is then abandoned rather than waited for.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Where pull requests go, for `--pr`.
#[derive(Debug, Clone)]
pub struct PrSettings {
    pub api_url: String,
    pub token: String,
}

/// What every job of one agent shares.
pub struct JobContext {
    pub client: Client,
    /// The user's checkout, which worktrees branch from.
    pub repo: PathBuf,
    pub worktrees: PathBuf,
    /// Where runs' MCP configurations are written (they hold worker tokens).
    pub tools_dir: PathBuf,
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

/// What a heartbeat tells the job.
enum Control {
    Carry,
    Answer(String),
    Cancel,
    Pause,
    Lost(String),
    /// The agent's grace period ended while the job was asking.
    Stop,
}

pub struct Job {
    ctx: Arc<JobContext>,
    /// What runs the task: the runner it names, or the agent's default.
    runner: Arc<dyn Runner>,
    /// The model its runner said it runs, or the task's.
    model: Option<String>,
    /// Why the run failed, when its runner was at fault.
    failure: Option<RunnerFailure>,
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
    /// The run's output on its way to the server, numbered across segments.
    output: Arc<RunOutput>,
    /// Instructions a person sent that the run has not been given yet.
    instructions: Vec<String>,
    /// What a planning run proposed.
    plan: Option<Plan>,
    /// The commit the worktree started from: what the run's diff is taken against.
    base_sha: Option<String>,
    /// The worker's token, which the run gets (through [`RunTools`]) instead of the
    /// agent's key; `None` from a server without `/mcp`.
    worker_token: Option<String>,
    tools: Option<RunTools>,
}

impl Job {
    pub fn new(
        ctx: Arc<JobContext>,
        runner: Arc<dyn Runner>,
        claimed: ClaimedWorker,
        heartbeat_every: Duration,
        nudge: Arc<Notify>,
    ) -> Self {
        let ClaimedWorker {
            worker,
            task,
            worker_token,
        } = claimed;
        let worktree = ctx.worktrees.join(&task.id);
        let branch = crate::core::github::branch_of(&task);
        Job {
            runner,
            model: task.model.clone(),
            failure: None,
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
            output: RunOutput::new(Outbox::new()),
            instructions: Vec::new(),
            plan: None,
            base_sha: None,
            worker_token,
            tools: None,
        }
    }

    /// Runs the task to its end and reports it. True when it completed.
    pub async fn run(mut self) -> bool {
        info!(task = %self.task.id, worker = %self.worker.id, title = %self.task.title, "claimed");
        let end = self.drive().await;
        self.finish(end).await
    }

    async fn drive(&mut self) -> End {
        let starting = WorkerUpdate {
            status: Some(WorkerStatus::Starting),
            branch: Some(self.branch.clone()),
            runner: Some(self.runner.name().to_owned()),
            model: self.model.clone(),
            ..WorkerUpdate::default()
        };
        if let Err(e) = self.patch(&starting).await {
            return End::Interrupted(format!("the server refused the start: {e}"));
        }
        if let Err(e) = std::fs::create_dir_all(&self.ctx.worktrees) {
            return End::Failed(format!("cannot create the worktrees directory: {e}"));
        }
        let first = prompt::first_run(
            &self.ctx.client,
            self.runner.as_ref(),
            &self.task,
            self.worktree.clone(),
        )
        .await;
        self.worktree = first.worktree;
        self.session_id = first.resume;
        if let Err(e) = git::add_worktree(
            &self.ctx.repo,
            &self.worktree,
            &self.branch,
            self.task.base_branch.as_deref(),
            super::worktree_abandoned,
        )
        .await
        {
            // An error of this attempt: the task goes back to the queue for another.
            return End::Interrupted(format!("cannot create the worktree: {e}"));
        }
        self.base_sha = git::head(&self.worktree).await.ok();
        self.tools = self.worker_token.take().and_then(|token| {
            let url = self.ctx.client.mcp_url();
            RunTools::write(&self.ctx.tools_dir, &self.worker.id, url, token)
                .inspect_err(|e| {
                    warn!(worker = %self.worker.id, error = %e, "cannot write the run's MCP configuration; it runs without buildd's tools");
                })
                .ok()
        });
        let mut prompt = first.prompt;
        loop {
            let running = WorkerUpdate {
                status: Some(WorkerStatus::Running),
                ..WorkerUpdate::default()
            };
            if let Err(e) = self.patch(&running).await {
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
                Segment::Finished(finish) if finish.is_error => {
                    self.failure = finish.failure;
                    return End::Failed(finish.text);
                }
                Segment::Finished(finish) => match question_in(&finish.text) {
                    // Instructions that came while the run went on and could not be
                    // given to it then: the same session gets them before the end.
                    None if !self.instructions.is_empty() => {
                        info!(task = %self.task.id, "passing on instructions sent during the run");
                        std::mem::take(&mut self.instructions).join("\n\n")
                    }
                    None if self.task.mode == TaskMode::Plan => {
                        match prompt::plan_from(finish.structured.as_ref(), &finish.text) {
                            Ok(plan) => {
                                self.plan = Some(plan);
                                return End::Completed(finish.text);
                            }
                            Err(e) => return End::Failed(e),
                        }
                    }
                    None => return End::Completed(finish.text),
                    Some(question) => match self.ask(question).await {
                        Ok(answer) => answer,
                        Err(end) => return end,
                    },
                },
                Segment::Paused => match self.wait_for_start().await {
                    Ok(()) => self.runner.carry_on_prompt().to_owned(),
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
            plan_schema: (self.task.mode == TaskMode::Plan).then(prompt::plan_schema),
            tools: self.tools.clone(),
            model: self.task.model.clone(),
        };
        let mut command = self.runner.command(&spec);
        command.current_dir(&self.worktree);
        // The account key is the agent's, not the run's.
        command
            .env_remove("BUILDD_API_KEY")
            .env("BUILDD_TASK_ID", &self.task.id)
            .env("BUILDD_WORKER_ID", &self.worker.id);
        // A coding CLI gets its own credentials and no other runner's.
        if let Some(own) = self.runner.credentials() {
            for name in ALL_CREDENTIALS.iter().filter(|n| !own.contains(n)) {
                command.env_remove(name);
            }
        }
        let first_line = self.runner.input_line(&spec.prompt);
        let (mut process, stdout, stdin) = match RunProcess::spawn(command, first_line.is_some()) {
            Ok(started) => started,
            Err(e) => {
                return Segment::Finished(Finish::error(format!(
                    "cannot start the runner ({}): {e}",
                    self.runner.name()
                )));
            }
        };
        self.output.start_run();
        let mut input = LiveInput { stdin, sent: 0 };
        if let Some(line) = first_line {
            input.send(&line).await;
        }
        let mut reader = tokio::spawn(output::read_output(
            stdout,
            self.runner.parser(),
            self.output.clone(),
        ));
        let reporting = CancellationToken::new();
        let reporter = tokio::spawn(report_while_running(
            self.ctx.client.clone(),
            self.worker.id.clone(),
            self.output.clone(),
            (self.cost_before, self.turns_before),
            reporting.clone(),
        ));
        let mut heartbeat = tokio::time::interval(self.heartbeat_every);
        let ended = loop {
            let control = tokio::select! {
                status = process.wait() => break Ok(status),
                _ = self.output.changed.notified() => {
                    self.absorb_report();
                    if self.task.max_cost_usd.is_some_and(|max| self.cost > max) {
                        break Err(Segment::CostCapped);
                    }
                    self.feed(&mut input).await;
                    continue;
                }
                _ = heartbeat.tick() => self.beat_unless_stopped().await,
                _ = self.nudge.notified() => self.beat_unless_stopped().await,
                _ = self.ctx.stopping.cancelled() => Control::Stop,
            };
            match control {
                Control::Carry | Control::Answer(_) => {
                    self.feed(&mut input).await;
                    continue;
                }
                Control::Cancel => break Err(Segment::Cancelled),
                Control::Pause => break Err(Segment::Paused),
                Control::Lost(reason) => break Err(Segment::Lost(reason)),
                Control::Stop => break Err(Segment::Stopped),
            }
        };
        if ended.is_err() {
            info!(task = %self.task.id, "stopping the run");
            process.stop().await;
        }
        if tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reader)
            .await
            .is_err()
        {
            warn!(task = %self.task.id, "the runner's output stayed open after its process group ended (a process left the group); leaving the rest unread");
            reader.abort();
        }
        reporting.cancel();
        let _ = reporter.await;
        self.absorb_report();
        let status = match ended {
            Ok(status) => status,
            Err(segment) => return segment,
        };
        self.report_progress().await;
        let report = self.output.report();
        let finish =
            report
                .finish
                .unwrap_or_else(|| match status.as_ref().is_ok_and(|s| s.success()) {
                    true => Finish {
                        text: report.last_line,
                        is_error: false,
                        structured: None,
                        failure: None,
                    },
                    false => Finish::error(format!(
                        "the runner failed ({}): {}",
                        describe(&status),
                        report.last_line
                    )),
                });
        Segment::Finished(Finish {
            text: shortened(&finish.text, MAX_TEXT_LEN),
            ..finish
        })
    }

    /// For a run that takes messages on stdin: passes on the instructions that came
    /// (they are then part of this run), and closes stdin once the run has finished
    /// after taking everything it was sent, which lets it exit. Counting results
    /// would not do: Claude Code folds a message that comes mid-turn into that turn.
    async fn feed(&mut self, input: &mut LiveInput) {
        if input.stdin.is_none() {
            return;
        }
        if !self.instructions.is_empty() {
            let text = self.instructions.join("\n\n");
            if let Some(line) = self.runner.input_line(&text)
                && input.send(&line).await
            {
                info!(task = %self.task.id, "passed an instruction to the running session");
                self.instructions.clear();
            }
        }
        let report = self.output.report();
        if report.idle && report.inputs_taken >= input.sent {
            input.stdin = None;
        }
    }

    /// Takes session, turns and cost from what the current run has printed.
    fn absorb_report(&mut self) {
        let report = self.output.report();
        if report.session_id.is_some() {
            self.session_id = report.session_id;
        }
        if let Some(turns) = report.turns {
            self.turns = self.turns_before + turns;
        }
        if let Some(cost) = report.cost_usd {
            self.cost = self.cost_before + cost;
        }
        if report.model.is_some() {
            self.model = report.model;
        }
    }

    /// Puts the worker in `waiting_input` with `question` and waits for the answer.
    async fn ask(&mut self, question: String) -> Result<String, End> {
        let question = shortened(&question, MAX_TEXT_LEN);
        info!(task = %self.task.id, question = %question, "waiting for an answer");
        self.flush().await;
        let update = WorkerUpdate {
            status: Some(WorkerStatus::WaitingInput),
            question: Some(question),
            ..self.progress()
        };
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
                    return Ok(self.runner.carry_on_prompt().to_owned());
                }
                Control::Lost(reason) => return Err(End::Interrupted(reason)),
                Control::Stop => return Err(stopped_waiting()),
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
                Control::Stop => return Err(stopped_waiting()),
            }
        }
    }

    /// The next heartbeat's word, while no run is going; SIGTERM ends the wait.
    async fn wait_for_control(&mut self) -> Result<Control, End> {
        let draining = self.ctx.draining.clone();
        tokio::select! {
            _ = tokio::time::sleep(self.heartbeat_every) => {}
            _ = self.nudge.notified() => {}
            _ = draining.cancelled() => return Err(stopped_waiting()),
        }
        tokio::select! {
            control = self.beat() => Ok(control),
            _ = draining.cancelled() => Err(stopped_waiting()),
        }
    }

    /// A heartbeat, given up when the agent's grace period ends meanwhile.
    async fn beat_unless_stopped(&mut self) -> Control {
        let stopping = self.ctx.stopping.clone();
        tokio::select! {
            control = self.beat() => control,
            _ = stopping.cancelled() => Control::Stop,
        }
    }

    async fn beat(&mut self) -> Control {
        let answer = match self.ctx.client.heartbeat(&self.worker.id).await {
            Ok(answer) => answer,
            Err(e) => return self.refused(e),
        };
        self.instructions.extend(answer.instructions);
        match (answer.action, answer.reply, answer.reason) {
            // The server ended the worker itself, and says why.
            (RunControl::Cancel, _, Some(reason)) => Control::Lost(reason),
            (RunControl::Cancel, _, None) => Control::Cancel,
            (RunControl::Pause, ..) => Control::Pause,
            (RunControl::None, Some(reply), _) => Control::Answer(reply),
            (RunControl::None, None, _) => Control::Carry,
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

    /// Sends `update`, retrying while the server is away, until the agent stops.
    async fn patch(&self, update: &WorkerUpdate) -> Result<(), ClientError> {
        let mut attempt = 0;
        loop {
            let sent = tokio::select! {
                sent = self.ctx.client.update_worker(&self.worker.id, update) => sent,
                _ = self.ctx.stopping.cancelled() => return Err(ClientError::Protocol(
                    "the agent stopped before the server answered".into(),
                )),
            };
            match sent {
                Ok(_) => return Ok(()),
                Err(e) if e.is_transient() && attempt < 8 => {
                    attempt += 1;
                    tokio::time::sleep(crate::client::backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Session, turns and cost as they are now.
    fn progress(&self) -> WorkerUpdate {
        WorkerUpdate {
            session_id: self.session_id.clone(),
            cost_usd: Some(self.cost),
            turns: Some(self.turns),
            runner: Some(self.runner.name().to_owned()),
            model: self.model.clone(),
            ..WorkerUpdate::default()
        }
    }

    /// Sends session, turns and cost as they are now; worth a try, not a wait: the
    /// final report carries them anyway.
    async fn report_progress(&self) {
        let update = self.progress();
        let _ = self
            .ctx
            .client
            .update_worker(&self.worker.id, &update)
            .await;
    }

    /// Sends the buffered output; what the server cannot take now stays for later.
    /// Only called while no run is going, so nothing else is sending it.
    async fn flush(&self) {
        if let Err(e) =
            output::deliver(&self.ctx.client, &self.worker.id, &self.output.outbox).await
            && !e.is_transient()
        {
            warn!(task = %self.task.id, error = %e, "the server does not take this worker's output any more");
        }
    }

    /// Commits what the run left, publishes it when asked, removes the worktree, and
    /// hands the final report to the spool. True when the task completed.
    async fn finish(self, end: End) -> bool {
        // The token dies with the worker; its configuration goes now.
        if let Some(tools) = &self.tools {
            tools.remove();
        }
        // A planning run changes nothing; whatever it left is not the plan.
        let commit = if self.worktree.exists() && self.task.mode != TaskMode::Plan {
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
        // Whatever the end, what the run changed is recorded: the commit above holds
        // even an unfinished run's work.
        let diff = match (&self.base_sha, self.task.mode) {
            (Some(base), TaskMode::Run) if self.worktree.exists() => {
                match git::diff_since(&self.worktree, base).await {
                    Ok(diff) => Some(diff),
                    Err(e) => {
                        warn!(task = %self.task.id, error = %e, "cannot take the run's diff");
                        None
                    }
                }
            }
            _ => None,
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

        let mut update = WorkerUpdate {
            commit_sha: commit.clone(),
            pr_url: pr_url.clone(),
            ..self.progress()
        };
        let completed = matches!(end, End::Completed(_));
        match &end {
            End::Completed(text) => {
                let result = RunResult {
                    text: shortened(text, MAX_TEXT_LEN),
                    branch: self.branch.clone(),
                    commit_sha: commit.clone(),
                    pr_url: pr_url.clone(),
                    plan: self.plan.clone(),
                };
                update.status = Some(WorkerStatus::Completed);
                update.result = serde_json::to_value(result).ok();
            }
            End::Failed(reason) => {
                update.status = Some(WorkerStatus::Error);
                update.error = Some(shortened(reason, MAX_TEXT_LEN));
                update.failure = self.failure;
            }
            End::Interrupted(reason) => {
                update.status = Some(WorkerStatus::Error);
                update.error = Some(shortened(reason, MAX_TEXT_LEN));
            }
            End::Cancelled => {
                update.status = Some(WorkerStatus::Error);
                update.error = Some("the task was cancelled".into());
            }
        }
        match &end {
            End::Completed(_) => info!(task = %self.task.id, commit = ?commit, "completed"),
            other => info!(task = %self.task.id, end = ?other, "ended without completing"),
        }
        let report = FinalReport {
            worker_id: self.worker.id.clone(),
            messages: self.output.take_outbox(),
            diff,
            update,
            update_sent: false,
        };
        // Shutting down, the report gets a few seconds; the spool keeps it after that.
        let limit = self
            .ctx
            .stopping
            .is_cancelled()
            .then_some(SHUTDOWN_DELIVERY_LIMIT);
        let delivery = self.ctx.spool.submit(&self.ctx.client, report, limit).await;
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
        let repo_url = match workspace.as_ref().and_then(|w| w.repo_url.clone()) {
            Some(url) => Some(url),
            None => git::origin_url(&self.ctx.repo).await,
        };
        let repo = repo_url
            .as_deref()
            .and_then(crate::core::github::repo_from_url)
            .ok_or(
                "no GitHub repository to open the pull request in (set the workspace's repoUrl)",
            )?;
        let base = workspace
            .as_ref()
            .map_or_else(|| "main".to_owned(), |w| w.default_branch.clone());
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

/// The stdin of a run that takes messages while it runs, while it is open.
struct LiveInput {
    stdin: Option<tokio::process::ChildStdin>,
    /// Messages sent, the prompt included.
    sent: usize,
}

impl LiveInput {
    /// Sends one line; false (and stdin closed) when the run no longer reads it.
    async fn send(&mut self, line: &str) -> bool {
        use tokio::io::AsyncWriteExt;
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        let sent = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
            stdin.flush().await
        };
        match sent.await {
            Ok(()) => {
                self.sent += 1;
                true
            }
            Err(e) => {
                warn!(error = %e, "the runner stopped reading its input");
                self.stdin = None;
                false
            }
        }
    }
}

fn stopped_waiting() -> End {
    End::Interrupted("the agent shut down while the task waited for a person".into())
}

/// Sends a running segment's output every [`FLUSH_EVERY`], and its session, turns and
/// cost when they changed (at most every [`PROGRESS_EVERY`]), until `done`. Runs
/// beside the job, so that a slow server delays neither the heartbeat nor the pipe;
/// cut off mid-request, it loses nothing, since the messages stay queued until the
/// server has taken them and are numbered.
async fn report_while_running(
    client: Client,
    worker_id: String,
    output: Arc<RunOutput>,
    (cost_before, turns_before): (f64, i64),
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut sent: Option<(Option<String>, f64, i64)> = None;
    let mut sent_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.cancelled() => return,
        }
        let work = async {
            if let Err(e) = output::deliver(&client, &worker_id, &output.outbox).await
                && !e.is_transient()
            {
                warn!(worker = %worker_id, error = %e, "the server does not take this worker's output");
            }
            let report = output.report();
            let progress = (
                report.session_id,
                cost_before + report.cost_usd.unwrap_or(0.0),
                turns_before + report.turns.unwrap_or(0),
            );
            let due = sent_at.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
            if due && sent.as_ref() != Some(&progress) {
                let update = WorkerUpdate {
                    session_id: progress.0.clone(),
                    cost_usd: Some(progress.1),
                    turns: Some(progress.2),
                    ..WorkerUpdate::default()
                };
                if client.update_worker(&worker_id, &update).await.is_ok() {
                    sent = Some(progress);
                    sent_at = Some(Instant::now());
                }
            }
        };
        tokio::select! {
            _ = work => {}
            _ = done.cancelled() => return,
        }
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
