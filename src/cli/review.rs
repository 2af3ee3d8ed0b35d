//! `buildd task diff` and `buildd task review`: what a run changed, shown like git
//! shows it, and comments on it sent back to the agent as a follow-up.

use std::io::Write;
use std::process::{Command, Stdio};

use super::output;
use super::output::colour_wanted;
use crate::api::{Diff, ReviewBody, ReviewComment, Worker};
use crate::client::Client;

/// The diff to show for `id`: a worker's (`wrk-…`), or that of the task's newest
/// worker that recorded one.
async fn diff_of(client: &Client, id: &str) -> Result<Diff, String> {
    if id.starts_with("wrk-") {
        return client.get_diff(id).await.map_err(|e| e.to_string());
    }
    for worker in newest_workers(client, id).await? {
        match client.get_diff(&worker.id).await {
            Ok(diff) => return Ok(diff),
            Err(e) if e.status() == Some(404) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("no run of task {id} has recorded a diff yet"))
}

async fn newest_workers(client: &Client, task_id: &str) -> Result<Vec<Worker>, String> {
    client.get_task(task_id).await.map_err(|e| e.to_string())?;
    Ok(client
        .list_workers(Some(task_id))
        .await
        .map_err(|e| e.to_string())?
        .workers)
}

/// `task diff ID [--stat]`.
pub async fn show_diff(client: &Client, json: bool, id: &str, stat: bool) -> Result<(), String> {
    let diff = diff_of(client, id).await?;
    if json {
        output::json(&diff);
        return Ok(());
    }
    let colour = colour_wanted();
    let mut text = summary(&diff);
    if !stat {
        text.push('\n');
        text += &coloured(&diff.change.patch, colour);
        if diff.change.truncated {
            text += "\n(the diff was cut at 1 MiB; every file is counted above)\n";
        }
    }
    page(&text, colour);
    Ok(())
}

/// The files with their counts, like `git diff --stat`.
fn summary(diff: &Diff) -> String {
    let mut text = format!(
        "worker {} · {} · {} file(s), +{} -{}\n",
        diff.worker_id,
        diff.branch.as_deref().unwrap_or("-"),
        diff.change.files.len(),
        diff.added,
        diff.removed
    );
    for file in &diff.change.files {
        let path = match &file.old_path {
            Some(old) => format!("{old} → {}", file.path),
            None => file.path.clone(),
        };
        let counts = if file.binary {
            "binary".to_owned()
        } else {
            format!("+{} -{}", file.added, file.removed)
        };
        text += &format!(" {path}  {counts}\n");
    }
    text
}

/// The patch with git's colours: headers bold, hunks cyan, added green, removed red.
fn coloured(patch: &str, colour: bool) -> String {
    if !colour {
        return patch.to_owned();
    }
    let mut out = String::with_capacity(patch.len() + patch.len() / 8);
    for line in patch.lines() {
        let code = if line.starts_with("diff --git")
            || line.starts_with("index ")
            || line.starts_with("+++ ")
            || line.starts_with("--- ")
        {
            Some("1")
        } else if line.starts_with("@@") {
            Some("36")
        } else if line.starts_with('+') {
            Some("32")
        } else if line.starts_with('-') {
            Some("31")
        } else {
            None
        };
        match code {
            Some(code) => out += &format!("\x1b[{code}m{line}\x1b[0m\n"),
            None => {
                out += line;
                out.push('\n');
            }
        }
    }
    out
}

/// Prints `text`, through `$PAGER` (default `less -FRX`) on a terminal.
fn page(text: &str, terminal: bool) {
    if terminal {
        let pager = std::env::var("PAGER")
            .ok()
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| "less -FRX".to_owned());
        let spawned = Command::new("sh")
            .args(["-c", &pager])
            .stdin(Stdio::piped())
            .spawn();
        if let Ok(mut child) = spawned {
            if let Some(mut stdin) = child.stdin.take() {
                // A pager quit early closes its input; that is no error.
                let _ = stdin.write_all(text.as_bytes());
            }
            let _ = child.wait();
            return;
        }
    }
    print!("{text}");
}

/// `--comment PATH:LINE:TEXT`.
pub fn parse_comment(arg: &str) -> Result<ReviewComment, String> {
    let mut parts = arg.splitn(3, ':');
    let (Some(path), Some(line), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{arg:?} is not PATH:LINE:TEXT"));
    };
    let line = line
        .parse()
        .map_err(|_| format!("{arg:?}: the line must be a number"))?;
    Ok(ReviewComment {
        path: path.to_owned(),
        line,
        body: body.to_owned(),
    })
}

/// `task review ID --comment PATH:LINE:TEXT … [--summary TEXT]`: reviews the diff
/// [`diff_of`] finds for `id`.
pub async fn send_review(
    client: &Client,
    json: bool,
    id: &str,
    comments: Vec<ReviewComment>,
    summary: Option<String>,
) -> Result<(), String> {
    let diff = diff_of(client, id).await?;
    let review = ReviewBody { comments, summary };
    let reviewed = client
        .review(&diff.worker_id, &review)
        .await
        .map_err(|e| e.to_string())?;
    if json {
        output::json(&reviewed);
    } else {
        println!(
            "Sent the review of {}: follow-up task {} ({}) will address it on {}.",
            diff.worker_id,
            reviewed.followup.id,
            reviewed.followup.status,
            diff.branch.as_deref().unwrap_or("its branch")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_read_as_path_line_text() {
        let c = parse_comment("src/a.rs:12:use ? here: it reads better").unwrap();
        assert_eq!(
            (c.path.as_str(), c.line, c.body.as_str()),
            ("src/a.rs", 12, "use ? here: it reads better")
        );
        assert!(parse_comment("src/a.rs:twelve:x").is_err());
        assert!(parse_comment("no line").is_err());
    }

    #[test]
    fn patches_are_coloured_like_git() {
        let patch = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+new\n same\n";
        let out = coloured(patch, true);
        assert!(
            out.contains("\x1b[31m-old\x1b[0m\n\x1b[32m+new\x1b[0m\n same\n"),
            "{out}"
        );
        assert!(out.contains("\x1b[1m--- a/x\x1b[0m"));
        assert_eq!(coloured(patch, false), patch);
    }
}
