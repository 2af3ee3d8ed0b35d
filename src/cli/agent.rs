//! `buildd agent`: flags, credentials and signals around [`crate::agent::run`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::service::{self, ServiceCommand};
use super::{Connection, output, paths};
use crate::agent::availability::Availability;
use crate::agent::claude::DEFAULT_ALLOWED_TOOLS;
use crate::agent::idle;
use crate::agent::runners::{RunnerArg, RunnerOptions, RunnerSet, Survey, survey};
use crate::agent::{self, PrSettings};
use crate::core::claim::MAX_TASKS_PER_CLAIM;
use crate::core::hours::Hours;

/// `buildd agent`: runs the agent, or, with a subcommand, looks after agents.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AgentCommand {
    #[command(subcommand)]
    command: Option<AgentSubcommand>,
    #[command(flatten)]
    run: AgentArgs,
}

#[derive(Subcommand)]
enum AgentSubcommand {
    /// The agents connected now: account, host, version, runners, state, tasks.
    List,
    /// Run the agent as a service of the current user (a systemd user unit on Linux,
    /// a launchd agent on macOS).
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
}

pub async fn main(command: AgentCommand) -> Result<(), String> {
    match command.command {
        None => run(command.run).await,
        Some(AgentSubcommand::List) => list(&command.run.connection).await,
        Some(AgentSubcommand::Service { command: service }) => {
            let connection = &command.run.connection;
            if connection.api_key.is_some() {
                return Err("a service does not take --api-key or BUILDD_API_KEY: it reads the key 'buildd login' saved (log in with that key first, then leave it out)".into());
            }
            service::run(service, &connection.server)
        }
    }
}

/// `buildd agent list`.
async fn list(connection: &Connection) -> Result<(), String> {
    let agents = connection
        .client()?
        .list_agents()
        .await
        .map_err(|e| e.to_string())?
        .agents;
    if connection.json {
        output::json(&agents);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = agents
        .into_iter()
        .map(|a| {
            vec![
                a.id,
                a.account_id,
                a.hostname,
                a.version,
                a.runners.join(","),
                a.state.to_string(),
                if a.running.is_empty() {
                    "-".to_owned()
                } else {
                    a.running.join(",")
                },
                format!("{} ago", output::ago(a.last_seen_at)),
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "ACCOUNT", "HOST", "VERSION", "RUNNERS", "STATE", "RUNNING", "SEEN",
        ],
        &rows,
    );
    Ok(())
}

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    logging: super::LogArgs,
    #[command(flatten)]
    connection: Connection,
    /// Only claim tasks of this workspace.
    #[arg(long, env = "BUILDD_WORKSPACE")]
    workspace: Option<String>,
    /// How many tasks to run at once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=MAX_TASKS_PER_CLAIM as i64))]
    max_tasks: u32,
    /// Take at most one task, run it, and exit 0 if it completed, 1 otherwise (for CI).
    #[arg(long)]
    once: bool,
    /// Claim this one pending task (`POST /api/workers`), run it and exit like
    /// `--once`: for a CI job started for a task.
    #[arg(long, value_name = "TASK_ID")]
    task: Option<String>,
    /// The git checkout tasks branch from.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The Claude Code executable [default: claude, on PATH].
    #[arg(long, env = "BUILDD_CLAUDE_BIN")]
    claude_bin: Option<PathBuf>,
    /// A runner: NAME=PATH for claude, codex or gemini at PATH; any other
    /// NAME='shell command' runs that command (like --command) for tasks that name
    /// NAME. Repeat for several. CLIs not named are looked for on PATH.
    #[arg(long = "runner", value_name = "NAME=PATH|NAME=COMMAND")]
    runners: Vec<RunnerArg>,
    /// Print which runners this machine has, and why not the others, then exit.
    #[arg(long = "runners")]
    list_runners: bool,
    /// The model Claude Code uses when a task names none [default: Claude Code's own].
    #[arg(long, env = "BUILDD_MODEL")]
    model: Option<String>,
    /// The tools a run may use without asking; everything else is denied.
    #[arg(long, default_value = DEFAULT_ALLOWED_TOOLS)]
    allowed_tools: String,
    /// Stop a run after this many turns.
    #[arg(long)]
    max_turns: Option<u32>,
    /// Run this shell command instead of the coding CLIs (the prompt is in
    /// $BUILDD_PROMPT); advertised as the runner `command`.
    #[arg(long, env = "BUILDD_RUNNER_COMMAND")]
    command: Option<String>,
    /// Seconds that running tasks get to finish after SIGTERM before they are stopped.
    #[arg(long, default_value_t = 30)]
    grace: u64,
    /// Where worktrees and undelivered results live [default: agent/ in the data dir].
    #[arg(long, env = "BUILDD_AGENT_DIR")]
    state_dir: Option<PathBuf>,
    /// Push each completed task's branch to origin.
    #[arg(long)]
    push: bool,
    /// Push, then open a pull request on GitHub (needs GITHUB_TOKEN).
    #[arg(long)]
    pr: bool,
    /// The GitHub REST API, for --pr.
    #[arg(
        long,
        env = "BUILDD_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    github_api_url: String,
    /// Claim only inside these local-time windows, e.g. 'Mon-Fri 19:00-08:00,Sat-Sun'
    /// (days a window starts on, then HH:MM-HH:MM; an end before the start runs past
    /// midnight).
    #[arg(long, value_name = "SPEC", value_parser = parse_hours)]
    hours: Option<Hours>,
    /// Claim only once the person at this machine has been idle this many minutes
    /// (logind's idle hint on Linux, HID idle time on macOS).
    #[arg(long, value_name = "MINUTES", value_parser = clap::value_parser!(u64).range(1..=10_080))]
    when_idle: Option<u64>,
    /// When --hours or --when-idle stop claims, pause running tasks too (they carry
    /// on when the agent may work again) instead of letting them finish.
    #[arg(long = "yield")]
    yield_runs: bool,
    /// Exit 0 after this many minutes with no task to run (lets a Coder workspace or
    /// a VM stop when there is nothing to do); fractions count (0.5 is 30 seconds).
    #[arg(long, value_name = "MINUTES", value_parser = parse_minutes)]
    exit_when_idle: Option<Duration>,
}

/// Minutes, whole or not, from 1 second to a week.
fn parse_minutes(text: &str) -> Result<Duration, String> {
    let minutes: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of minutes"))?;
    if !(1.0 / 60.0..=10_080.0).contains(&minutes) {
        return Err("must be from 1 second (0.017) to a week (10080) in minutes".into());
    }
    Ok(Duration::from_secs_f64(minutes * 60.0))
}

impl AgentArgs {
    /// The server the agent would connect to.
    pub fn server(&self) -> &str {
        &self.connection.server
    }

    pub fn grace_secs(&self) -> u64 {
        self.grace
    }
}

fn parse_hours(spec: &str) -> Result<Hours, String> {
    spec.parse()
}

pub async fn run(args: AgentArgs) -> Result<(), String> {
    args.logging.init();
    let options = RunnerOptions {
        command: args.command.clone(),
        named: args.runners.clone(),
        claude_bin: args.claude_bin.clone(),
        claude_model: args.model.clone(),
        allowed_tools: args.allowed_tools.clone(),
        max_turns: args.max_turns,
    };
    if args.list_runners {
        print_runners(&survey(&options));
        return Ok(());
    }
    // Credentials stay in this process's environment, which each run inherits (only
    // its own runner's); the server never sees them and nothing logs them.
    let runners = Arc::new(RunnerSet::from_survey(&options)?);
    let pr = if args.pr {
        let token = std::env::var("GITHUB_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or("--pr needs GITHUB_TOKEN in the environment")?;
        Some(PrSettings {
            api_url: args.github_api_url.clone(),
            token,
        })
    } else {
        None
    };
    if args.yield_runs && args.hours.is_none() && args.when_idle.is_none() {
        return Err(
            "--yield pauses runs when --hours or --when-idle stop claims; give one of them".into(),
        );
    }
    let availability = Availability {
        hours: args.hours,
        when_idle: match args.when_idle {
            Some(minutes) => Some((Duration::from_secs(minutes * 60), idle::system_clock()?)),
            None => None,
        },
    };
    let state_dir = match args.state_dir {
        Some(dir) => dir,
        None => paths::data_dir()?.join("agent"),
    };
    let config = agent::Config {
        client: args.connection.client()?,
        workspace_id: args.workspace,
        max_tasks: if args.once || args.task.is_some() {
            1
        } else {
            args.max_tasks
        },
        once: args.once || args.task.is_some(),
        task: args.task,
        dir: args.dir,
        state_dir,
        runners,
        grace: Duration::from_secs(args.grace),
        push: args.push || args.pr,
        pr,
        availability,
        yield_runs: args.yield_runs,
        exit_when_idle: args.exit_when_idle,
    };
    let draining = CancellationToken::new();
    tokio::spawn(drain_on_signal(draining.clone()));
    match agent::run(config, draining).await? {
        true => Ok(()),
        false => Err("the task did not complete (the log above says why)".into()),
    }
}

/// `buildd agent --runners`: each runner, whether it can run here, and where it is
/// and what it signs in with, or why it cannot.
fn print_runners(survey: &[Survey]) {
    let width = survey
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!("{:width$}  {:5}  DETAIL", "RUNNER", "READY");
    for s in survey {
        let ready = if s.ready { "yes" } else { "no" };
        println!("{:width$}  {ready:5}  {}", s.name, s.detail);
    }
}

async fn drain_on_signal(draining: CancellationToken) {
    super::wait_for_signal().await;
    draining.cancel();
}
