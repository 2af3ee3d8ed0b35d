//! `buildd workspace …`

use clap::Subcommand;

use super::output::{self, or_dash};
use crate::client::{Client, decode};
use crate::core::model::Workspace;

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
        } => {
            let created = client
                .create_workspace(&name, repo.as_deref(), default_branch.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            if json {
                output::json(&created);
            } else {
                let ws: Workspace = decode(&created).map_err(|e| e.to_string())?;
                println!("Created workspace {} ({}).", ws.id, ws.name);
            }
        }
        WorkspaceCommand::List => {
            let listed = client.list_workspaces().await.map_err(|e| e.to_string())?;
            if json {
                output::json(&listed["workspaces"]);
            } else {
                let all: Vec<Workspace> =
                    decode(&listed["workspaces"]).map_err(|e| e.to_string())?;
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
