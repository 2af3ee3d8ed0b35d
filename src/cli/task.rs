//! `buildd task …`

use std::io::Read;

use chrono::Utc;
use clap::Subcommand;
use serde_json::{Value, json};

use super::output::{self, message_text, or_dash};
use crate::client::{Client, decode};
use crate::core::model::{RunnerPreference, Task, TaskStatus, Worker};

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Queue a task.
    Create {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        title: String,
        /// The task's description; `-` reads it from standard input.
        #[arg(long)]
        description: Option<String>,
        #[arg(long, value_parser = parse_runner)]
        runner: Option<RunnerPreference>,
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        #[arg(long)]
        max_attempts: Option<i32>,
    },
    /// List tasks, newest first.
    List {
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long, value_parser = parse_status)]
        status: Option<TaskStatus>,
    },
    /// Show a task and its workers.
    Show { id: String },
    /// Follow a task live until it ends: exit 0 if it completed, 1 otherwise.
    Watch { id: String },
    /// Print the runner's messages, every attempt in order.
    Logs { id: String },
    /// Cancel a task; its agent stops the run.
    Cancel { id: String },
    /// Answer the question of a task waiting for input.
    Reply { id: String, message: String },
}

fn parse_runner(s: &str) -> Result<RunnerPreference, String> {
    s.parse()
}

fn parse_status(s: &str) -> Result<TaskStatus, String> {
    s.parse()
}

fn fail(e: impl ToString) -> String {
    e.to_string()
}

/// How long ago, for people: `45s`, `12m`, `3h`, `2d`.
fn age(task: &Task) -> String {
    let secs = (Utc::now() - task.created_at).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub async fn run(client: &Client, json: bool, command: TaskCommand) -> Result<(), String> {
    match command {
        TaskCommand::Create {
            workspace,
            title,
            description,
            runner,
            priority,
            max_attempts,
        } => {
            let description = match description.as_deref() {
                Some("-") => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text).map_err(|e| {
                        format!("cannot read the description from standard input: {e}")
                    })?;
                    Some(text)
                }
                _ => description,
            };
            let body = json!({
                "workspaceId": workspace,
                "title": title,
                "description": description,
                "runnerPreference": runner,
                "priority": priority,
                "maxAttempts": max_attempts,
            });
            let created = client.create_task(strip_nulls(body)).await.map_err(fail)?;
            if json {
                output::json(&created);
            } else {
                let task: Task = decode(&created).map_err(fail)?;
                println!(
                    "Created task {} ({}, priority {}).",
                    task.id, task.status, task.priority
                );
            }
        }
        TaskCommand::List { workspace, status } => {
            let status = status.map(|s| s.as_str());
            let listed = client
                .list_tasks(workspace.as_deref(), status)
                .await
                .map_err(fail)?;
            if json {
                output::json(&listed["tasks"]);
            } else {
                let tasks: Vec<Task> = decode(&listed["tasks"]).map_err(fail)?;
                let rows: Vec<Vec<String>> = tasks
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.status.to_string(),
                            t.priority.to_string(),
                            t.runner_preference.to_string(),
                            format!("{}/{}", t.attempts, t.max_attempts),
                            age(t),
                            t.title.clone(),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "ID", "STATUS", "PRIORITY", "RUNNER", "ATTEMPTS", "AGE", "TITLE",
                    ],
                    &rows,
                );
            }
        }
        TaskCommand::Show { id } => {
            let task = client.get_task(&id).await.map_err(fail)?;
            let workers = client.list_workers(Some(&id)).await.map_err(fail)?;
            if json {
                let mut shown = task.clone();
                shown["workers"] = workers["workers"].clone();
                output::json(&shown);
            } else {
                let workers: Vec<Worker> = decode(&workers["workers"]).map_err(fail)?;
                show(&decode(&task).map_err(fail)?, &workers);
            }
        }
        TaskCommand::Watch { id } => return watch(client, json, &id).await,
        TaskCommand::Logs { id } => return logs(client, json, &id).await,
        TaskCommand::Cancel { id } => {
            let task = client.cancel_task(&id).await.map_err(fail)?;
            if json {
                output::json(&task);
            } else {
                println!("Cancelled task {id}; its agent will stop the run.");
            }
        }
        TaskCommand::Reply { id, message } => {
            let task = client.reply_task(&id, &message).await.map_err(fail)?;
            if json {
                output::json(&task);
            } else {
                println!("Replied to task {id}; it is running again.");
            }
        }
    }
    Ok(())
}

/// Leaves out unset options so the server applies its defaults.
fn strip_nulls(mut body: Value) -> Value {
    if let Some(map) = body.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    body
}

fn show(task: &Task, workers: &[Worker]) {
    println!("{}  {}", task.id, task.title);
    println!(
        "  status     {} (attempt {} of {})",
        task.status, task.attempts, task.max_attempts
    );
    println!("  workspace  {}", task.workspace_id);
    println!(
        "  runner     {}, priority {}",
        task.runner_preference, task.priority
    );
    println!(
        "  created    {} ({} ago)",
        task.created_at.to_rfc3339(),
        age(task)
    );
    if let Some(result) = &task.result {
        println!("  result     {}", message_text(result));
    }
    if !task.description.is_empty() {
        println!();
        for line in task.description.lines() {
            println!("  {line}");
        }
    }
    if workers.is_empty() {
        return;
    }
    println!();
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.status.to_string(),
                w.account_id.clone(),
                format!("{:.2}", w.cost_usd),
                or_dash(w.branch.clone()),
                or_dash(w.commit_sha.clone()),
                or_dash(w.pr_url.clone()),
                or_dash(w.question.clone().or(w.error.clone())),
            ]
        })
        .collect();
    output::table(
        &[
            "WORKER", "STATUS", "ACCOUNT", "USD", "BRANCH", "COMMIT", "PR", "NOTE",
        ],
        &rows,
    );
}

/// Follows the task on the event stream. The stream is opened before the task is
/// read, so no change can fall between the two.
async fn watch(client: &Client, json: bool, id: &str) -> Result<(), String> {
    let task: Task = decode(&client.get_task(id).await.map_err(fail)?).map_err(fail)?;
    let mut stream = client
        .events(Some(&task.workspace_id), None)
        .await
        .map_err(fail)?;
    let task_now = client.get_task(id).await.map_err(fail)?;
    let current: Task = decode(&task_now).map_err(fail)?;
    let mut status = current.status;
    if json {
        output::json(&json!({ "task": task_now }));
    } else {
        println!("{id}: {status}");
    }
    let mut workers: Vec<String> = current.worker_id.into_iter().collect();
    while !status.is_terminal() {
        let event = stream.next().await.map_err(fail)?;
        let data = &event.data;
        let relevant = match event.name.as_str() {
            "task.created" | "task.updated" => data["task"]["id"] == id,
            "worker.updated" => data["worker"]["taskId"] == id,
            "worker.message" => data["workerId"]
                .as_str()
                .is_some_and(|w| workers.iter().any(|k| k == w)),
            _ => false,
        };
        if !relevant {
            continue;
        }
        if json {
            output::json(&json!({ "event": event.name, "data": data }));
        }
        match event.name.as_str() {
            "task.updated" => {
                let task: Task = decode(&data["task"]).map_err(fail)?;
                if task.status != status && !json {
                    println!("{id}: {}", task.status);
                }
                status = task.status;
            }
            "worker.updated" => {
                let worker: Worker = decode(&data["worker"]).map_err(fail)?;
                if !workers.contains(&worker.id) {
                    workers.push(worker.id.clone());
                }
                if !json {
                    let note = worker
                        .question
                        .or(worker.error)
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default();
                    println!(
                        "  {} {} (${:.2}){note}",
                        worker.id, worker.status, worker.cost_usd
                    );
                }
            }
            "worker.message" if !json => println!("  │ {}", message_text(&data["message"])),
            _ => {}
        }
    }
    if status == TaskStatus::Completed {
        Ok(())
    } else {
        Err(format!("task {id} ended {status}"))
    }
}

async fn logs(client: &Client, json: bool, id: &str) -> Result<(), String> {
    let listed = client.list_workers(Some(id)).await.map_err(fail)?;
    let mut workers: Vec<Worker> = decode(&listed["workers"]).map_err(fail)?;
    workers.reverse(); // oldest attempt first
    let mut all = Vec::new();
    for worker in &workers {
        let mut after = 0;
        loop {
            let page = client.messages(&worker.id, after).await.map_err(fail)?;
            let messages = page["messages"].as_array().cloned().unwrap_or_default();
            let Some(last) = messages.last() else { break };
            after = last["seq"].as_i64().unwrap_or(after);
            for mut m in messages {
                if !json {
                    println!("{} {}", worker.id, message_text(&m["message"]));
                }
                m["workerId"] = json!(worker.id);
                all.push(m);
            }
        }
    }
    if json {
        output::json(&Value::Array(all));
    }
    Ok(())
}
