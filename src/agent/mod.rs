//! `buildd agent`: claims tasks and runs them, each in its own git worktree.
//!
//! The agent idles on the event stream rather than polling. Its stream takes offers:
//! the server offers each task that becomes claimable to one idle agent that may take
//! it (`task.offered`), and that agent claims, naming the offer, so a new task costs
//! one claim however many agents wait ([`crate::server`]'s waiters). It also claims
//! when it connects (it may have missed offers meanwhile) and when a run ends. Each
//! claimed task becomes a [`job::Job`]; events about
//! a job's worker or task (a cancel, a pause, an answer) nudge it to heartbeat at once
//! instead of at its next tick.
//!
//! Shutdown has two steps. SIGTERM or SIGINT stops claiming and lets runs finish for
//! the grace period; then runs still going are stopped and reported, and the agent
//! exits 0. Results the server could not take wait in the spool for the next start.
//!
//! It claims only when its [`availability::Availability`] allows (`--hours`,
//! `--when-idle`); when that closes, runs finish, or with `--yield` are paused until
//! it opens again. What it is doing is reported to the server ([`presence`]).

pub mod availability;
pub mod claude;
pub mod codex;
pub mod command;
pub mod gemini;
mod git;
mod github;
pub mod idle;
mod job;
mod output;
mod presence;
mod process;
mod prompt;
pub mod runner;
pub mod runners;
mod spool;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{
    AgentReport, AgentState, ClaimBody, ClaimEntry, EmptyClaim, Me, TaskStatus, WorkerStatus,
    WorkerUpdate,
};
use crate::client::{Client, StreamedEvent, backoff};
use crate::core::events::TASK_OFFERED;
use crate::core::messages::{is_instruction, is_user_reply};
use crate::core::{agents, lease, version};

use availability::Availability;
pub use job::PrSettings;
use job::{Job, JobContext};
use runners::RunnerSet;
use spool::Spool;

pub struct Config {
    pub client: Client,
    pub workspace_id: Option<String>,
    pub max_tasks: u32,
    pub once: bool,
    /// Claim this one task (`POST /api/workers`) instead of any; implies `once`.
    pub task: Option<String>,
    /// The git checkout to work in.
    pub dir: PathBuf,
    /// Where worktrees and the spool live.
    pub state_dir: PathBuf,
    /// The runners it has; the first runs tasks that name none.
    pub runners: Arc<RunnerSet>,
    pub grace: Duration,
    pub push: bool,
    pub pr: Option<PrSettings>,
    /// When it may claim (`--hours`, `--when-idle`).
    pub availability: Availability,
    /// Pause runs when it may no longer claim, and start them again when it may
    /// (`--yield`).
    pub yield_runs: bool,
    /// Exit 0 after this long with nothing to run (`--exit-when-idle`).
    pub exit_when_idle: Option<Duration>,
}

/// What the event follower tells the agent.
enum Signal {
    /// (Re)connected: events may have been missed, so look for work.
    Connected,
    Event(Box<StreamedEvent>),
}

/// Runs the agent until it is told to stop (or, with `--once`, until its one task
/// ended). `Ok(false)` means a `--once` task did not complete.
pub async fn run(config: Config, draining: CancellationToken) -> Result<bool, String> {
    let Me::Account(me) = config.client.me().await.map_err(|e| e.to_string())? else {
        return Err(
            "buildd agent needs an account key (buildd_user_…, buildd_service_… or buildd_action_…), not the admin token"
                .into(),
        );
    };
    let repo = git::checkout_root(&config.dir).await?;
    let _lock = lock_state_dir(&config.state_dir)?;
    let agent_id = presence::agent_id(&config.state_dir)?;
    let worktrees = config.state_dir.join("worktrees");
    clear_stale_worktrees(&repo, &worktrees).await;
    // Configurations of runs a dead agent left: their tokens died with their workers.
    let tools_dir = config.state_dir.join("mcp");
    let _ = std::fs::remove_dir_all(&tools_dir);
    let spool = Spool::open(config.state_dir.join("spool"))?;
    tokio::spawn(spool.clone().run(config.client.clone()));
    let stopping = CancellationToken::new();
    let ctx = Arc::new(JobContext {
        client: config.client.clone(),
        repo,
        worktrees,
        tools_dir,
        spool: spool.clone(),
        push: config.push,
        pr: config.pr.clone(),
        draining: draining.clone(),
        stopping: stopping.clone(),
    });
    let mut blocked = config.availability.blocked();
    // What it advertises with each claim and report; the set does not change.
    let runner_names = config.runners.names();
    info!(
        account = %me.id,
        agent = %agent_id,
        server = config.client.server(),
        max_tasks = config.max_tasks,
        runners = %runner_names.join(","),
        state = %agents::state_of(blocked, 0),
        "agent ready"
    );
    let describe = |running: Vec<String>, blocked: Option<AgentState>| AgentReport {
        hostname: presence::hostname(),
        version: version::VERSION.to_owned(),
        runners: runner_names.clone(),
        state: agents::state_of(blocked, running.len()),
        running,
    };
    let (reports, latest_report) = tokio::sync::watch::channel(describe(Vec::new(), blocked));
    let connected = Arc::new(Notify::new());
    tokio::spawn(presence::report(
        config.client.clone(),
        agent_id.clone(),
        latest_report,
        connected.clone(),
    ));

    // Even with --once: the stream is how a cancel or an answer reaches the run at once.
    let (signals_tx, mut signals) = mpsc::channel(1024);
    // An agent after one task by id takes no offers of others.
    let offered_runners = config.task.is_none().then(|| runner_names.clone());
    tokio::spawn(follow_events(
        config.client.clone(),
        config.workspace_id.clone(),
        (agent_id.clone(), offered_runners, connected),
        signals_tx,
    ));

    let mut jobs: JoinSet<(String, bool)> = JoinSet::new();
    let mut nudges: HashMap<String, (String, Arc<Notify>)> = HashMap::new();
    let mut want_claim = true;
    // The task offered to this agent last, until its claim answers the offer.
    let mut offer: Option<String> = None;
    let mut claim_failures = 0;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut once_outcome = None;
    let mut grace_started = false;
    // Why the last claim took nothing, logged when it changes (not at every poll).
    let mut last_empty: Option<EmptyClaim> = None;
    // Workers this agent paused when it stopped being available (`--yield`).
    let mut yielded: Vec<String> = Vec::new();
    // Since when it has had nothing to run, for --exit-when-idle.
    let mut idle_since = Some(tokio::time::Instant::now());
    let mut idle_exit = false;
    let mut recheck_at = config
        .availability
        .next_check()
        .map(|after| tokio::time::Instant::now() + after);

    loop {
        let free = config.max_tasks as usize - jobs.len();
        let claiming_over =
            draining.is_cancelled() || (config.once && once_outcome.is_some()) || idle_exit;
        if want_claim && free > 0 && !claiming_over && retry_at.is_none() && blocked.is_none() {
            want_claim = false;
            let claim = ClaimBody {
                max_tasks: Some(free as u32),
                workspace_id: config.workspace_id.clone(),
                wait: None,
                runners: runner_names.clone(),
                agent_id: Some(agent_id.clone()),
                offer: offer.take(),
            };
            let claimed = match &config.task {
                Some(task_id) => config.client.claim_task(task_id).await,
                None => config.client.claim(&claim).await,
            };
            match claimed {
                Ok(answer) => {
                    claim_failures = 0;
                    if answer.workers.is_empty() && answer.reason != last_empty {
                        if let Some(reason) = answer.reason {
                            info!(
                                reason = reason.as_str(),
                                "nothing to claim: {}",
                                reason.describe()
                            );
                        }
                        last_empty = answer.reason;
                    } else if !answer.workers.is_empty() {
                        last_empty = None;
                    }
                    let heartbeat_every =
                        lease::heartbeat_interval(Duration::from_secs_f64(answer.lease_ttl_secs));
                    for entry in answer.workers {
                        let claimed = match entry {
                            ClaimEntry::Readable(claimed) => *claimed,
                            ClaimEntry::Unreadable { worker_id, error } => {
                                give_back(
                                    &config.client,
                                    worker_id,
                                    format!(
                                        "the agent could not read this claim: unexpected answer from the server: {error}"
                                    ),
                                );
                                continue;
                            }
                        };
                        // Only a task claimed by id can name a runner this agent lacks.
                        let runner = match config.runners.pick(claimed.task.runner.as_deref()) {
                            Ok(runner) => runner,
                            Err(why) => {
                                give_back(&config.client, Some(claimed.worker.id), why);
                                continue;
                            }
                        };
                        let nudge = Arc::new(Notify::new());
                        let worker_id = claimed.worker.id.clone();
                        nudges.insert(worker_id.clone(), (claimed.task.id.clone(), nudge.clone()));
                        let job = Job::new(ctx.clone(), runner, claimed, heartbeat_every, nudge);
                        jobs.spawn(async move { (worker_id, job.run().await) });
                    }
                    if config.once {
                        if jobs.is_empty() {
                            info!("no task to run");
                            return Ok(true);
                        }
                        once_outcome = Some(false);
                    }
                }
                Err(e) if e.is_transient() => {
                    claim_failures += 1;
                    warn!(error = %e, "cannot claim; trying again");
                    retry_at = Some(tokio::time::Instant::now() + backoff(claim_failures));
                }
                Err(e) => return Err(format!("the server refused the claim: {e}")),
            }
        }
        // An offer it cannot answer now (full, outside its hours, stopping) goes to
        // another agent when it is due.
        offer = None;
        if (draining.is_cancelled() || once_outcome.is_some() || idle_exit) && jobs.is_empty() {
            break;
        }
        let running: Vec<String> = nudges.values().map(|(task, _)| task.clone()).collect();
        idle_since = match (running.is_empty(), idle_since) {
            (true, None) => Some(tokio::time::Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
        reports.send_if_modified(|sent| {
            let now = describe(running, blocked);
            let changed = *sent != now;
            *sent = now;
            changed
        });
        let recheck = async {
            match recheck_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let idle_limit = async {
            match (config.exit_when_idle, idle_since) {
                (Some(limit), Some(since)) => tokio::time::sleep_until(since + limit).await,
                _ => std::future::pending().await,
            }
        };
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(signal) = signals.recv() => match signal {
                Signal::Connected => want_claim = true,
                Signal::Event(event) => {
                    if event.name == TASK_OFFERED {
                        want_claim = true;
                        offer = event.data.task.map(|t| t.id);
                    } else {
                        nudge_jobs(&nudges, &event);
                    }
                }
            },
            Some(joined) = jobs.join_next() => {
                match joined {
                    Ok((worker_id, completed)) => {
                        nudges.remove(&worker_id);
                        if config.once {
                            once_outcome = Some(completed);
                        }
                    }
                    Err(e) => warn!(error = %e, "a job ended abnormally"),
                }
                want_claim = true;
            }
            _ = recheck => {
                recheck_at = config
                    .availability
                    .next_check()
                    .map(|after| tokio::time::Instant::now() + after);
                let now = config.availability.blocked();
                if now != blocked {
                    info!(state = %agents::state_of(now, nudges.len()), "availability changed");
                    if now.is_none() {
                        want_claim = true;
                        steer_yielded(&config.client, std::mem::take(&mut yielded), false);
                    } else if config.yield_runs && blocked.is_none() {
                        yielded = nudges.keys().cloned().collect();
                        steer_yielded(&config.client, yielded.clone(), true);
                    }
                    blocked = now;
                }
            }
            _ = idle_limit, if !idle_exit => {
                info!("nothing to run for the --exit-when-idle time; exiting");
                idle_exit = true;
            }
            _ = retry => {
                retry_at = None;
                want_claim = true;
            }
            _ = draining.cancelled(), if !grace_started => {
                grace_started = true;
                info!(running = jobs.len(), grace_secs = config.grace.as_secs(), "shutting down: no more claims; letting runs finish");
                let stopping = stopping.clone();
                let grace = config.grace;
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    stopping.cancel();
                });
            }
        }
    }

    if config.once && !draining.is_cancelled() {
        // A CI job's result must reach the server before the job ends (unless the job
        // is being stopped: then the spool keeps it for the next start).
        let deadline = tokio::time::Instant::now() + spool::ONCE_DELIVERY_LIMIT;
        while spool.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if spool.pending() > 0 {
            return Err(
                "the result could not be delivered; it waits in the spool for the next start"
                    .into(),
            );
        }
    }
    info!("agent stopped");
    Ok(once_outcome.unwrap_or(true))
}

/// Pauses (`pause`) or starts again the workers this agent yielded with `--yield`:
/// their jobs see it at their next heartbeat, stopping the run or carrying its
/// session on.
fn steer_yielded(client: &Client, workers: Vec<String>, pause: bool) {
    for worker_id in workers {
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.pause_worker(&worker_id, pause).await {
                warn!(worker = %worker_id, error = %e, pause, "cannot pause or start a yielded run");
            }
        });
    }
}

/// Gives back a claimed worker whose entry this agent cannot read (a server newer than
/// it, say), so that its task goes to another agent instead of waiting out its lease;
/// the other tasks of the claim run as usual.
/// Gives back a claimed worker the agent cannot run (`why`): it ends in `error`, and
/// its task goes back to the queue for another attempt.
fn give_back(client: &Client, worker_id: Option<String>, why: String) {
    warn!(error = %why, "cannot run a claimed task; giving it back");
    let Some(worker_id) = worker_id else {
        return;
    };
    let client = client.clone();
    let update = WorkerUpdate {
        status: Some(WorkerStatus::Error),
        error: Some(why),
        ..WorkerUpdate::default()
    };
    tokio::spawn(async move {
        if let Err(e) = client.update_worker(&worker_id, &update).await {
            warn!(worker = %worker_id, error = %e, "cannot give back a claimed task; its lease will expire");
        }
    });
}

/// Holds the state directory for this agent alone: two agents sharing worktrees and a
/// spool would remove each other's work. The lock goes with the process.
fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the agent directory {}: {e}", dir.display()))?;
    let path = dir.join("agent.lock");
    let file =
        std::fs::File::create(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "another buildd agent is using {}; give each agent its own --state-dir",
            dir.display()
        ));
    }
    Ok(file)
}

/// Whether `worktree` belongs to an agent that is gone: it lies in an agent's
/// `worktrees/` directory whose state directory nobody holds locked any more. A
/// worktree that is not an agent's is never called abandoned.
fn worktree_abandoned(worktree: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let Some(state_dir) = worktree.parent().and_then(|p| p.parent()) else {
        return false;
    };
    let Ok(file) = std::fs::File::open(state_dir.join("agent.lock")) else {
        return false;
    };
    // SAFETY: flock(2) on a descriptor this function owns; closing it releases the
    // lock taken to check.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes worktrees an earlier agent process left behind when it died: their runs
/// are over, and their tasks went back to the queue when their leases ran out.
async fn clear_stale_worktrees(repo: &std::path::Path, worktrees: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(worktrees) else {
        return;
    };
    for entry in entries.flatten() {
        info!(path = %entry.path().display(), "removing a worktree left by an earlier agent");
        git::remove_worktree(repo, &entry.path()).await;
    }
}

/// Wakes the job an event asks something of: its task cancelled, its worker paused or
/// started again, or an answer to its question. The server sends an agent's stream
/// only such events (`StoredEvent::agent_audience` follows this list).
fn nudge_jobs(nudges: &HashMap<String, (String, Arc<Notify>)>, event: &StreamedEvent) {
    let data = &event.data;
    let worker_id = match (event.name.as_str(), &data.task, &data.worker) {
        ("task.updated", Some(task), _) if task.status == TaskStatus::Cancelled => nudges
            .iter()
            .find(|(_, (task_id, _))| *task_id == task.id)
            .map(|(worker, _)| worker.as_str()),
        ("worker.updated", _, Some(worker))
            if matches!(worker.status, WorkerStatus::Paused | WorkerStatus::Starting) =>
        {
            Some(worker.id.as_str())
        }
        ("worker.message", _, _)
            if data
                .message
                .as_ref()
                .is_some_and(|m| is_user_reply(m) || is_instruction(m)) =>
        {
            data.worker_id.as_deref()
        }
        _ => None,
    };
    if let Some((_, nudge)) = worker_id.and_then(|id| nudges.get(id)) {
        nudge.notify_one();
    }
}

/// Follows the event stream for as long as the agent runs, reconnecting with backoff.
async fn follow_events(
    client: Client,
    workspace_id: Option<String>,
    (agent_id, runners, connected): (String, Option<Vec<String>>, Arc<Notify>),
    signals: mpsc::Sender<Signal>,
) {
    let mut attempt = 0;
    loop {
        let opened = client
            .agent_events(
                workspace_id.as_deref(),
                &agent_id,
                runners.as_deref(),
                connected.clone(),
            )
            .await;
        match opened {
            Ok(mut stream) => {
                attempt = 0;
                if signals.send(Signal::Connected).await.is_err() {
                    return;
                }
                while let Ok(event) = stream.next().await {
                    if signals.send(Signal::Event(Box::new(event))).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                if attempt == 0 {
                    warn!(error = %e, "the event stream is unavailable; reconnecting");
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(backoff(attempt)).await;
    }
}
