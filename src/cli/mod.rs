//! The command line: parses arguments and hands each command to its module.
//!
//! Every failure ends as one line on stderr and a non-zero exit, never a panic.

mod account;
mod agent;
mod credentials;
mod mcp;
mod output;
mod paths;
mod review;
mod schedule;
mod serve;
mod service;
mod task;
mod workspace;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::api::Me;
use crate::client::Client;

#[derive(Parser)]
#[command(
    name = "buildd",
    version = crate::core::version::LONG_VERSION,
    about = "A task broker for AI coding agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: REST API, event stream and lease sweeper, on SQLite or Postgres.
    Serve(serve::ServeArgs),
    /// Claim tasks and run Claude Code (or another runner) on them in git worktrees.
    Agent(Box<agent::AgentCommand>),
    /// Workspaces: the repositories agents work on.
    Workspace {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: workspace::WorkspaceCommand,
    },
    /// Accounts: who may run agents, and their limits.
    Account {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: account::AccountCommand,
    },
    /// Check an API key and keep it for this server (OS keyring, else a 0600 file).
    Login {
        #[command(flatten)]
        connection: Connection,
    },
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
    /// Serve buildd's MCP tools on stdio, for your own agent session:
    /// `claude mcp add buildd -- buildd mcp`. Uses the key `buildd login` saved.
    Mcp {
        #[command(flatten)]
        connection: Connection,
    },
    /// Schedules: tasks made on a cron cadence.
    Schedule {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: schedule::ScheduleCommand,
    },
    /// Tasks: queue, follow, steer.
    Task {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: task::TaskCommand,
    },
}

/// The flags every client command shares.
#[derive(Args)]
struct Connection {
    /// The buildd server.
    #[arg(
        long,
        env = "BUILDD_SERVER",
        default_value = "http://localhost:3000",
        global = true
    )]
    server: String,
    /// An account key or the admin token [default: the local server's admin token].
    #[arg(long, env = "BUILDD_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Print the API's JSON instead of tables and sentences.
    #[arg(long, global = true)]
    json: bool,
}

impl Connection {
    fn client(&self) -> Result<Client, String> {
        let token = self.token()?;
        Client::new(&self.server, &token).map_err(|e| e.to_string())
    }

    /// The key to call with: `--api-key`, else the saved login, else the local
    /// server's admin token.
    fn token(&self) -> Result<String, String> {
        credentials::token(&self.server, self.api_key.clone())
    }
}

/// Runs buildd with the process's arguments and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => return usage_error(&e),
        // --help and --version print their text on stdout and exit 0.
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Agent(command) => agent::main(*command).await,
            Command::Workspace {
                connection,
                command,
            } => workspace::run(&connection.client()?, connection.json, command).await,
            Command::Account {
                connection,
                command,
            } => account::run(&connection.client()?, connection.json, command).await,
            Command::Task {
                connection,
                command,
            } => task::run(&connection.client()?, connection.json, command).await,
            Command::Schedule {
                connection,
                command,
            } => schedule::run(&connection.client()?, connection.json, command).await,
            Command::Login { connection } => login(connection).await,
            Command::Mcp { connection } => mcp::run(&connection.server, &connection.token()?).await,
            Command::Completions { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut command, "buildd", &mut std::io::stdout());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

/// How the long-running commands (`serve`, `agent`) log.
#[derive(clap::Args)]
pub struct LogArgs {
    /// `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, env = "BUILDD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl LogArgs {
    /// Logs to stderr, at the level `BUILDD_LOG` sets (default `info`).
    fn init(&self) {
        use std::io::IsTerminal;
        let filter = tracing_subscriber::EnvFilter::try_from_env("BUILDD_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
            LogFormat::Json => logs.json().flatten_event(true).init(),
        }
    }
}

/// Returns at the first SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `buildd login`: checks the key against the server, then saves it.
async fn login(connection: Connection) -> Result<(), String> {
    let key = connection
        .api_key
        .clone()
        .filter(|k| !k.trim().is_empty())
        .ok_or("pass the key with --api-key or BUILDD_API_KEY")?;
    let client = Client::new(&connection.server, &key).map_err(|e| e.to_string())?;
    let me = client.me().await.map_err(|e| e.to_string())?;
    let who = match me {
        Me::Account(account) => format!("{} ({})", account.id, account.name),
        Me::Admin { .. } => "the admin".to_owned(),
    };
    match credentials::save(&connection.server, &key)? {
        credentials::Saved::Keyring => {
            println!(
                "Logged in to {} as {who}; the key is in the OS keyring.",
                client.server()
            );
        }
        credentials::Saved::File(file) => println!(
            "Logged in to {} as {who}. No OS keyring here: the key is in {} (readable only by you).",
            client.server(),
            file.display()
        ),
    }
    Ok(())
}

/// A command line clap refused, as one line: clap's own first line, minus its
/// `error: ` prefix, and where to look for help.
fn usage_error(e: &clap::Error) -> ExitCode {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    eprintln!(
        "buildd: {} (see 'buildd --help')",
        first.trim_start_matches("error: ")
    );
    ExitCode::from(2)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("buildd: {message}");
    ExitCode::FAILURE
}
