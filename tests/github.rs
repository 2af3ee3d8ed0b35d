//! GitHub's webhooks through the real binary, with GitHub's documented payloads
//! (`tests/fixtures/github/`) signed as GitHub signs them: each mapping, bad
//! signatures, repeated deliveries, unknown repositories, the CI retry cap, and a
//! stand-in GitHub API on loopback that serves a review's comments.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::github::{SECRET, Sender, payload, sign};
use common::{Api, Database, Server};

/// The repository of every documented example.
const REPO: &str = "https://github.com/Codertocat/Hello-World";
const PR_URL: &str = "https://github.com/Codertocat/Hello-World/pull/2";

both_backends!(database:
    issues_become_tasks_and_follow_the_issue,
    ci_failures_make_fixes_on_the_branch_up_to_the_cap,
    reviews_comments_and_merges_reach_the_task,
    an_issue_hears_of_its_task_in_one_comment_edited,
);

/// The one reaction of an answer in `workspace`: its action and task.
fn reaction(answer: &Value, workspace: &str) -> (String, Option<String>, String) {
    let all: Vec<&Value> = answer["reactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["workspaceId"] == workspace)
        .collect();
    assert_eq!(all.len(), 1, "one reaction in {workspace}: {answer}");
    let r = all[0];
    (
        r["action"].as_str().unwrap().to_owned(),
        r["taskId"].as_str().map(str::to_owned),
        r["detail"].as_str().unwrap().to_owned(),
    )
}

async fn tasks_of(admin: &Api, workspace: &str) -> Vec<Value> {
    let (_, list) = admin
        .get(&format!("/api/tasks?workspaceId={workspace}&limit=100"))
        .await;
    list["tasks"].as_array().unwrap().clone()
}

async fn task(admin: &Api, id: &str) -> Value {
    let (status, task) = admin.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    task
}

/// Runs `task` to completion as `agent`, on `buildd/<task>` (or `branch`), having
/// opened `pr_url` when given.
async fn complete(agent: &Api, task: &str, branch: Option<&str>, pr_url: Option<&str>) {
    let claimed = agent.ok("/api/workers", json!({"taskId": task})).await;
    let worker = claimed["workers"][0]["id"].as_str().unwrap().to_owned();
    let branch = branch.map_or_else(|| format!("buildd/{task}"), str::to_owned);
    agent.move_worker(&worker, &["starting", "running"]).await;
    let (status, body) = agent
        .patch(
            &format!("/api/workers/{worker}"),
            json!({"status": "completed", "branch": branch, "prUrl": pr_url, "result": {"text": "done"}}),
        )
        .await;
    assert!(status.is_success(), "{body}");
}

async fn workspace(admin: &Api, repo: &str, extra: Value) -> String {
    let mut body = json!({"name": "hello", "repoUrl": repo});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    admin.ok("/api/workspaces", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn issues_become_tasks_and_follow_the_issue(db: Database) {
    let server = db.serve(&["--github-webhook-secret", SECRET]);
    let hooks = Sender::to(&server);
    let admin = server.admin();
    // Two spellings of the same repository, and another repository.
    let ws = workspace(&admin, &format!("{REPO}.git"), json!({})).await;
    let ws_ssh = workspace(
        &admin,
        "git@github.com:codertocat/hello-world.git",
        json!({"githubLabel": "agents"}),
    )
    .await;
    let other = workspace(&admin, "https://github.com/Codertocat/Other", json!({})).await;
    let (_, key) = admin
        .account(json!({"type": "service", "name": "agent"}), &ws, true, true)
        .await;
    let agent = server.client(&key);

    // Signatures: missing, of another secret, of another body: 401, nothing read.
    let labeled = payload("issues.labeled", |v| v["label"]["name"] = "buildd".into());
    for signature in ["", "sha256=00", &sign("another secret", b"{}")] {
        let (status, body) = hooks
            .deliver_as("issues", "d-bad", &labeled, Some(signature))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("X-Hub-Signature-256"),
            "{body}"
        );
    }
    assert!(tasks_of(&admin, &ws).await.is_empty());

    // Opened with only `bug`: not buildd's.
    let opened = payload("issues.opened", |_| {});
    let answer = hooks.deliver("issues", "d-1", &opened).await;
    assert_eq!(answer["outcome"], "acted");
    assert_eq!(reaction(&answer, &ws).0, "nothing");
    assert!(tasks_of(&admin, &ws).await.is_empty());

    // Labelled `buildd`: a task in the workspace whose label that is, and only there.
    let answer = hooks.deliver("issues", "d-2", &labeled).await;
    let (action, task_id, _) = reaction(&answer, &ws);
    assert_eq!(action, "created");
    let task_id = task_id.unwrap();
    assert_eq!(reaction(&answer, &ws_ssh).0, "nothing");
    assert!(tasks_of(&admin, &other).await.is_empty());
    let created = task(&admin, &task_id).await;
    assert_eq!(created["title"], "Spelling error in the README file");
    let description = created["description"].as_str().unwrap();
    assert!(
        description.contains("accidently spelled 'commit'"),
        "{description}"
    );
    assert!(description.contains("https://github.com/Codertocat/Hello-World/issues/1"));
    assert_eq!(created["status"], "pending");
    let (_, source) = admin
        .get(&format!(
            "/api/sources/{}",
            created["sourceId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(source["type"], "github_issue");
    assert_eq!(source["externalId"], "codertocat/hello-world#1");

    // The same delivery again: acted on once. The issue opened again with the label
    // (another delivery): still one task.
    let answer = hooks.deliver("issues", "d-2", &labeled).await;
    assert_eq!(answer["outcome"], "duplicate");
    let relabelled = payload("issues.opened", |v| {
        v["issue"]["labels"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "buildd"}))
    });
    let answer = hooks.deliver("issues", "d-3", &relabelled).await;
    assert_eq!(
        reaction(&answer, &ws),
        (
            "nothing".into(),
            Some(task_id.clone()),
            format!("the issue is task {task_id} already")
        )
    );
    assert_eq!(tasks_of(&admin, &ws).await.len(), 1);

    // The other workspace's label makes its own task there.
    let agents = payload("issues.labeled", |v| v["label"]["name"] = "Agents".into());
    let answer = hooks.deliver("issues", "d-4", &agents).await;
    assert_eq!(reaction(&answer, &ws_ssh).0, "created");
    assert_eq!(reaction(&answer, &ws).0, "nothing");

    // A repository no workspace names: 202, nothing made.
    let elsewhere = payload("issues.labeled", |v| {
        v["label"]["name"] = "buildd".into();
        v["repository"]["full_name"] = "someone/else".into();
    });
    let (status, answer) = hooks.deliver_as("issues", "d-5", &elsewhere, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["outcome"], "unknown_repository");
    // The log is read from the server's stderr as it comes.
    let mut logged = false;
    for _ in 0..50 {
        logged = server.log.lock().unwrap().contains("no workspace names");
        if logged {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(logged, "the unknown repository is logged");

    // Events and actions buildd leaves alone, and a body that is not the event's.
    let answer = hooks
        .deliver("ping", "d-6", &json!({"zen": "Design for failure."}))
        .await;
    assert_eq!(answer["outcome"], "ignored");
    let (status, answer) = hooks
        .deliver_as("issues", "d-7", &json!({"action": "opened"}), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("issues"),
        "{answer}"
    );

    // Closed: the unfinished task is cancelled. Reopened: it is retried.
    let closed = payload("issues.reopened", |v| {
        v["action"] = "closed".into();
        v["issue"]["state"] = "closed".into();
    });
    let answer = hooks.deliver("issues", "d-8", &closed).await;
    assert_eq!(reaction(&answer, &ws).0, "cancelled");
    assert_eq!(task(&admin, &task_id).await["status"], "cancelled");
    let reopened = payload("issues.reopened", |_| {});
    let answer = hooks.deliver("issues", "d-9", &reopened).await;
    assert_eq!(reaction(&answer, &ws).0, "retried");
    assert_eq!(task(&admin, &task_id).await["status"], "pending");

    // `/buildd` on the issue while the task waits: kept as a comment on it. After the
    // task has ended: a follow-up with the comment, under the same issue.
    let command = |id: i64, text: &str| {
        payload("issue_comment.created", |v| {
            v["comment"]["id"] = id.into();
            v["comment"]["body"] = text.into();
        })
    };
    let answer = hooks
        .deliver(
            "issue_comment",
            "d-10",
            &command(1, "/buildd also fix the typo in CONTRIBUTING"),
        )
        .await;
    assert_eq!(reaction(&answer, &ws).0, "nothing");
    let (_, comments) = admin.get(&format!("/api/tasks/{task_id}/comments")).await;
    assert!(
        comments["comments"][0]["body"]
            .as_str()
            .unwrap()
            .contains("also fix the typo"),
        "{comments}"
    );
    complete(&agent, &task_id, None, None).await;
    let answer = hooks
        .deliver(
            "issue_comment",
            "d-11",
            &command(2, "/buildd also fix the typo in CONTRIBUTING"),
        )
        .await;
    let (action, followup, _) = reaction(&answer, &ws);
    assert_eq!(action, "followed_up");
    let followup = task(&admin, &followup.unwrap()).await;
    assert_eq!(followup["parentId"], task_id.as_str());
    assert_eq!(followup["sourceId"], created["sourceId"]);
    let description = followup["description"].as_str().unwrap();
    assert!(
        description.contains("@Codertocat asked on"),
        "{description}"
    );
    assert!(
        description.ends_with("also fix the typo in CONTRIBUTING"),
        "{description}"
    );
    // Its run made no pull request: the follow-up gets a branch of its own.
    assert!(followup["branch"].is_null(), "{followup}");
    // A comment that is no command does nothing.
    let answer = hooks
        .deliver("issue_comment", "d-12", &command(3, "thanks!"))
        .await;
    assert_eq!(answer["outcome"], "ignored");
}

async fn ci_failures_make_fixes_on_the_branch_up_to_the_cap(db: Database) {
    let server = db.serve(&["--github-webhook-secret", SECRET]);
    let hooks = Sender::to(&server);
    let admin = server.admin();
    let ws = workspace(&admin, REPO, json!({"maxCiRetries": 2})).await;
    let (_, key) = admin
        .account(json!({"type": "service", "name": "agent"}), &ws, true, true)
        .await;
    let agent = server.client(&key);
    let original = admin.task(&ws, json!({"title": "Add the widget"})).await;
    let original = original["id"].as_str().unwrap().to_owned();
    complete(&agent, &original, None, Some(PR_URL)).await;
    let branch = format!("buildd/{original}");

    let failed_run = |name: &str, sha: &str, summary: &str| {
        payload("check_run.completed", |v| {
            let run = &mut v["check_run"];
            run["name"] = name.into();
            run["head_sha"] = sha.into();
            run["conclusion"] = "failure".into();
            run["output"]["title"] = summary.into();
            run["check_suite"]["head_branch"] = branch.clone().into();
            run["check_suite"]["head_sha"] = sha.into();
        })
    };
    // Passing checks, and failures on a branch that is no task's: nothing.
    let passed = payload("check_run.completed", |v| {
        v["check_run"]["check_suite"]["head_branch"] = branch.clone().into()
    });
    assert_eq!(
        hooks.deliver("check_run", "c-0", &passed).await["outcome"],
        "ignored"
    );
    let theirs = payload("check_suite.completed", |v| {
        v["check_suite"]["conclusion"] = "failure".into()
    });
    let answer = hooks.deliver("check_suite", "c-1", &theirs).await;
    assert_eq!(reaction(&answer, &ws).0, "nothing");

    // The first failure of a commit: a fix on the same branch.
    let answer = hooks
        .deliver(
            "check_run",
            "c-2",
            &failed_run("test", "sha-1", "2 tests failed"),
        )
        .await;
    let (action, fix, _) = reaction(&answer, &ws);
    assert_eq!(action, "fix_created");
    let fix = fix.unwrap();
    let fixed = task(&admin, &fix).await;
    assert_eq!(fixed["branch"], branch.as_str());
    assert_eq!(fixed["baseBranch"], branch.as_str());
    assert_eq!(fixed["parentId"], original.as_str());
    assert!(
        fixed["title"]
            .as_str()
            .unwrap()
            .starts_with("Fix CI (test)"),
        "{fixed}"
    );
    // More of that commit's failures join the fix while nobody has claimed it; the
    // suite's failure too. A repeat of a delivery changes nothing.
    let answer = hooks
        .deliver(
            "check_run",
            "c-3",
            &failed_run("lint", "sha-1", "unused import"),
        )
        .await;
    assert_eq!(
        reaction(&answer, &ws),
        (
            "fix_extended".into(),
            Some(fix.clone()),
            "the failures are added to the fix of this commit, not yet claimed".into()
        )
    );
    assert_eq!(
        hooks
            .deliver(
                "check_run",
                "c-3",
                &failed_run("lint", "sha-1", "unused import")
            )
            .await["outcome"],
        "duplicate"
    );
    let suite = payload("check_suite.completed", |v| {
        v["check_suite"]["conclusion"] = "failure".into();
        v["check_suite"]["head_branch"] = branch.clone().into();
        v["check_suite"]["head_sha"] = "sha-1".into();
    });
    assert_eq!(
        reaction(&hooks.deliver("check_suite", "c-4", &suite).await, &ws).0,
        "fix_extended"
    );
    let description = task(&admin, &fix).await["description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(description.contains("- test: 2 tests failed\n- lint: unused import\n- octocoders-linter: the check suite concluded failure"), "{description}");
    assert!(description.contains("fix attempt 1 of 2"), "{description}");

    // Once claimed, that commit's failures make nothing more.
    complete(&agent, &fix, Some(&branch), Some(PR_URL)).await;
    let answer = hooks
        .deliver("check_run", "c-5", &failed_run("e2e", "sha-1", "timeout"))
        .await;
    assert_eq!(reaction(&answer, &ws).0, "nothing");

    // The next commit fails: the second fix, the last one allowed.
    let answer = hooks
        .deliver(
            "check_run",
            "c-6",
            &failed_run("test", "sha-2", "1 test failed"),
        )
        .await;
    let (action, second, _) = reaction(&answer, &ws);
    assert_eq!(action, "fix_created");
    let second = second.unwrap();
    assert!(
        task(&admin, &second).await["description"]
            .as_str()
            .unwrap()
            .contains("fix attempt 2 of 2")
    );
    complete(&agent, &second, Some(&branch), Some(PR_URL)).await;

    // A third failing commit: buildd gives up and says so on the task, once.
    let answer = hooks
        .deliver(
            "check_run",
            "c-7",
            &failed_run("test", "sha-3", "still failing"),
        )
        .await;
    assert_eq!(reaction(&answer, &ws).0, "gave_up");
    let marked = task(&admin, &original).await;
    let error = marked["error"].as_str().unwrap();
    assert!(error.contains("after 2 fix attempts"), "{marked}");
    assert_eq!(marked["status"], "completed");
    let answer = hooks
        .deliver(
            "check_run",
            "c-8",
            &failed_run("test", "sha-4", "still failing"),
        )
        .await;
    assert_eq!(reaction(&answer, &ws).0, "gave_up");
    let all = tasks_of(&admin, &ws).await;
    assert_eq!(all.len(), 3, "the task and its two fixes: {all:?}");
    let (_, comments) = admin.get(&format!("/api/tasks/{original}/comments")).await;
    assert_eq!(
        comments["comments"].as_array().unwrap().len(),
        2,
        "{comments}"
    );
}

/// A stand-in of GitHub's REST API: the line comments of any review, and issue
/// comments written and edited; it keeps every call (what, and the token), and fails
/// the first `failures` comment writes with a 500.
#[derive(Clone, Default)]
struct GithubStandIn {
    url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    failures: Arc<AtomicUsize>,
}

#[derive(Debug, Clone, PartialEq)]
struct Call {
    what: String,
    auth: String,
    body: Value,
    status: u16,
}

impl GithubStandIn {
    async fn start(failures: usize) -> GithubStandIn {
        let api = GithubStandIn {
            failures: Arc::new(AtomicUsize::new(failures)),
            ..GithubStandIn::default()
        };
        let app = axum::Router::new()
            .route(
                "/repos/{owner}/{repo}/pulls/{number}/reviews/{review}/comments",
                axum::routing::get(review_comments),
            )
            .route(
                "/repos/{owner}/{repo}/issues/{number}/comments",
                axum::routing::post(write_comment),
            )
            .route(
                "/repos/{owner}/{repo}/issues/comments/{id}",
                axum::routing::patch(write_comment),
            )
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        GithubStandIn { url, ..api }
    }

    fn record(&self, what: String, headers: &HeaderMap, body: Value, status: u16) {
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        self.calls.lock().unwrap().push(Call {
            what,
            auth,
            body,
            status,
        });
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls so far, once there are at least `n` that succeeded.
    async fn until_succeeded(&self, n: usize) -> Vec<Call> {
        for _ in 0..300 {
            let calls = self.calls();
            if calls
                .iter()
                .filter(|c| c.status == 200 || c.status == 201)
                .count()
                >= n
            {
                return calls;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("GitHub got {:?}", self.calls());
    }
}

async fn review_comments(
    State(api): State<GithubStandIn>,
    Path((owner, repo, number, review)): Path<(String, String, i64, i64)>,
    headers: HeaderMap,
) -> axum::Json<Value> {
    let what = format!("{owner}/{repo}#{number} review {review}");
    api.record(what, &headers, Value::Null, 200);
    axum::Json(json!([
        {"id": 1, "path": "src/widget.rs", "line": 3, "body": "Rename this to `Gadget`.", "user": {"login": "Codertocat"}},
        {"id": 2, "path": "README.md", "line": null, "body": "Mention it here.", "user": {"login": "Codertocat"}}
    ]))
}

/// `POST …/issues/N/comments` (a new comment, id 7000 + N) and `PATCH
/// …/issues/comments/ID` (an edit).
async fn write_comment(
    State(api): State<GithubStandIn>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    let what = format!("{method} {}", uri.path());
    if api
        .failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
        .is_ok()
    {
        api.record(what, &headers, body, 500);
        let error = json!({"message": "Server Error"});
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(error),
        );
    }
    let last = uri.path().rsplit('/').nth(1).unwrap();
    let id = if method == axum::http::Method::POST {
        7000 + last.parse::<i64>().unwrap_or(0)
    } else {
        uri.path().rsplit('/').next().unwrap().parse().unwrap()
    };
    let status = if method == axum::http::Method::POST {
        201
    } else {
        200
    };
    api.record(what, &headers, body.clone(), status);
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"id": id, "body": body["body"]})),
    )
}

/// A server that takes webhooks and talks to `github` with a token.
fn serve_with_api(db: &Database, github: &GithubStandIn) -> Server {
    db.serve(&[
        "--github-webhook-secret",
        SECRET,
        "--github-token",
        "ghs_standin",
        "--github-api-url",
        &github.url,
    ])
}

async fn reviews_comments_and_merges_reach_the_task(db: Database) {
    let github = GithubStandIn::start(0).await;
    let server = serve_with_api(&db, &github);
    let hooks = Sender::to(&server);
    let admin = server.admin();
    let ws = workspace(&admin, REPO, json!({})).await;
    let (_, key) = admin
        .account(json!({"type": "service", "name": "agent"}), &ws, true, true)
        .await;
    let agent = server.client(&key);
    let original = admin.task(&ws, json!({"title": "Add the widget"})).await;
    let original = original["id"].as_str().unwrap().to_owned();
    complete(&agent, &original, None, Some(PR_URL)).await;
    let branch = format!("buildd/{original}");

    // Changes requested: a follow-up on the pull request's branch, with the review's
    // body and its line comments read from the API.
    let review = payload("pull_request_review.submitted", |v| {
        v["review"]["state"] = "changes_requested".into();
        v["review"]["body"] = "Close, but not quite.".into();
        v["pull_request"]["head"]["ref"] = branch.clone().into();
    });
    let answer = hooks.deliver("pull_request_review", "r-1", &review).await;
    let (action, followup, _) = reaction(&answer, &ws);
    assert_eq!(action, "followed_up");
    let followup = task(&admin, &followup.unwrap()).await;
    assert_eq!(followup["parentId"], original.as_str());
    assert_eq!(followup["branch"], branch.as_str());
    assert_eq!(followup["baseBranch"], branch.as_str());
    let description = followup["description"].as_str().unwrap();
    assert!(
        description.starts_with(
            "@Codertocat reviewed the pull request and asked for changes.\n\nClose, but not quite."
        ),
        "{description}"
    );
    assert!(
        description
            .contains("src/widget.rs:3: Rename this to `Gadget`.\nREADME.md: Mention it here."),
        "{description}"
    );
    let asked: Vec<(String, String)> = github
        .calls()
        .into_iter()
        .map(|c| (c.what, c.auth))
        .collect();
    assert_eq!(
        asked,
        [(
            "Codertocat/Hello-World#2 review 237895671".to_owned(),
            "Bearer ghs_standin".to_owned()
        )]
    );
    // A review that only comments, or a repeat: nothing more.
    let commented = payload("pull_request_review.submitted", |v| {
        v["pull_request"]["head"]["ref"] = branch.clone().into();
    });
    assert_eq!(
        hooks
            .deliver("pull_request_review", "r-2", &commented)
            .await["outcome"],
        "ignored"
    );
    assert_eq!(
        hooks.deliver("pull_request_review", "r-1", &review).await["outcome"],
        "duplicate"
    );
    assert_eq!(github.calls().len(), 1);

    // `/buildd` on the pull request reaches the newest task on its branch: while the
    // follow-up runs, its run is told; once it has ended, a follow-up of it, on the
    // same branch and session.
    let on_pr = |id: &str, text: &str| {
        payload("issue_comment.created", |v| {
            v["issue"]["number"] = 2.into();
            v["issue"]["html_url"] = PR_URL.into();
            v["issue"]["pull_request"] = json!({"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2", "html_url": PR_URL});
            v["comment"]["body"] = text.into();
            v["comment"]["id"] = id.len().into();
        })
    };
    let fid = followup["id"].as_str().unwrap().to_owned();
    let claimed = agent.ok("/api/workers", json!({"taskId": fid})).await;
    let worker = claimed["workers"][0]["id"].as_str().unwrap().to_owned();
    agent.move_worker(&worker, &["starting", "running"]).await;
    let answer = hooks
        .deliver(
            "issue_comment",
            "r-3",
            &on_pr("r-3", "/buildd keep the old name as an alias"),
        )
        .await;
    assert_eq!(
        reaction(&answer, &ws),
        (
            "instructed".into(),
            Some(fid.clone()),
            "sent to its running worker".into()
        )
    );
    let (_, beat) = agent
        .post(&format!("/api/workers/{worker}/heartbeat"), json!({}))
        .await;
    assert!(
        beat.to_string().contains("keep the old name as an alias"),
        "{beat}"
    );
    agent
        .patch(
            &format!("/api/workers/{worker}"),
            json!({"status": "completed", "branch": branch, "sessionId": "session-2"}),
        )
        .await;
    let answer = hooks
        .deliver(
            "issue_comment",
            "r-4",
            &on_pr("r-4-", "/buildd and add a changelog line"),
        )
        .await;
    let (action, next, _) = reaction(&answer, &ws);
    assert_eq!(action, "followed_up");
    let next = task(&admin, &next.unwrap()).await;
    assert_eq!(next["parentId"], fid.as_str());
    assert_eq!(next["branch"], branch.as_str());
    assert_eq!(next["resumeSessionId"], "session-2");

    // Merged: the task records it; closed unmerged (the documented example) does not.
    let closed = payload("pull_request.closed", |v| {
        v["pull_request"]["head"]["ref"] = branch.clone().into();
    });
    assert_eq!(
        hooks.deliver("pull_request", "m-1", &closed).await["outcome"],
        "ignored"
    );
    let merged = payload("pull_request.closed", |v| {
        v["pull_request"]["head"]["ref"] = branch.clone().into();
        v["pull_request"]["merged"] = true.into();
        v["pull_request"]["html_url"] = PR_URL.into();
    });
    assert_eq!(
        reaction(&hooks.deliver("pull_request", "m-2", &merged).await, &ws).0,
        "merged"
    );
    assert_eq!(
        reaction(&hooks.deliver("pull_request", "m-3", &merged).await, &ws).0,
        "merged"
    );
    let (_, artifacts) = admin.get(&format!("/api/tasks/{original}/artifacts")).await;
    let merged: Vec<&Value> = artifacts["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "merged")
        .collect();
    assert_eq!(merged.len(), 1, "{artifacts}");
    assert_eq!(merged[0]["value"], PR_URL);
}

/// Without a secret the endpoint is off, and says how to turn it on.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_secret_the_webhook_is_off() {
    let server = Server::sqlite(&[]);
    let hooks = Sender::to(&server);
    let (status, body) = hooks.deliver_as("issues", "x", &json!({}), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--github-webhook-secret"),
        "{body}"
    );
}

async fn an_issue_hears_of_its_task_in_one_comment_edited(db: Database) {
    // GitHub fails the first write: the comment is retried, and still made once.
    let github = GithubStandIn::start(1).await;
    let server = serve_with_api(&db, &github);
    let hooks = Sender::to(&server);
    let admin = server.admin();
    let ws = workspace(&admin, REPO, json!({})).await;
    let (_, key) = admin
        .account(json!({"type": "service", "name": "agent"}), &ws, true, true)
        .await;
    let agent = server.client(&key);
    let labeled = payload("issues.labeled", |v| v["label"]["name"] = "buildd".into());
    let answer = hooks.deliver("issues", "i-1", &labeled).await;
    let task_id = reaction(&answer, &ws).1.unwrap();

    // Queued says nothing; running is the first comment.
    let claimed = agent.ok("/api/workers", json!({"taskId": task_id})).await;
    let worker = claimed["workers"][0]["id"].as_str().unwrap().to_owned();
    agent.move_worker(&worker, &["starting", "running"]).await;
    let calls = github.until_succeeded(1).await;
    // GitHub reads owners and names in any case; the issue is keyed in lower case.
    let posts = "POST /repos/codertocat/hello-world/issues/1/comments";
    assert_eq!(calls[0].what, posts);
    assert_eq!(calls[0].status, 500);
    assert_eq!(calls[1].what, posts);
    assert_eq!(calls[1].auth, "Bearer ghs_standin");
    let first = calls[1].body["body"].as_str().unwrap();
    assert!(first.contains(&format!("task `{task_id}`")), "{first}");
    assert!(first.contains("working on this"), "{first}");

    // Its end edits that comment: the result and the pull request.
    agent
        .patch(
            &format!("/api/workers/{worker}"),
            json!({"status": "completed", "prUrl": PR_URL, "result": {"text": "Fixed the spelling.", "prUrl": PR_URL}}),
        )
        .await;
    let calls = github.until_succeeded(2).await;
    let edit = calls.last().unwrap();
    assert_eq!(
        edit.what,
        "PATCH /repos/codertocat/hello-world/issues/comments/7001"
    );
    let last = edit.body["body"].as_str().unwrap();
    assert!(
        last.contains(&format!("✅ Done. Pull request: {PR_URL}")),
        "{last}"
    );
    assert!(last.contains("> Fixed the spelling."), "{last}");
    // Nothing more is sent: the comment shows the task's last state.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(github.calls().len(), calls.len(), "{:?}", github.calls());
    // A task that came from no issue is never reported.
    let plain = admin.task(&ws, json!({"title": "not from GitHub"})).await;
    complete(&agent, plain["id"].as_str().unwrap(), None, None).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(github.calls().len(), calls.len(), "{:?}", github.calls());
}
