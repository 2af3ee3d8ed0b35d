//! `buildd schedule …`: tasks made on a cron cadence.

use clap::Subcommand;

use super::output::{self, or_dash};
use super::task::{RunnerChoice, parse_runner, read_description, split_runners};
use crate::api::{NewSchedule, Schedule, TaskTemplate};
use crate::client::Client;

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Make a schedule: a task from this template at each occurrence of CRON.
    Create {
        #[arg(long)]
        workspace: String,
        /// 5 fields (minute hour day-of-month month day-of-week), e.g. "0 9 * * 1-5";
        /// or 6 with seconds first.
        #[arg(long)]
        cron: String,
        /// The IANA time zone the cron is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        #[arg(long)]
        title: String,
        /// The task's description, or `-` to read it from stdin.
        #[arg(long)]
        description: Option<String>,
        /// Who runs its tasks (any, user, service, action), or what runs them
        /// (claude, codex, gemini, a command's name); give both with two flags.
        #[arg(long, value_parser = parse_runner, value_name = "RUNNER")]
        runner: Vec<RunnerChoice>,
        /// The model the runner uses.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Failed tasks in a row that pause the schedule (default 5).
        #[arg(long)]
        max_failures: Option<i32>,
    },
    /// List the schedules you can see, with their next and last runs.
    List {
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Pause a schedule: no run until it is resumed.
    Pause { id: String },
    /// Resume a schedule from its next occurrence.
    Resume { id: String },
    /// Delete a schedule (the tasks it made stay).
    Delete { id: String },
}

pub async fn run(client: &Client, json: bool, command: ScheduleCommand) -> Result<(), String> {
    let fail = |e: crate::client::ClientError| e.to_string();
    match command {
        ScheduleCommand::Create {
            workspace,
            cron,
            timezone,
            title,
            description,
            runner,
            model,
            priority,
            max_failures,
        } => {
            let (runner_preference, runner) = split_runners(runner)?;
            let body = NewSchedule {
                workspace_id: workspace,
                cron,
                timezone: Some(timezone),
                task: TaskTemplate {
                    title,
                    description: read_description(description)?,
                    runner_preference,
                    runner,
                    model,
                    priority,
                    ..TaskTemplate::default()
                },
                max_failures,
            };
            let made = client.create_schedule(&body).await.map_err(fail)?;
            if json {
                output::json(&made);
            } else {
                println!(
                    "Created schedule {} ({} {}); next run {}.",
                    made.id,
                    made.cron,
                    made.timezone,
                    next_run(&made)
                );
            }
        }
        ScheduleCommand::List { workspace } => {
            let all = client
                .list_schedules(workspace.as_deref())
                .await
                .map_err(fail)?
                .schedules;
            if json {
                output::json(&all);
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|s| {
                        vec![
                            s.id.clone(),
                            format!("{} {}", s.cron, s.timezone),
                            s.task.title.clone(),
                            next_run(s),
                            or_dash(s.last_run_at.map(|t| t.to_rfc3339())),
                            format!("{} / {}", s.runs, s.skipped),
                        ]
                    })
                    .collect();
                output::table(
                    &["ID", "CRON", "TITLE", "NEXT", "LAST", "RUNS / SKIPPED"],
                    &rows,
                );
            }
        }
        ScheduleCommand::Pause { id } => paused(client, json, &id, true).await?,
        ScheduleCommand::Resume { id } => paused(client, json, &id, false).await?,
        ScheduleCommand::Delete { id } => {
            client.delete_schedule(&id).await.map_err(fail)?;
            if !json {
                println!("Deleted schedule {id}.");
            }
        }
    }
    Ok(())
}

async fn paused(client: &Client, json: bool, id: &str, pause: bool) -> Result<(), String> {
    let schedule = client
        .pause_schedule(id, pause)
        .await
        .map_err(|e| e.to_string())?;
    if json {
        output::json(&schedule);
    } else if schedule.paused {
        println!("Paused schedule {id}.");
    } else {
        println!("Resumed schedule {id}; next run {}.", next_run(&schedule));
    }
    Ok(())
}

/// When the schedule runs next, or why it does not.
fn next_run(schedule: &Schedule) -> String {
    match (&schedule.next_run_at, &schedule.paused_reason) {
        (Some(at), _) => at.to_rfc3339(),
        (None, Some(why)) => why.clone(),
        (None, None) => "paused".to_owned(),
    }
}
