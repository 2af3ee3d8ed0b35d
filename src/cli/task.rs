//! `buildd task …`

use std::io::Read;

use clap::Subcommand;
use serde::Serialize;

use super::output::colour_wanted;
use super::output::{self, message_text, or_dash};
use super::review;
use crate::api::{
    ApproveBody, Message, NewTask, ReviewComment, RunnerPreference, Task, TaskMode, TaskQuery,
    TaskRef, TaskStatus, Worker,
};
use crate::client::Client;
use crate::core::events::EventData;
use crate::core::page::MAX_LIMIT;
use crate::core::runners;
use crate::core::transcript::{Transcript, attempt_header};

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
        /// Who runs it (any, user, service, action), or what runs it (claude, codex,
        /// gemini, or a command's name an agent declares); give both with two flags.
        #[arg(long, value_parser = parse_runner, value_name = "RUNNER")]
        runner: Vec<RunnerChoice>,
        /// The model the runner uses.
        #[arg(long)]
        model: Option<String>,
        /// The runner of the next attempt once the runner's quota, sign-in or
        /// account budget runs out.
        #[arg(long, value_name = "RUNNER")]
        fallback_runner: Option<String>,
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        #[arg(long)]
        max_attempts: Option<i32>,
        /// A task that must complete first; repeat for several.
        #[arg(long = "depends-on", value_name = "TASK")]
        depends_on: Vec<String>,
        /// The branch the run starts from.
        #[arg(long)]
        base_branch: Option<String>,
        /// Plan only: the run proposes steps for you to approve (`task approve`).
        #[arg(long)]
        plan: bool,
    },
    /// List tasks, newest first: the newest 100, or `--limit` of them, or `--all`.
    List {
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long, value_parser = parse_status)]
        status: Option<TaskStatus>,
        /// Only tasks whose title or description contains this text (any case).
        #[arg(long)]
        search: Option<String>,
        /// How many to list (1–1000).
        #[arg(long, conflicts_with = "all")]
        limit: Option<u32>,
        /// Every task, page after page.
        #[arg(long)]
        all: bool,
    },
    /// Show a task and its workers.
    Show { id: String },
    /// Follow a task live until it ends: exit 0 if it completed, 1 otherwise.
    Watch { id: String },
    /// Print the runner's messages readably, every attempt in order (`--json`: as
    /// they were sent).
    Logs {
        id: String,
        /// Keep printing new messages until the task ends (`--json`: one per line).
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a task; its agent stops the run.
    Cancel { id: String },
    /// Answer the question of a task waiting for input.
    Reply { id: String, message: String },
    /// Approve a planned task's plan: one task per step is created.
    Approve {
        id: String,
        /// An edited plan to approve instead (JSON `{"steps": […]}`); `-` reads it
        /// from standard input.
        #[arg(long, value_name = "FILE")]
        plan: Option<String>,
    },
    /// Plan again, in the same session, with your feedback.
    Revise { id: String, feedback: String },
    /// Reject a planned task's plan; the task is cancelled.
    Reject { id: String },
    /// Continue a task that has ended: a new task on its branch and session.
    Followup { id: String, message: String },
    /// Put a failed or cancelled task back in the queue.
    Retry { id: String },
    /// Send an instruction to a task's running worker (a task or worker id).
    Instruct { id: String, message: String },
    /// Show the task with its dependencies and children, and theirs.
    Tree { id: String },
    /// Show what a run changed, coloured like git (through $PAGER on a terminal): the
    /// task's newest recorded diff, or a worker's (`wrk-…`).
    Diff {
        id: String,
        /// Only the files and their counts.
        #[arg(long)]
        stat: bool,
    },
    /// Review a run's change: a follow-up on its branch addresses the comments.
    Review {
        /// A task (its newest recorded diff) or a worker (`wrk-…`).
        id: String,
        /// PATH:LINE:TEXT, LINE in the file as changed; repeat for several.
        #[arg(long = "comment", value_name = "PATH:LINE:TEXT", value_parser = review::parse_comment)]
        comments: Vec<ReviewComment>,
        /// What to do overall.
        #[arg(long)]
        summary: Option<String>,
    },
}

/// What `--runner` names: who runs a task, or what runs it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RunnerChoice {
    Preference(RunnerPreference),
    Runner(String),
}

pub(super) fn parse_runner(s: &str) -> Result<RunnerChoice, String> {
    if let Ok(preference) = s.parse() {
        return Ok(RunnerChoice::Preference(preference));
    }
    runners::check_name("--runner", s).map_err(|_| {
        format!(
            "'{s}' is neither who runs a task (any, user, service, action) nor a runner's \
             name (claude, codex, gemini, or a command's: a-z, 0-9, '.', '_', '-')"
        )
    })?;
    Ok(RunnerChoice::Runner(s.to_owned()))
}

/// The runner preference and the runner `--runner` gave, at most one of each.
pub(super) fn split_runners(
    choices: Vec<RunnerChoice>,
) -> Result<(Option<RunnerPreference>, Option<String>), String> {
    let mut preference = None;
    let mut runner = None;
    for choice in choices {
        let repeated = match choice {
            RunnerChoice::Preference(p) => preference.replace(p).is_some(),
            RunnerChoice::Runner(r) => runner.replace(r).is_some(),
        };
        if repeated {
            return Err(
                "--runner: give at most one of any, user, service, action, and one runner".into(),
            );
        }
    }
    Ok((preference, runner))
}

/// How a task's runner reads in a table: who runs it, and what, when it names one.
pub(super) fn runner_label(preference: RunnerPreference, runner: Option<&str>) -> String {
    match runner {
        Some(runner) => format!("{preference}/{runner}"),
        None => preference.to_string(),
    }
}

fn parse_status(s: &str) -> Result<TaskStatus, String> {
    s.parse()
}

fn fail(e: impl ToString) -> String {
    e.to_string()
}

pub async fn run(client: &Client, json: bool, command: TaskCommand) -> Result<(), String> {
    match command {
        TaskCommand::Create {
            workspace,
            title,
            description,
            runner,
            model,
            fallback_runner,
            priority,
            max_attempts,
            depends_on,
            base_branch,
            plan,
        } => {
            let (runner_preference, runner) = split_runners(runner)?;
            let body = NewTask {
                workspace_id: workspace,
                title,
                description: read_description(description)?,
                runner_preference,
                runner,
                model,
                fallback_runner,
                priority: priority.unwrap_or(0),
                max_attempts,
                depends_on,
                base_branch,
                mode: plan.then_some(TaskMode::Plan),
                ..NewTask::default()
            };
            let task = client.create_task(&body).await.map_err(fail)?;
            if json {
                output::json(&task);
            } else {
                println!(
                    "Created task {} ({}, priority {}).",
                    task.id, task.status, task.priority
                );
            }
        }
        TaskCommand::List {
            workspace,
            status,
            search,
            limit,
            all,
        } => {
            let mut filter = TaskQuery {
                workspace_id: workspace,
                status,
                q: search,
                limit: if all { Some(MAX_LIMIT) } else { limit },
                ..TaskQuery::default()
            };
            let mut tasks = Vec::new();
            let more = loop {
                let page = client.list_tasks(&filter).await.map_err(fail)?;
                tasks.extend(page.tasks);
                match page.next_cursor {
                    Some(next) if all => filter.cursor = Some(next),
                    next => break next.is_some(),
                }
            };
            if more && !json {
                eprintln!("(the newest {}; `--all` lists every task)", tasks.len());
            }
            if json {
                output::json(&tasks);
            } else {
                let rows: Vec<Vec<String>> = tasks
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.status.to_string(),
                            t.priority.to_string(),
                            runner_label(t.runner_preference, t.runner.as_deref()),
                            format!("{}/{}", t.attempts, t.max_attempts),
                            output::ago(t.created_at),
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
            let task = client.get_task(&id).await.map_err(fail)?.task;
            let workers = client.list_workers(Some(&id)).await.map_err(fail)?.workers;
            if json {
                output::json(&TaskWithWorkers {
                    task: &task,
                    workers: &workers,
                });
            } else {
                show(&task, &workers);
            }
        }
        TaskCommand::Watch { id } => return watch(client, json, &id).await,
        TaskCommand::Logs { id, follow } => return logs(client, json, &id, follow).await,
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
        TaskCommand::Approve { id, plan } => {
            let plan = match plan.as_deref() {
                None => None,
                Some(path) => {
                    let text = match path {
                        "-" => read_stdin("the plan")?,
                        path => std::fs::read_to_string(path)
                            .map_err(|e| format!("cannot read {path}: {e}"))?,
                    };
                    Some(
                        serde_json::from_str(&text)
                            .map_err(|e| format!("the plan is not valid JSON: {e}"))?,
                    )
                }
            };
            let approved = client
                .approve_task(&id, &ApproveBody { plan })
                .await
                .map_err(fail)?;
            if json {
                output::json(&approved);
            } else {
                println!(
                    "Approved the plan of {id}: {} task(s) created.",
                    approved.children.len()
                );
                for child in &approved.children {
                    println!("  {}  {}  {}", child.id, child.status, child.title);
                }
            }
        }
        TaskCommand::Revise { id, feedback } => {
            let task = client.revise_task(&id, &feedback).await.map_err(fail)?;
            done(
                json,
                &task,
                &format!("Task {id} will plan again with your feedback."),
            );
        }
        TaskCommand::Reject { id } => {
            let task = client.reject_task(&id).await.map_err(fail)?;
            done(
                json,
                &task,
                &format!("Rejected the plan of {id}; the task is cancelled."),
            );
        }
        TaskCommand::Followup { id, message } => {
            let task = client.followup_task(&id, &message).await.map_err(fail)?;
            done(
                json,
                &task,
                &format!("Created follow-up task {} ({}).", task.id, task.status),
            );
        }
        TaskCommand::Retry { id } => {
            let task = client.retry_task(&id).await.map_err(fail)?;
            done(json, &task, &format!("Task {id} is {} again.", task.status));
        }
        TaskCommand::Instruct { id, message } => {
            let worker_id = if id.starts_with("wrk-") {
                id.clone()
            } else {
                let task = client.get_task(&id).await.map_err(fail)?.task;
                task.worker_id
                    .ok_or_else(|| format!("task {id} has no worker to instruct"))?
            };
            let worker = client
                .instruct_worker(&worker_id, &message)
                .await
                .map_err(fail)?;
            if json {
                output::json(&worker);
            } else {
                println!("Sent the instruction to worker {worker_id}.");
            }
        }
        TaskCommand::Tree { id } => return tree(client, json, &id).await,
        TaskCommand::Diff { id, stat } => return review::show_diff(client, json, &id, stat).await,
        TaskCommand::Review {
            id,
            comments,
            summary,
        } => return review::send_review(client, json, &id, comments, summary).await,
    }
    Ok(())
}

/// Prints what a command changed: the task as JSON, or one sentence.
fn done(json: bool, task: &Task, sentence: &str) {
    if json {
        output::json(task);
    } else {
        println!("{sentence}");
    }
}

/// A `--description` as given, read from standard input when it is `-`.
pub(super) fn read_description(given: Option<String>) -> Result<String, String> {
    match given.as_deref() {
        Some("-") => read_stdin("the description"),
        _ => Ok(given.unwrap_or_default()),
    }
}

fn read_stdin(what: &str) -> Result<String, String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {what} from standard input: {e}"))?;
    Ok(text)
}

/// `task tree --json`: the task with its dependencies and children, each the same.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TreeNode {
    id: String,
    title: String,
    status: TaskStatus,
    dependencies: Vec<TaskRef>,
    children: Vec<TreeNode>,
}

/// The task and its descendants (children, their children…), at most `depth` deep.
async fn tree_node(client: &Client, id: &str, depth: usize) -> Result<TreeNode, String> {
    let detail = client.get_task(id).await.map_err(fail)?;
    let mut children = Vec::with_capacity(detail.children.len());
    if depth > 0 {
        for child in &detail.children {
            children.push(Box::pin(tree_node(client, &child.id, depth - 1)).await?);
        }
    }
    Ok(TreeNode {
        id: detail.task.id,
        title: detail.task.title,
        status: detail.task.status,
        dependencies: detail.dependencies,
        children,
    })
}

async fn tree(client: &Client, json: bool, id: &str) -> Result<(), String> {
    let root = tree_node(client, id, 8).await?;
    if json {
        output::json(&root);
        return Ok(());
    }
    fn print(node: &TreeNode, indent: usize) {
        let pad = "  ".repeat(indent);
        println!("{pad}{}  {}  {}", node.id, node.status, node.title);
        for dep in &node.dependencies {
            println!("{pad}    after {}  {}  {}", dep.id, dep.status, dep.title);
        }
        for child in &node.children {
            print(child, indent + 1);
        }
    }
    print(&root, 0);
    Ok(())
}

/// `task show --json`: the task with its workers.
#[derive(Serialize)]
struct TaskWithWorkers<'a> {
    #[serde(flatten)]
    task: &'a Task,
    workers: &'a [Worker],
}

/// `task watch --json`: one line per state or event.
#[derive(Serialize)]
#[serde(untagged)]
enum Watched<'a> {
    Task { task: &'a Task },
    Event { event: &'a str, data: &'a EventData },
}

/// `task logs --json`: a message and the worker it came from.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoggedMessage<'a> {
    #[serde(flatten)]
    message: &'a Message,
    worker_id: &'a str,
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
        runner_label(task.runner_preference, task.runner.as_deref()),
        task.priority
    );
    if let Some(model) = &task.model {
        println!("  model      {model}");
    }
    if let Some(fallback) = &task.fallback_runner {
        println!("  fallback   {fallback}");
    }
    println!(
        "  created    {} ({} ago)",
        task.created_at.to_rfc3339(),
        output::ago(task.created_at)
    );
    if let Some(progress) = &task.progress {
        println!("  progress   {progress}");
    }
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
                match (&w.runner, &w.model) {
                    (Some(runner), Some(model)) => format!("{runner} {model}"),
                    (runner, _) => or_dash(runner.clone()),
                },
                format!("{:.2}", w.cost_usd),
                or_dash(w.branch.clone()),
                or_dash(w.commit_sha.clone()),
                or_dash(w.pr_url.clone()),
                or_dash(
                    w.question
                        .clone()
                        .or(w.error.clone())
                        .or(w.progress.clone()),
                ),
            ]
        })
        .collect();
    output::table(
        &[
            "WORKER", "STATUS", "ACCOUNT", "RUNNER", "USD", "BRANCH", "COMMIT", "PR", "NOTE",
        ],
        &rows,
    );
}

/// Follows the task on the event stream. The stream is opened before the task is
/// read, so no change can fall between the two.
async fn watch(client: &Client, json: bool, id: &str) -> Result<(), String> {
    let task = client.get_task(id).await.map_err(fail)?.task;
    let mut stream = client
        .events(Some(&task.workspace_id), None)
        .await
        .map_err(fail)?;
    let current = client.get_task(id).await.map_err(fail)?.task;
    let mut status = current.status;
    if json {
        output::json(&Watched::Task { task: &current });
    } else {
        println!("{id}: {status}");
    }
    let mut workers: Vec<String> = current.worker_id.into_iter().collect();
    let mut transcript = Transcript::new(colour_wanted());
    // A plan task's run ends at `planned`, waiting for a person.
    while !status.is_terminal() && status != TaskStatus::Planned {
        let event = stream.next().await.map_err(fail)?;
        let data = &event.data;
        let relevant = match event.name.as_str() {
            "task.created" | "task.updated" => data.task.as_ref().is_some_and(|t| t.id == id),
            "worker.updated" => data.worker.as_ref().is_some_and(|w| w.task_id == id),
            "worker.message" => data.worker_id.as_ref().is_some_and(|w| workers.contains(w)),
            _ => false,
        };
        if !relevant {
            continue;
        }
        if json {
            output::json(&Watched::Event {
                event: &event.name,
                data,
            });
        }
        match (&data.task, &data.worker, &data.message) {
            (Some(task), _, _) if event.name == "task.updated" => {
                if task.status != status && !json {
                    println!("{id}: {}", task.status);
                }
                status = task.status;
            }
            (_, Some(worker), _) if event.name == "worker.updated" => {
                let worker = worker.clone();
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
            (_, _, Some(message)) if !json => {
                for line in transcript.lines(message) {
                    println!("  │ {line}");
                }
            }
            _ => {}
        }
    }
    if matches!(status, TaskStatus::Completed | TaskStatus::Planned) {
        Ok(())
    } else {
        Err(format!("task {id} ended {status}"))
    }
}

/// `task logs`: every attempt's messages, oldest attempt first; with `follow`, new
/// ones as they come until the task ends. The event stream only says when to look:
/// messages are read by number, so none is shown twice or skipped.
async fn logs(client: &Client, json: bool, id: &str, follow: bool) -> Result<(), String> {
    let task = client.get_task(id).await.map_err(fail)?.task;
    let mut stream = match follow {
        true => Some(
            client
                .events(Some(&task.workspace_id), None)
                .await
                .map_err(fail)?,
        ),
        false => None,
    };
    let colour = !json && colour_wanted();
    // Per worker: the last message shown, and its transcript's state.
    let mut read: Vec<(String, i64, Transcript)> = Vec::new();
    let mut all = Vec::new();
    loop {
        let status = client.get_task(id).await.map_err(fail)?.task.status;
        let mut workers = client.list_workers(Some(id)).await.map_err(fail)?.workers;
        workers.reverse(); // oldest attempt first
        for (attempt, worker) in workers.iter().enumerate() {
            let at = match read.iter().position(|(w, ..)| *w == worker.id) {
                Some(at) => at,
                None => {
                    if !json {
                        println!("{}", attempt_header(worker, attempt + 1));
                    }
                    read.push((worker.id.clone(), 0, Transcript::new(colour)));
                    read.len() - 1
                }
            };
            loop {
                let (_, after, transcript) = &mut read[at];
                let page = client.messages(&worker.id, *after).await.map_err(fail)?;
                let Some(last) = page.messages.last() else {
                    break;
                };
                *after = last.seq;
                for m in page.messages {
                    if json && follow {
                        output::json(&LoggedMessage {
                            message: &m,
                            worker_id: &worker.id,
                        });
                    } else if json {
                        all.push((worker.id.clone(), m));
                    } else {
                        for line in transcript.lines(&m.message) {
                            println!("{line}");
                        }
                    }
                }
            }
        }
        let Some(stream) = stream.as_mut() else {
            break;
        };
        if status.is_terminal() || status == TaskStatus::Planned {
            break;
        }
        // Until something about the task happens, or a while passes.
        let ours = |event: &crate::client::StreamedEvent| {
            let data = &event.data;
            data.task.as_ref().is_some_and(|t| t.id == id)
                || data.worker.as_ref().is_some_and(|w| w.task_id == id)
                || data
                    .worker_id
                    .as_ref()
                    .is_some_and(|w| read.iter().any(|(r, ..)| r == w))
        };
        let wait = async {
            loop {
                match stream.next().await {
                    Ok(event) if ours(&event) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => return Err(fail(e)),
                }
            }
        };
        if let Ok(waited) = tokio::time::timeout(std::time::Duration::from_secs(10), wait).await {
            waited?;
        }
    }
    if json && !follow {
        let logged: Vec<LoggedMessage> = all
            .iter()
            .map(|(worker_id, message)| LoggedMessage { message, worker_id })
            .collect();
        output::json(&logged);
    }
    Ok(())
}
