//! Opening a pull request for a task's branch through the GitHub REST API.

use std::time::Duration;

use serde_json::{Value, json};

pub struct PullRequest<'a> {
    pub api_url: &'a str,
    pub token: &'a str,
    pub repo: &'a str,
    pub head: &'a str,
    pub base: &'a str,
    pub title: &'a str,
    pub body: &'a str,
}

/// Opens the pull request and returns its web URL. When one is already open for the
/// branch (a retried task), returns that one's.
pub async fn open_pull_request(pr: &PullRequest<'_>) -> Result<String, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("buildd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())?;
    let api = pr.api_url.trim_end_matches('/');
    let response = http
        .post(format!("{api}/repos/{}/pulls", pr.repo))
        .bearer_auth(pr.token)
        .header("Accept", "application/vnd.github+json")
        .json(&json!({ "title": pr.title, "head": pr.head, "base": pr.base, "body": pr.body }))
        .send()
        .await
        .map_err(|e| format!("cannot reach the GitHub API at {api}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return body["html_url"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "GitHub answered without the pull request's html_url".into());
    }
    if status.as_u16() == 422 {
        let owner = pr.repo.split('/').next().unwrap_or_default();
        let existing: Value = http
            .get(format!(
                "{api}/repos/{}/pulls?state=open&head={owner}:{}",
                pr.repo, pr.head
            ))
            .bearer_auth(pr.token)
            .header("Accept", "application/vnd.github+json")
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .unwrap_or(Value::Null);
        if let Some(url) = existing[0]["html_url"].as_str() {
            return Ok(url.to_owned());
        }
    }
    let message = body["message"].as_str().unwrap_or("no reason given");
    Err(format!(
        "GitHub refused the pull request (HTTP {status}): {message}"
    ))
}
