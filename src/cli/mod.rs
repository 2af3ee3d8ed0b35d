//! The command line: parses arguments and hands each command to its module.
//!
//! Every failure ends as one line on stderr and a non-zero exit, never a panic.

mod paths;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "buildd", version, about = "A task broker for AI coding agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: REST API and lease sweeper, on SQLite or Postgres.
    Serve(serve::ServeArgs),
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
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
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
