//! GitHub's webhooks, read into what buildd does about them.
//!
//! A delivery is read into one [`Happening`] (or none: most events and actions are of
//! no interest), and the tasks it makes are shaped here. The store applies them in one
//! transaction with the delivery's id, so a delivery GitHub repeats does nothing twice.

use serde::Deserialize;

use super::model::{NotifyEvent, Task, TaskMode, Worker};
use super::time::Timestamp;
use super::{RuleError, keys, validate};

/// The label that makes an issue a task, unless the workspace names another.
pub const DEFAULT_LABEL: &str = "buildd";
/// Fix tasks one task's CI failures may make before buildd stops and says so.
pub const DEFAULT_MAX_CI_RETRIES: i32 = 3;
/// The most a workspace may allow.
pub const MAX_CI_RETRIES: i32 = 20;
/// GitHub's limit on a webhook payload.
pub const MAX_PAYLOAD_BYTES: usize = 25 * 1024 * 1024;
/// GitHub's own limit on a label's name.
pub const MAX_LABEL_LEN: usize = 50;
/// How a comment asks buildd for more work on an issue or a pull request.
pub const COMMAND: &str = "/buildd";
/// The source type of a task made from an issue; its external id is `owner/repo#N`.
pub const ISSUE_SOURCE: &str = "github_issue";
/// The source type of a CI fix; its external id is `<task id>@<head commit>`, so one
/// commit's failures make one fix.
pub const CHECK_SOURCE: &str = "github_check";
/// The prefix of the branches buildd's runs push (see [`branch_of`]).
const BRANCH_PREFIX: &str = "buildd/";

/// A workspace's `githubLabel`, checked, or the default.
pub fn label(value: Option<&str>) -> Result<String, RuleError> {
    match value {
        None => Ok(DEFAULT_LABEL.to_owned()),
        Some(label) => {
            validate::text("githubLabel", label, MAX_LABEL_LEN)?;
            Ok(label.trim().to_owned())
        }
    }
}

/// A workspace's `maxCiRetries`, checked, or the default.
pub fn max_ci_retries(value: Option<i32>) -> Result<i32, RuleError> {
    let v = value.unwrap_or(DEFAULT_MAX_CI_RETRIES);
    if (0..=MAX_CI_RETRIES).contains(&v) {
        Ok(v)
    } else {
        Err(RuleError::Invalid(format!(
            "maxCiRetries must be between 0 and {MAX_CI_RETRIES}"
        )))
    }
}

/// Whether `header` (`X-Hub-Signature-256`) is GitHub's signature of `body` with
/// `secret`, compared in constant time.
pub fn signed_by(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    header.is_some_and(|h| keys::secrets_equal(h.trim(), &keys::signature(secret, body)))
}

/// `owner/repo` of a GitHub repository URL (https, ssh or `git@` form, `.git` or
/// not), or `None` when the URL is not a GitHub repository's.
pub fn repo_from_url(url: &str) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .split_once("github.com/")
        .or_else(|| url.split_once("github.com:"))?
        .1;
    let rest = rest.strip_suffix(".git").unwrap_or(rest);
    let mut parts = rest.split('/');
    let (owner, repo) = (parts.next()?, parts.next()?);
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (plain(owner) && plain(repo) && parts.next().is_none()).then(|| format!("{owner}/{repo}"))
}

/// Whether a workspace's `repoUrl` names `repo` (`owner/name`; GitHub's names are
/// not case-sensitive).
pub fn names_repo(repo_url: Option<&str>, repo: &str) -> bool {
    repo_url
        .and_then(repo_from_url)
        .is_some_and(|r| r.eq_ignore_ascii_case(repo))
}

/// The task a `buildd/<task id>` branch is the work of.
pub fn task_of_branch(branch: &str) -> Option<&str> {
    branch
        .strip_prefix(BRANCH_PREFIX)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// A GitHub issue, as far as buildd reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Issue {
    pub number: i64,
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    pub html_url: String,
    #[serde(default)]
    pub labels: Vec<Label>,
    /// Present when the issue is a pull request.
    #[serde(default)]
    pub pull_request: Option<IssuePullRequest>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Label {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IssuePullRequest {
    pub html_url: String,
}

/// One failed check: its name and what it said.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedCheck {
    pub name: String,
    pub summary: String,
}

/// One line comment of a review.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReviewComment {
    pub path: String,
    #[serde(default)]
    pub line: Option<i64>,
    pub body: String,
}

/// What a delivery asks of buildd.
#[derive(Debug, Clone, PartialEq)]
pub enum Happening {
    /// Opened with labels, or labelled with `label`: a task when the label is the
    /// workspace's.
    IssueLabelled {
        issue: Issue,
        labels: Vec<String>,
    },
    IssueClosed(Issue),
    IssueReopened(Issue),
    /// A `/buildd …` comment on an issue, or on a pull request (`pull_request`).
    Command {
        issue: Issue,
        message: String,
        author: String,
    },
    /// CI failed on `branch` at `head_sha`.
    ChecksFailed {
        branch: String,
        head_sha: String,
        checks: Vec<FailedCheck>,
    },
    /// A review asked for changes on the pull request of `branch`. Its line comments
    /// are not in the payload; the server reads them (`review_id`) when it can.
    ChangesRequested {
        branch: String,
        pr_number: i64,
        review_id: i64,
        body: String,
        author: String,
        comments: Vec<ReviewComment>,
    },
    /// The pull request of `branch` was merged.
    Merged {
        branch: String,
        pr_url: String,
    },
}

/// A delivery read: the repository it is about and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `owner/name`.
    pub repo: String,
    pub happening: Happening,
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct IssuesPayload {
    action: String,
    issue: Issue,
    #[serde(default)]
    label: Option<Label>,
    repository: Repository,
}

#[derive(Deserialize)]
struct CommentPayload {
    action: String,
    issue: Issue,
    comment: Comment,
    repository: Repository,
}

#[derive(Deserialize)]
struct Comment {
    body: String,
    user: User,
}

#[derive(Deserialize)]
struct CheckRunPayload {
    action: String,
    check_run: CheckRun,
    repository: Repository,
}

#[derive(Deserialize)]
struct CheckRun {
    name: String,
    head_sha: String,
    conclusion: Option<String>,
    output: CheckOutput,
    check_suite: CheckSuiteRef,
}

#[derive(Deserialize)]
struct CheckOutput {
    title: Option<String>,
    summary: Option<String>,
}

#[derive(Deserialize)]
struct CheckSuiteRef {
    head_branch: Option<String>,
}

#[derive(Deserialize)]
struct CheckSuitePayload {
    action: String,
    check_suite: CheckSuite,
    repository: Repository,
}

#[derive(Deserialize)]
struct CheckSuite {
    head_branch: Option<String>,
    head_sha: String,
    conclusion: Option<String>,
    app: App,
}

#[derive(Deserialize)]
struct App {
    name: String,
}

#[derive(Deserialize)]
struct ReviewPayload {
    action: String,
    review: Review,
    pull_request: PullRequest,
    repository: Repository,
}

#[derive(Deserialize)]
struct Review {
    id: i64,
    state: String,
    body: Option<String>,
    user: User,
}

#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    pull_request: PullRequest,
    repository: Repository,
}

#[derive(Deserialize)]
struct PullRequest {
    number: i64,
    html_url: String,
    #[serde(default)]
    merged: bool,
    head: Head,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "ref")]
    branch: String,
}

/// Conclusions that mean the checks need fixing (`cancelled`, `skipped`, `neutral`
/// and `stale` do not).
fn failed(conclusion: Option<&str>) -> bool {
    matches!(
        conclusion,
        Some("failure" | "timed_out" | "action_required" | "startup_failure")
    )
}

/// Reads a delivery of `event` (`X-GitHub-Event`). `Ok(None)`: an event or action
/// buildd does nothing about (`ping` among them). `Err`: the body is not the event's
/// JSON, with what is wrong.
pub fn read(event: &str, body: &[u8]) -> Result<Option<Delivery>, String> {
    fn parse<'a, T: Deserialize<'a>>(event: &str, body: &'a [u8]) -> Result<T, String> {
        serde_json::from_slice(body).map_err(|e| format!("not a {event} event's payload: {e}"))
    }
    let (repo, happening) = match event {
        "issues" => {
            let p: IssuesPayload = parse(event, body)?;
            let happening = match p.action.as_str() {
                "opened" => {
                    let labels = p.issue.labels.iter().map(|l| l.name.clone()).collect();
                    Some(Happening::IssueLabelled {
                        issue: p.issue,
                        labels,
                    })
                }
                "labeled" => p.label.map(|l| Happening::IssueLabelled {
                    issue: p.issue,
                    labels: vec![l.name],
                }),
                "closed" => Some(Happening::IssueClosed(p.issue)),
                "reopened" => Some(Happening::IssueReopened(p.issue)),
                _ => None,
            };
            (p.repository.full_name, happening)
        }
        "issue_comment" => {
            let p: CommentPayload = parse(event, body)?;
            let message = command_message(&p.comment.body);
            let happening = match (p.action.as_str(), message) {
                ("created", Some(message)) => Some(Happening::Command {
                    issue: p.issue,
                    message,
                    author: p.comment.user.login,
                }),
                _ => None,
            };
            (p.repository.full_name, happening)
        }
        "check_run" => {
            let p: CheckRunPayload = parse(event, body)?;
            let run = p.check_run;
            let happening = match (p.action.as_str(), run.check_suite.head_branch) {
                ("completed", Some(branch)) if failed(run.conclusion.as_deref()) => {
                    let summary = [run.output.title, run.output.summary]
                        .into_iter()
                        .flatten()
                        .filter(|s| !s.trim().is_empty())
                        .collect::<Vec<_>>()
                        .join("\n");
                    Some(Happening::ChecksFailed {
                        branch,
                        head_sha: run.head_sha,
                        checks: vec![FailedCheck {
                            name: run.name,
                            summary,
                        }],
                    })
                }
                _ => None,
            };
            (p.repository.full_name, happening)
        }
        "check_suite" => {
            let p: CheckSuitePayload = parse(event, body)?;
            let suite = p.check_suite;
            let happening = match (p.action.as_str(), suite.head_branch) {
                ("completed", Some(branch)) if failed(suite.conclusion.as_deref()) => {
                    Some(Happening::ChecksFailed {
                        branch,
                        head_sha: suite.head_sha,
                        checks: vec![FailedCheck {
                            name: suite.app.name,
                            summary: format!(
                                "the check suite concluded {}",
                                suite.conclusion.unwrap_or_default()
                            ),
                        }],
                    })
                }
                _ => None,
            };
            (p.repository.full_name, happening)
        }
        "pull_request_review" => {
            let p: ReviewPayload = parse(event, body)?;
            let happening = (p.action == "submitted"
                && p.review.state.eq_ignore_ascii_case("changes_requested"))
            .then(|| Happening::ChangesRequested {
                branch: p.pull_request.head.branch,
                pr_number: p.pull_request.number,
                review_id: p.review.id,
                body: p.review.body.unwrap_or_default(),
                author: p.review.user.login,
                comments: Vec::new(),
            });
            (p.repository.full_name, happening)
        }
        "pull_request" => {
            let p: PullRequestPayload = parse(event, body)?;
            let pr = p.pull_request;
            let happening = (p.action == "closed" && pr.merged).then_some(Happening::Merged {
                branch: pr.head.branch,
                pr_url: pr.html_url,
            });
            (p.repository.full_name, happening)
        }
        _ => return Ok(None),
    };
    Ok(happening.map(|happening| Delivery { repo, happening }))
}

/// The message of a `/buildd …` comment (what follows the command; the comment's
/// other lines too), or `None` when the comment is not one.
fn command_message(comment: &str) -> Option<String> {
    let rest = comment.trim_start().strip_prefix(COMMAND)?;
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    let rest = rest.trim();
    Some(if rest.is_empty() {
        "Carry on: read the latest comments and do what they ask.".to_owned()
    } else {
        rest.to_owned()
    })
}

/// The source id of an issue: `owner/repo#N`, the repository as GitHub spells it
/// lowered, so that either spelling finds the same task.
pub fn issue_key(repo: &str, number: i64) -> String {
    format!("{}#{number}", repo.to_ascii_lowercase())
}

/// The task made of a labelled issue.
pub fn issue_task(workspace_id: String, issue: &Issue, now: Timestamp) -> Task {
    let title: String = issue
        .title
        .trim()
        .chars()
        .take(validate::MAX_TITLE_LEN)
        .collect();
    let title = if title.is_empty() {
        format!("GitHub issue #{}", issue.number)
    } else {
        title
    };
    let body = issue.body.as_deref().unwrap_or_default().trim();
    let mut description = format!("GitHub issue #{}: {}", issue.number, issue.html_url);
    if !body.is_empty() {
        description = format!("{body}\n\n{description}");
    }
    let description: String = description
        .chars()
        .take(validate::MAX_DESCRIPTION_LEN / 4)
        .collect();
    Task {
        description,
        ..Task::new(workspace_id, &title, now)
    }
}

/// What a CI failure of a task's branch leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum CiFailure {
    /// A fix task.
    Fix(Box<Task>),
    /// The cap is reached: the task is marked with this, and nothing more is made.
    GiveUp(String),
}

/// What to do about `checks` failing on `task`'s branch at `head_sha`, `fixes` fix
/// tasks having been made for it already (at most `max`).
pub fn ci_failure(
    task: &Task,
    branch: &str,
    head_sha: &str,
    checks: &[FailedCheck],
    fixes: i64,
    max: i32,
    now: Timestamp,
) -> CiFailure {
    let names = check_names(checks);
    if fixes >= i64::from(max) {
        return CiFailure::GiveUp(format!(
            "CI still fails ({names}) at {} after {fixes} fix attempts; buildd stops \
             fixing it: over to a person",
            short(head_sha)
        ));
    }
    let attempt = fixes + 1;
    let title = format!("Fix CI ({names}) on {branch}");
    let title: String = title.chars().take(validate::MAX_TITLE_LEN).collect();
    let description = format!(
        "The CI checks of branch `{branch}` (task {}: {}) failed at commit {head_sha}. \
         This is fix attempt {attempt} of {max}.\n\nFailing checks:\n{}\n\nFind the \
         cause, fix it on this branch and commit; the pull request updates itself.",
        task.id,
        task.title,
        checks_text(checks)
    );
    CiFailure::Fix(Box::new(Task {
        description,
        runner_preference: task.runner_preference,
        priority: task.priority,
        max_attempts: task.max_attempts,
        max_cost_usd: task.max_cost_usd,
        mode: TaskMode::Run,
        parent_id: Some(task.id.clone()),
        base_branch: Some(branch.to_owned()),
        branch: Some(branch.to_owned()),
        ..Task::new(task.workspace_id.clone(), &title, now)
    }))
}

/// A still unclaimed fix task's description with more failed checks of its commit.
pub fn more_checks(description: &str, checks: &[FailedCheck]) -> String {
    let new: Vec<&FailedCheck> = checks
        .iter()
        .filter(|c| !description.contains(&format!("- {}:", c.name)))
        .collect();
    if new.is_empty() {
        return description.to_owned();
    }
    let lines: Vec<String> = new.into_iter().map(check_line).collect();
    match description.split_once("\n\nFind the cause") {
        Some((head, tail)) => format!("{head}\n{}\n\nFind the cause{tail}", lines.join("\n")),
        None => format!("{description}\n{}", lines.join("\n")),
    }
}

fn check_names(checks: &[FailedCheck]) -> String {
    checks
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_line(check: &FailedCheck) -> String {
    let summary = check.summary.trim();
    if summary.is_empty() {
        format!("- {}: failed", check.name)
    } else {
        let summary: String = summary.chars().take(4000).collect();
        format!("- {}: {}", check.name, summary.replace('\n', "\n  "))
    }
}

fn checks_text(checks: &[FailedCheck]) -> String {
    checks.iter().map(check_line).collect::<Vec<_>>().join("\n")
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The message of a follow-up asked for by a review that requested changes.
pub fn review_message(author: &str, body: &str, comments: &[ReviewComment]) -> String {
    let mut message = format!("@{author} reviewed the pull request and asked for changes.");
    if !body.trim().is_empty() {
        message.push_str(&format!("\n\n{}", body.trim()));
    }
    if !comments.is_empty() {
        message.push_str("\n\nComments:");
        for c in comments {
            match c.line {
                Some(line) => message.push_str(&format!("\n{}:{line}: {}", c.path, c.body)),
                None => message.push_str(&format!("\n{}: {}", c.path, c.body)),
            }
        }
    }
    message
}

/// The message of a follow-up asked for by a `/buildd` comment.
pub fn command_followup(author: &str, message: &str, url: &str) -> String {
    format!("@{author} asked on {url}:\n\n{message}")
}

/// The branch a follow-up of `task` asked for on GitHub carries on: the one `task`
/// carried on, or the branch of the pull request its last run opened (so that the pull
/// request updates); `None`: a branch of its own.
pub fn followup_branch(task: &Task, last_worker: Option<&Worker>) -> Option<String> {
    task.branch.clone().or_else(|| {
        last_worker
            .filter(|w| w.pr_url.is_some())
            .and_then(|w| w.branch.clone())
    })
}

/// The branch `task`'s runs commit to and push.
pub fn branch_of(task: &Task) -> String {
    task.branch
        .clone()
        .unwrap_or_else(|| format!("{BRANCH_PREFIX}{}", task.id))
}

/// The issue an issue task's source names: (`owner/repo`, number).
pub fn issue_of_key(key: &str) -> Option<(&str, i64)> {
    let (repo, number) = key.rsplit_once('#')?;
    Some((repo, number.parse().ok()?))
}

/// The longest result text quoted in an issue's comment.
const MAX_REPORTED_RESULT: usize = 3000;

/// The comment buildd keeps on an issue (one, edited as its task moves on) when the
/// issue's newest task reaches `event`; `None` for the events it does not report.
pub fn issue_report(event: NotifyEvent, task: &Task) -> Option<String> {
    let head = format!("**buildd** · task `{}` · {}", task.id, task.title);
    let field = |name: &str| {
        task.result
            .as_ref()
            .and_then(|r| r.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let body = match event {
        NotifyEvent::Created => return None,
        NotifyEvent::Running => "🛠️ An agent is working on this.".to_owned(),
        NotifyEvent::WaitingInput => {
            "❓ The agent has a question: answer it on the dashboard, or comment              `/buildd <answer>` here."
                .to_owned()
        }
        NotifyEvent::Planned => "📋 The agent has a plan for a person to approve.".to_owned(),
        NotifyEvent::Completed => {
            let mut body = "✅ Done.".to_owned();
            if let Some(pr) = field("prUrl") {
                body.push_str(&format!(" Pull request: {pr}"));
            }
            if let Some(text) = field("text") {
                let mut quoted: String = text.chars().take(MAX_REPORTED_RESULT).collect();
                if quoted.len() < text.len() {
                    quoted.push('…');
                }
                body.push_str(&format!("\n\n{}", quote(&quoted)));
            }
            body
        }
        NotifyEvent::Failed => match task.error.as_deref() {
            Some(error) => format!("❌ It failed: {error}"),
            None => "❌ It failed.".to_owned(),
        },
        NotifyEvent::Cancelled => "⏹️ The task was cancelled.".to_owned(),
    };
    Some(format!("{head}\n\n{body}"))
}

fn quote(text: &str) -> String {
    text.lines()
        .map(|l| format!("> {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/github/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).unwrap()
    }

    fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_slice(&fixture(name)).unwrap();
        edit(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn signatures_are_checked_whole() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let good = keys::signature("s3cret", body);
        assert!(signed_by("s3cret", body, Some(&good)));
        assert!(!signed_by("other", body, Some(&good)));
        assert!(!signed_by("s3cret", b"{}", Some(&good)));
        assert!(!signed_by("s3cret", body, Some(&good[..good.len() - 1])));
        assert!(!signed_by("s3cret", body, None));
    }

    #[test]
    fn repositories_are_named_by_any_url_form() {
        for url in [
            "https://github.com/Codertocat/Hello-World",
            "https://github.com/Codertocat/Hello-World.git",
            "git@github.com:Codertocat/Hello-World.git",
            "ssh://git@github.com/Codertocat/Hello-World/",
        ] {
            assert!(names_repo(Some(url), "codertocat/hello-world"), "{url}");
        }
        assert!(!names_repo(
            Some("https://github.com/Codertocat/Other"),
            "Codertocat/Hello-World"
        ));
        assert!(!names_repo(Some("https://gitlab.com/a/b"), "a/b"));
        assert_eq!(repo_from_url("https://github.com/acme"), None);
        assert_eq!(repo_from_url("/srv/git/widgets.git"), None);
        assert!(!names_repo(None, "a/b"));
    }

    #[test]
    fn branches_name_their_task() {
        assert_eq!(task_of_branch("buildd/tsk_1"), Some("tsk_1"));
        assert_eq!(task_of_branch("buildd/"), None);
        assert_eq!(task_of_branch("buildd/a/b"), None);
        assert_eq!(task_of_branch("changes"), None);
    }

    #[test]
    fn documented_payloads_are_read() {
        let opened = read("issues", &fixture("issues.opened")).unwrap().unwrap();
        assert_eq!(opened.repo, "Codertocat/Hello-World");
        let Happening::IssueLabelled { issue, labels } = opened.happening else {
            panic!("an opened issue")
        };
        assert_eq!(issue.number, 1);
        assert_eq!(labels, ["bug"]);

        let labeled = read("issues", &fixture("issues.labeled")).unwrap().unwrap();
        assert!(matches!(labeled.happening,
            Happening::IssueLabelled { ref labels, .. } if labels == &["bug".to_owned()]));

        let reopened = read("issues", &fixture("issues.reopened"))
            .unwrap()
            .unwrap();
        assert!(matches!(reopened.happening, Happening::IssueReopened(_)));

        // The documented examples are of a comment that is no command, checks that
        // passed, a review that only commented and a pull request closed unmerged.
        for (event, name) in [
            ("issue_comment", "issue_comment.created"),
            ("check_run", "check_run.completed"),
            ("check_suite", "check_suite.completed"),
            ("pull_request_review", "pull_request_review.submitted"),
            ("pull_request", "pull_request.closed"),
        ] {
            assert_eq!(read(event, &fixture(name)).unwrap(), None, "{name}");
        }
        assert_eq!(read("ping", b"{}").unwrap(), None);
    }

    #[test]
    fn failures_reviews_and_merges_are_read() {
        let run = edited("check_run.completed", |v| {
            v["check_run"]["conclusion"] = "failure".into();
            v["check_run"]["output"]["title"] = "2 tests failed".into();
            v["check_run"]["check_suite"]["head_branch"] = "buildd/tsk_1".into();
        });
        let read_run = read("check_run", &run).unwrap().unwrap();
        assert_eq!(
            read_run.happening,
            Happening::ChecksFailed {
                branch: "buildd/tsk_1".into(),
                head_sha: "ec26c3e57ca3a959ca5aad62de7213c562f8c821".into(),
                checks: vec![FailedCheck {
                    name: "Octocoders-linter".into(),
                    summary: "2 tests failed".into()
                }],
            }
        );
        let review = edited("pull_request_review.submitted", |v| {
            v["review"]["state"] = "changes_requested".into();
            v["review"]["body"] = "Please rename it".into();
        });
        let read_review = read("pull_request_review", &review).unwrap().unwrap();
        assert!(matches!(read_review.happening,
            Happening::ChangesRequested { ref body, pr_number: 2, .. } if body == "Please rename it"));
        let merged = edited("pull_request.closed", |v| {
            v["pull_request"]["merged"] = true.into()
        });
        let read_merged = read("pull_request", &merged).unwrap().unwrap();
        assert!(matches!(read_merged.happening,
            Happening::Merged { ref branch, .. } if branch == "changes"));
    }

    #[test]
    fn a_payload_of_the_wrong_shape_is_refused() {
        let err = read("issues", br#"{"action":"opened"}"#).unwrap_err();
        assert!(err.contains("issues") && err.contains("issue"), "{err}");
        assert!(read("check_run", b"not json").is_err());
    }

    #[test]
    fn only_a_comment_that_starts_with_the_command_is_one() {
        assert_eq!(
            command_message("/buildd add a test"),
            Some("add a test".into())
        );
        assert_eq!(
            command_message("  /buildd\nplease\nrename"),
            Some("please\nrename".into())
        );
        assert!(command_message("/buildd").unwrap().starts_with("Carry on"));
        assert_eq!(command_message("/builddx go"), None);
        assert_eq!(command_message("please /buildd go"), None);
    }

    #[test]
    fn ci_fixes_stop_at_the_cap() {
        let now = crate::core::time::now();
        let task = Task::new("ws".into(), "Add a thing", now);
        let checks = [FailedCheck {
            name: "test".into(),
            summary: "1 failed".into(),
        }];
        let CiFailure::Fix(fix) = ci_failure(&task, "buildd/t", "abc", &checks, 0, 3, now) else {
            panic!("a first fix")
        };
        assert_eq!(fix.branch.as_deref(), Some("buildd/t"));
        assert_eq!(fix.base_branch.as_deref(), Some("buildd/t"));
        assert_eq!(fix.parent_id.as_deref(), Some(task.id.as_str()));
        assert!(
            fix.description.contains("- test: 1 failed"),
            "{}",
            fix.description
        );
        assert!(fix.description.contains("attempt 1 of 3"));
        assert!(matches!(
            ci_failure(&task, "buildd/t", "abc", &checks, 2, 3, now),
            CiFailure::Fix(_)
        ));
        let CiFailure::GiveUp(why) = ci_failure(&task, "buildd/t", "abc", &checks, 3, 3, now)
        else {
            panic!("the cap")
        };
        assert!(why.contains("after 3 fix attempts"), "{why}");

        let lint = [FailedCheck {
            name: "lint".into(),
            summary: String::new(),
        }];
        let more = more_checks(&fix.description, &lint);
        assert!(
            more.contains("- test: 1 failed\n- lint: failed\n\nFind the cause"),
            "{more}"
        );
        assert_eq!(more_checks(&more, &lint), more);
    }

    #[test]
    fn an_issue_becomes_a_task_with_its_link() {
        let issue = Issue {
            number: 7,
            title: "  ".into(),
            body: Some("Steps".into()),
            html_url: "https://github.com/o/r/issues/7".into(),
            labels: Vec::new(),
            pull_request: None,
        };
        let task = issue_task("ws".into(), &issue, crate::core::time::now());
        assert_eq!(task.title, "GitHub issue #7");
        assert_eq!(
            task.description,
            "Steps\n\nGitHub issue #7: https://github.com/o/r/issues/7"
        );
        assert_eq!(issue_key("Octo/Repo", 7), "octo/repo#7");
    }

    #[test]
    fn an_issue_is_told_of_its_task_in_one_comment() {
        let mut task = Task::new("ws".into(), "Fix the typo", crate::core::time::now());
        assert_eq!(issue_report(NotifyEvent::Created, &task), None);
        let running = issue_report(NotifyEvent::Running, &task).unwrap();
        assert!(running.starts_with(&format!("**buildd** · task `{}` · Fix the typo", task.id)));
        assert!(running.contains("working on this"));
        task.result = Some(
            serde_json::json!({"text": "Fixed it.\nAll tests pass.", "prUrl": "https://github.com/o/r/pull/3"}),
        );
        let done = issue_report(NotifyEvent::Completed, &task).unwrap();
        assert!(done.contains("✅ Done. Pull request: https://github.com/o/r/pull/3\n\n> Fixed it.\n> All tests pass."), "{done}");
        task.error = Some("the run crashed".into());
        assert!(
            issue_report(NotifyEvent::Failed, &task)
                .unwrap()
                .contains("❌ It failed: the run crashed")
        );
        assert_eq!(issue_of_key("octo/repo#12"), Some(("octo/repo", 12)));
        assert_eq!(issue_of_key("octo/repo"), None);
    }
}
