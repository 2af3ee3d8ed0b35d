//! `buildd account …`

use super::output::{self, or_dash};
use serde::Serialize;

use crate::api::{
    Account, AccountType, AccountUsage, AuthType, CreatedAccount, Me, NewAccount, NewGrant,
};
use crate::client::Client;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Create an account (admin); its API key is shown once.
    Create {
        #[arg(long = "type", value_parser = parse_type)]
        account_type: AccountType,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_auth)]
        auth_type: Option<AuthType>,
        #[arg(long)]
        max_workers: Option<i64>,
        #[arg(long)]
        max_sessions: Option<i64>,
        #[arg(long)]
        max_cost_per_day: Option<f64>,
        /// OWNER/REPO, for action accounts.
        #[arg(long)]
        github_repo: Option<String>,
    },
    /// List accounts (admin).
    List,
    /// Show an account's limits and what it uses of them now (default: your own).
    Show { account_id: Option<String> },
    /// Let an account claim and/or create tasks in a workspace (admin).
    Grant {
        account_id: String,
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        can_claim: bool,
        #[arg(long)]
        can_create: bool,
    },
    /// Replace an account's API key (admin, or the account itself); the old key stops
    /// working at once and the new one is shown once.
    RotateKey { account_id: String },
}

fn parse_type(s: &str) -> Result<AccountType, String> {
    s.parse()
}

fn parse_auth(s: &str) -> Result<AuthType, String> {
    s.parse()
}

pub async fn run(client: &Client, json: bool, command: AccountCommand) -> Result<(), String> {
    match command {
        AccountCommand::Create {
            account_type,
            name,
            auth_type,
            max_workers,
            max_sessions,
            max_cost_per_day,
            github_repo,
        } => {
            let body = NewAccount {
                account_type,
                name,
                auth_type,
                max_concurrent_workers: max_workers,
                max_concurrent_sessions: max_sessions,
                max_cost_per_day,
                github_repo,
                github_id: None,
                anthropic_api_key: None,
                oauth_token: None,
            };
            let created = client
                .create_account(&body)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                output::json(&created);
            } else {
                let account = &created.account;
                println!(
                    "Created {} account {} ({}).",
                    account.account_type, account.id, account.name
                );
                print_key(&created);
            }
        }
        AccountCommand::List => {
            let mut all = Vec::new();
            let mut cursor = None;
            loop {
                let page = client
                    .list_accounts(cursor.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                all.extend(page.accounts);
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            if json {
                output::json(&all);
            } else {
                let rows: Vec<Vec<String>> = all
                    .into_iter()
                    .map(|a| {
                        vec![
                            a.id,
                            a.account_type.to_string(),
                            a.name,
                            a.auth_type.to_string(),
                            a.max_concurrent_workers.to_string(),
                            or_dash(a.max_cost_per_day),
                            or_dash(a.github_repo),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "ID",
                        "TYPE",
                        "NAME",
                        "AUTH",
                        "MAX WORKERS",
                        "USD/DAY",
                        "GITHUB",
                    ],
                    &rows,
                );
            }
        }
        AccountCommand::Show { account_id } => {
            let account = match account_id {
                Some(id) => client.get_account(&id).await.map_err(|e| e.to_string())?,
                None => match client.me().await.map_err(|e| e.to_string())? {
                    Me::Account(account) => account,
                    Me::Admin { .. } => {
                        return Err("the admin token is no account: name one, \
                                    `buildd account show ACCOUNT_ID`"
                            .into());
                    }
                },
            };
            let usage = client
                .account_usage(&account.id)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                output::json(&AccountWithUsage {
                    account: &account,
                    usage: &usage,
                });
            } else {
                show(&account, &usage);
            }
        }
        AccountCommand::Grant {
            account_id,
            workspace,
            can_claim,
            can_create,
        } => {
            let body = NewGrant {
                workspace_id: workspace.clone(),
                can_claim,
                can_create,
            };
            let grant = client
                .grant(&account_id, &body)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                output::json(&grant);
            } else {
                let rights: Vec<&str> = [(can_claim, "claim"), (can_create, "create")]
                    .into_iter()
                    .filter_map(|(on, name)| on.then_some(name))
                    .collect();
                let rights = if rights.is_empty() {
                    "see only".to_owned()
                } else {
                    rights.join(" and ")
                };
                println!("Account {account_id} may now {rights} in workspace {workspace}.");
            }
        }
        AccountCommand::RotateKey { account_id } => {
            let rotated = client
                .rotate_key(&account_id)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                output::json(&rotated);
            } else {
                println!("Rotated the key of account {account_id}; the old key no longer works.");
                print_key(&rotated);
            }
        }
    }
    Ok(())
}

/// `account show --json`: the account, with its usage beside it.
#[derive(Serialize)]
struct AccountWithUsage<'a> {
    #[serde(flatten)]
    account: &'a Account,
    usage: &'a AccountUsage,
}

fn show(account: &Account, usage: &AccountUsage) {
    let sessions = account
        .max_concurrent_sessions
        .map(|n| format!(" (maxConcurrentSessions {n})"))
        .unwrap_or_default();
    let budget = match usage.max_cost_per_day {
        Some(limit) => format!("${:.2} of ${limit:.2}", usage.cost_today),
        None => format!("${:.2} (no daily limit)", usage.cost_today),
    };
    let rows = [
        (
            "Account",
            format!(
                "{} ({} {}, {})",
                account.id, account.account_type, account.name, account.auth_type
            ),
        ),
        (
            "Workers",
            format!(
                "{} of {}{sessions}",
                usage.active_workers, account.max_concurrent_workers
            ),
        ),
        ("Spent today", format!("{budget}, UTC day {}", usage.day)),
        ("GitHub repo", or_dash(account.github_repo.clone())),
    ];
    for (label, value) in rows {
        println!("{label:<12} {value}");
    }
}

fn print_key(answer: &CreatedAccount) {
    println!("API key (shown once, keep it safe): {}", answer.api_key);
}
