//! `buildd agent`: flags, credentials and signals around [`crate::agent::run`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{Connection, paths};
use crate::agent::claude::{ClaudeRunner, DEFAULT_ALLOWED_TOOLS};
use crate::agent::command::CommandRunner;
use crate::agent::runner::Runner;
use crate::agent::{self, PrSettings};
use crate::core::claim::MAX_TASKS_PER_CLAIM;

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
    /// The Claude Code executable.
    #[arg(long, env = "BUILDD_CLAUDE_BIN", default_value = "claude")]
    claude_bin: PathBuf,
    /// The model Claude Code uses [default: Claude Code's own].
    #[arg(long, env = "BUILDD_MODEL")]
    model: Option<String>,
    /// The tools a run may use without asking; everything else is denied.
    #[arg(long, default_value = DEFAULT_ALLOWED_TOOLS)]
    allowed_tools: String,
    /// Stop a run after this many turns.
    #[arg(long)]
    max_turns: Option<u32>,
    /// Run this shell command instead of Claude Code (the prompt is in $BUILDD_PROMPT).
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
}

/// The environment variables that authenticate Claude Code (a seat, API billing, a
/// gateway's token, or a cloud provider's own credentials).
const CLAUDE_CREDENTIALS: [&str; 5] = [
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
];

/// Whether Claude Code may be able to authenticate on this machine: a credential in
/// the environment, or Claude Code's own login (`claude` then `/login`), which it
/// keeps in `.credentials.json` of its config directory on Linux, or an
/// `apiKeyHelper` in its settings. On macOS the login lives in the keychain, which
/// cannot be read without a prompt: there the run tells, not this check.
fn claude_may_authenticate() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if CLAUDE_CREDENTIALS.iter().any(|name| set(name)) || cfg!(target_os = "macos") {
        return true;
    }
    let config = match std::env::var_os("CLAUDE_CONFIG_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".claude"),
            None => return false,
        },
    };
    config.join(".credentials.json").is_file()
        || std::fs::read_to_string(config.join("settings.json"))
            .is_ok_and(|settings| settings.contains("apiKeyHelper"))
}

pub async fn run(args: AgentArgs) -> Result<(), String> {
    args.logging.init();
    let runner: Arc<dyn Runner> = match &args.command {
        Some(command) => Arc::new(CommandRunner {
            command: command.clone(),
        }),
        None => {
            // Claude's credentials stay in this process's environment, which only the
            // runner inherits; the server never sees them and nothing logs them.
            if !claude_may_authenticate() {
                return Err("No authentication configured: set CLAUDE_CODE_OAUTH_TOKEN (a Claude subscription) or ANTHROPIC_API_KEY (API billing) in the agent's environment, or sign Claude Code in on this machine (run `claude`, then /login)".into());
            }
            Arc::new(ClaudeRunner {
                bin: args.claude_bin.clone(),
                model: args.model.clone(),
                allowed_tools: args.allowed_tools.clone(),
                max_turns: args.max_turns,
            })
        }
    };
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
        runner,
        grace: Duration::from_secs(args.grace),
        push: args.push || args.pr,
        pr,
    };
    let draining = CancellationToken::new();
    tokio::spawn(drain_on_signal(draining.clone()));
    match agent::run(config, draining).await? {
        true => Ok(()),
        false => Err("the task did not complete (the log above says why)".into()),
    }
}

async fn drain_on_signal(draining: CancellationToken) {
    super::wait_for_signal().await;
    draining.cancel();
}
