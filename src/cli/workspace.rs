//! `buildd workspace …`

use clap::Subcommand;

use super::output::{self, or_dash};
use crate::api::NewWorkspace;
use crate::client::Client;

#[derive(Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace (admin).
    Create {
        name: String,
        /// The repository agents check out.
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        default_branch: Option<String>,
        /// The GitHub label that makes an issue of the repository a task [default: buildd].
        #[arg(long)]
        github_label: Option<String>,
        /// Fix tasks one task's failing CI may make [default: 3].
        #[arg(long)]
        max_ci_retries: Option<i32>,
    },
    /// List the workspaces you can see.
    List,
}

pub async fn run(client: &Client, json: bool, command: WorkspaceCommand) -> Result<(), String> {
    match command {
        WorkspaceCommand::Create {
            name,
            repo,
            default_branch,
            github_label,
            max_ci_retries,
        } => {
            let body = NewWorkspace {
                name,
                repo_url: repo,
                default_branch,
                github_label,
                max_ci_retries,
            };
            let ws = client
                .create_workspace(&body)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                output::json(&ws);
            } else {
                println!("Created workspace {} ({}).", ws.id, ws.name);
            }
        }
        WorkspaceCommand::List => {
            let all = client
                .list_workspaces()
                .await
                .map_err(|e| e.to_string())?
                .workspaces;
            if json {
                output::json(&all);
            } else {
                let rows: Vec<Vec<String>> = all
                    .into_iter()
                    .map(|w| vec![w.id, w.name, or_dash(w.repo_url), w.default_branch])
                    .collect();
                output::table(&["ID", "NAME", "REPO", "BRANCH"], &rows);
            }
        }
    }
    Ok(())
}
