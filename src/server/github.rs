//! The server's GitHub REST client, when it has a token.
//!
//! GitHub Actions dispatch: a new `action` task wakes the workflows of the action
//! accounts that may claim it, with `POST /repos/{owner}/{repo}/dispatches`.
//! Dispatching happens after the task is stored and the creation has answered: a
//! GitHub outage delays the wake-up (retried with backoff, logged), never the task.
//!
//! Reads for the webhook: a review's line comments, which its event leaves out. And
//! the one comment buildd keeps on each issue it works on.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use crate::core::backoff::backoff;
use crate::core::claim::dispatch_repo;
use crate::core::github::ReviewComment;
use crate::core::model::{Account, RunnerPreference, Task};
use crate::core::page::{MAX_LIMIT, PageRequest};
use crate::store::Store;

/// The event type workflows listen for (`on: repository_dispatch: types: [buildd-task]`).
pub const EVENT_TYPE: &str = "buildd-task";
/// Tries per repository before giving up: about half a minute of backoff in all.
const ATTEMPTS: u32 = 8;

/// A review's line comments, as the REST API lists them.
const REVIEW_COMMENTS_PAGE: usize = 100;

pub struct GithubApi {
    http: reqwest::Client,
    api_url: String,
    token: String,
}

impl GithubApi {
    pub fn new(api_url: &str, token: &str) -> Result<Arc<Self>, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .user_agent(concat!("buildd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(GithubApi {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }))
    }

    /// Wakes every repository that should run `task`, in the background.
    pub fn task_created(self: &Arc<Self>, store: Arc<dyn Store>, task: Task) {
        if task.runner_preference != RunnerPreference::Action {
            return;
        }
        let dispatcher = self.clone();
        tokio::spawn(async move {
            let accounts = match every_account(store.as_ref()).await {
                Ok(accounts) => accounts,
                Err(e) => {
                    warn!(task = %task.id, error = %e, "cannot list accounts to dispatch an action task");
                    return;
                }
            };
            let mut repos = Vec::new();
            for account in &accounts {
                let grant = store
                    .get_grant(&account.id, &task.workspace_id)
                    .await
                    .ok()
                    .flatten();
                if let Some(repo) = dispatch_repo(&task, account, grant.as_ref())
                    && !repos.contains(&repo)
                {
                    repos.push(repo);
                }
            }
            if repos.is_empty() {
                warn!(task = %task.id, "an action task, but no action account with a githubRepo may claim it");
            }
            for repo in repos {
                let dispatcher = dispatcher.clone();
                let (repo, task_id) = (repo.to_owned(), task.id.clone());
                tokio::spawn(async move { dispatcher.dispatch(&repo, &task_id).await });
            }
        });
    }

    /// The line comments of review `review_id` of pull request `number` of `repo`
    /// (`owner/name`): the first page, which is all a follow-up's prompt needs.
    pub async fn review_comments(
        &self,
        repo: &str,
        number: i64,
        review_id: i64,
    ) -> Result<Vec<ReviewComment>, String> {
        let url = format!(
            "{}/repos/{repo}/pulls/{number}/reviews/{review_id}/comments?per_page={REVIEW_COMMENTS_PAGE}",
            self.api_url
        );
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// Writes `body` as comment `comment_id` of issue `number` of `repo`, or as a new
    /// comment when there is none yet (or it was deleted); returns the comment's id.
    pub async fn comment_on_issue(
        &self,
        repo: &str,
        number: i64,
        comment_id: Option<i64>,
        body: &str,
    ) -> Result<i64, String> {
        #[derive(serde::Deserialize)]
        struct Written {
            id: i64,
        }
        let edit = comment_id.map(|id| {
            let url = format!("{}/repos/{repo}/issues/comments/{id}", self.api_url);
            self.http.patch(url)
        });
        let post = || {
            let url = format!("{}/repos/{repo}/issues/{number}/comments", self.api_url);
            self.http.post(url)
        };
        let mut response = self.send(edit.unwrap_or_else(post), body).await?;
        if comment_id.is_some() && response.status() == reqwest::StatusCode::NOT_FOUND {
            response = self.send(post(), body).await?;
        }
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let written: Written = response.json().await.map_err(|e| e.to_string())?;
        Ok(written.id)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        body: &str,
    ) -> Result<reqwest::Response, String> {
        request
            .bearer_auth(&self.token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .json(&json!({ "body": body }))
            .send()
            .await
            .map_err(|e| e.to_string())
    }

    async fn dispatch(&self, repo: &str, task_id: &str) {
        let url = format!("{}/repos/{repo}/dispatches", self.api_url);
        let body = json!({ "event_type": EVENT_TYPE, "client_payload": { "task_id": task_id } });
        for attempt in 1..=ATTEMPTS {
            let sent = self
                .http
                .post(&url)
                .bearer_auth(&self.token)
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28")
                .json(&body)
                .send()
                .await;
            let (retry, reason) = match sent {
                Ok(r) if r.status().is_success() => {
                    info!(repo, task = task_id, "dispatched to GitHub Actions");
                    return;
                }
                Ok(r) => {
                    let status = r.status();
                    let retry = status.is_server_error() || status.as_u16() == 429;
                    (retry, format!("HTTP {status}"))
                }
                Err(e) => (true, e.to_string()),
            };
            if !retry || attempt == ATTEMPTS {
                warn!(repo, task = task_id, attempt, reason = %reason, "GitHub Actions dispatch failed; giving up");
                return;
            }
            warn!(repo, task = task_id, attempt, reason = %reason, "GitHub Actions dispatch failed; retrying");
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
}

/// Every account, read page by page.
async fn every_account(store: &dyn Store) -> crate::store::Result<Vec<Account>> {
    let mut page = PageRequest {
        after: None,
        limit: MAX_LIMIT,
    };
    let mut accounts = Vec::new();
    loop {
        let read = store.list_accounts(&page).await?;
        accounts.extend(read.items);
        match read.next {
            Some(next) => page.after = Some(next),
            None => return Ok(accounts),
        }
    }
}
