//! Workflows through the real binary: dependencies drained by a fleet of agents on
//! both backends, failure and retry, plans and their approval, explicit claims, and
//! what the API refuses.

mod common;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::Server;
use common::agent::{Agent, LONG, Repo, scripted_agent, wait_task};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn time(v: &Value, field: &str) -> DateTime<Utc> {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .parse()
        .unwrap()
}

/// The dependencies of task `i` of the test DAG: chains, diamonds, fan-out and
/// fan-in, and some random edges (a small LCG, so every run builds the same graph).
fn dag(n: usize) -> Vec<Vec<usize>> {
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    (0..n)
        .map(|i| match i {
            0 => vec![],
            // A chain.
            1..=4 => vec![i - 1],
            // Fan-out from 4, then a diamond's join.
            5..=8 => vec![4],
            9 => vec![5, 6, 7, 8],
            // Independent roots.
            10..=12 => vec![],
            // Everything else: up to three earlier tasks.
            _ => {
                let mut deps: Vec<usize> = (0..next() % 4).map(|_| next() % i).collect();
                deps.sort();
                deps.dedup();
                deps
            }
        })
        .collect()
}

/// 50 tasks in a DAG, drained by 8 agents: every task completes, and none was claimed
/// before all its dependencies had completed. Each run writes its prompt into its
/// branch, which shows the dependencies' outcomes reached it.
async fn drain_a_dag(server: &Server) {
    let admin = server.admin();
    let ws = admin.workspace("dag").await;
    let (_, key) = admin
        .account(
            json!({ "type": "service", "name": "fleet", "maxConcurrentWorkers": 8 }),
            &ws,
            true,
            false,
        )
        .await;
    let repo = Repo::new();
    let graph = dag(50);
    let mut ids: Vec<String> = Vec::new();
    for (i, deps) in graph.iter().enumerate() {
        let depends_on: Vec<&str> = deps.iter().map(|d| ids[*d].as_str()).collect();
        let task = admin
            .task(
                &ws,
                json!({
                    "title": format!("step {i}"),
                    "description": "run: printf '%s' \"$prompt\" > prompt.txt; sleep 0.1",
                    "dependsOn": depends_on,
                }),
            )
            .await;
        let expected = if deps.is_empty() {
            "pending"
        } else {
            "blocked"
        };
        assert_eq!(task["status"], expected, "{task}");
        ids.push(id(&task));
    }
    let (_, nine) = admin.get(&format!("/api/tasks/{}", ids[9])).await;
    assert_eq!(nine["blockedBy"].as_array().unwrap().len(), 4, "{nine}");
    let agents: Vec<Agent> = (0..8)
        .map(|_| scripted_agent(&server.url, &key, &repo, &["--max-tasks", "1"], &[]))
        .collect();
    let mut tasks: HashMap<usize, Value> = HashMap::new();
    for (i, task_id) in ids.iter().enumerate() {
        tasks.insert(i, wait_task(&admin, task_id, "completed").await);
    }
    drop(agents);
    for (i, deps) in graph.iter().enumerate() {
        let claimed = time(&tasks[&i], "claimedAt");
        for d in deps {
            let done = time(&tasks[d], "completedAt");
            assert!(
                claimed >= done,
                "step {i} was claimed at {claimed}, before its dependency step {d} completed at {done}"
            );
        }
        assert_eq!(tasks[&i]["attempts"], 1, "{}", tasks[&i]);
    }
    let prompt = repo.show(&format!("buildd/{}", ids[9]), "prompt.txt");
    assert!(
        prompt.contains("This task builds on tasks that have completed"),
        "{prompt}"
    );
    for d in [5, 6, 7, 8] {
        assert!(
            prompt.contains(&format!("step {d} ({}", ids[d])),
            "{prompt}"
        );
        let commit = repo.git(&["rev-parse", &format!("buildd/{}", ids[d])]);
        assert!(
            prompt.contains(&commit),
            "the dependency's commit is named: {prompt}"
        );
    }
    let (_, nine) = admin.get(&format!("/api/tasks/{}", ids[9])).await;
    assert_eq!(nine["blockedBy"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dag_of_50_tasks_drains_in_dependency_order_on_sqlite() {
    drain_a_dag(&Server::sqlite(&[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dag_of_50_tasks_drains_in_dependency_order_on_postgres() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    drain_a_dag(&Server::start(&url, dir.path(), &[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_fails_its_dependents_and_a_retry_runs_them_all() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let (_, key) = admin
        .account(json!({ "type": "service", "name": "s" }), &ws, true, false)
        .await;
    let marker = tempfile::tempdir().unwrap();
    let once = marker.path().join("failed-once");
    // Fails the first time it runs, succeeds after.
    let flaky = admin
        .task(
            &ws,
            json!({
                "title": "flaky",
                "maxAttempts": 1,
                "description": format!("run: [ -f {0} ] || {{ touch {0}; exit 3; }}", once.display()),
            }),
        )
        .await;
    let child = admin
        .task(&ws, json!({ "title": "child", "dependsOn": [id(&flaky)] }))
        .await;
    let grandchild = admin
        .task(
            &ws,
            json!({ "title": "grandchild", "dependsOn": [id(&child)] }),
        )
        .await;
    let repo = Repo::new();
    let agent = scripted_agent(&server.url, &key, &repo, &[], &[]);
    wait_task(&admin, &id(&flaky), "failed").await;
    for t in [&child, &grandchild] {
        let failed = wait_task(&admin, &id(t), "failed").await;
        assert!(
            failed["error"]
                .as_str()
                .unwrap()
                .starts_with("dependency task-"),
            "{failed}"
        );
    }
    let (status, answer) = admin
        .post(&format!("/api/tasks/{}/retry", id(&child)), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains(&id(&flaky)),
        "{answer}"
    );
    let retried = admin
        .ok(&format!("/api/tasks/{}/retry", id(&flaky)), json!({}))
        .await;
    assert_eq!(
        (retried["status"].clone(), retried["attempts"].clone()),
        (json!("pending"), json!(0))
    );
    for t in [&flaky, &child, &grandchild] {
        wait_task(&admin, &id(t), "completed").await;
    }
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_are_approved_once_and_bad_ones_refused_whole() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let (_, key) = admin
        .account(json!({ "type": "service", "name": "s" }), &ws, true, false)
        .await;
    let api = server.client(&key);
    let plan_task = admin
        .task(
            &ws,
            json!({ "title": "plan it", "mode": "plan", "priority": 3 }),
        )
        .await;
    let (status, answer) = admin
        .post(&format!("/api/tasks/{}/approve", id(&plan_task)), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    // The account runs the planning by hand: claim, report the plan.
    let claimed = api
        .ok("/api/workers", json!({ "taskId": id(&plan_task) }))
        .await;
    let worker = id(&claimed["workers"][0]);
    api.move_worker(&worker, &["starting", "running"]).await;
    let steps = json!([
        { "ref": "schema", "title": "Add the schema", "description": "write schema.sql" },
        { "ref": "api", "title": "Add the API", "description": "write api.rs", "dependsOn": ["schema"] },
    ]);
    let (status, answer) = api
        .patch(
            &format!("/api/workers/{worker}"),
            json!({ "status": "completed", "result": { "text": "planned", "branch": "b", "plan": { "steps": steps } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, planned) = admin.get(&format!("/api/tasks/{}", id(&plan_task))).await;
    assert_eq!(planned["status"], "planned", "{planned}");

    for (plan, why) in [
        (
            json!({ "steps": [{ "ref": "a", "title": "A", "dependsOn": ["nope"] }] }),
            "no step of the plan",
        ),
        (
            json!({ "steps": [{ "ref": "a", "title": "A", "dependsOn": ["b"] }, { "ref": "b", "title": "B", "dependsOn": ["a"] }] }),
            "cycle",
        ),
        (
            json!({ "steps": [{ "ref": "a", "title": " " }] }),
            "title must not be empty",
        ),
        (
            json!({ "steps": (0..51).map(|i| json!({ "ref": format!("s{i}"), "title": "t" })).collect::<Vec<_>>() }),
            "at most 50",
        ),
        (json!({ "steps": [] }), "no steps"),
    ] {
        let (status, answer) = admin
            .post(
                &format!("/api/tasks/{}/approve", id(&plan_task)),
                json!({ "plan": plan }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(why),
            "{answer} should say {why}"
        );
    }
    let (_, detail) = admin.get(&format!("/api/tasks/{}", id(&plan_task))).await;
    assert_eq!(
        detail["children"],
        json!([]),
        "a refused plan makes nothing"
    );

    let approved = admin
        .ok(&format!("/api/tasks/{}/approve", id(&plan_task)), json!({}))
        .await;
    assert_eq!(approved["task"]["status"], "completed");
    let children = approved["children"].as_array().unwrap();
    assert_eq!(children.len(), 2);
    assert_eq!(children[0]["status"], "pending");
    assert_eq!(children[1]["status"], "blocked");
    assert_eq!(children[1]["dependsOn"], json!([id(&children[0])]));
    assert!(
        children
            .iter()
            .all(|c| c["parentId"] == id(&plan_task).as_str() && c["priority"] == 3)
    );
    let (status, _) = admin
        .post(&format!("/api/tasks/{}/approve", id(&plan_task)), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a second approval");
    let (_, detail) = admin.get(&format!("/api/tasks/{}", id(&plan_task))).await;
    assert_eq!(detail["children"].as_array().unwrap().len(), 2);

    // Revise and reject want a plan.
    let (status, _) = admin
        .post(
            &format!("/api/tasks/{}/revise", id(&plan_task)),
            json!({ "feedback": "more" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = admin
        .post(&format!("/api/tasks/{}/reject", id(&plan_task)), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_claims_answer_like_claims_and_refuse_clearly() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let (_, key) = admin
        .account(
            json!({ "type": "service", "name": "s", "maxConcurrentWorkers": 1 }),
            &ws,
            true,
            false,
        )
        .await;
    let (_, reader_key) = admin
        .account(json!({ "type": "service", "name": "r" }), &ws, false, false)
        .await;
    let api = server.client(&key);
    let one = admin.task(&ws, json!({ "title": "one" })).await;
    let two = admin.task(&ws, json!({ "title": "two" })).await;
    let for_users = admin
        .task(&ws, json!({ "title": "u", "runnerPreference": "user" }))
        .await;
    let blocked = admin
        .task(&ws, json!({ "title": "b", "dependsOn": [id(&one)] }))
        .await;

    let cases = [
        (
            &api,
            json!({ "taskId": "task-nope" }),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            &api,
            json!({ "taskId": id(&for_users) }),
            StatusCode::FORBIDDEN,
            "for user runners",
        ),
        (
            &api,
            json!({ "taskId": id(&blocked) }),
            StatusCode::CONFLICT,
            "blocked, not pending",
        ),
        (
            &server.client(&reader_key),
            json!({ "taskId": id(&one) }),
            StatusCode::FORBIDDEN,
            "canClaim",
        ),
        (
            &admin,
            json!({ "taskId": id(&one) }),
            StatusCode::FORBIDDEN,
            "account key",
        ),
        (&api, json!({}), StatusCode::BAD_REQUEST, "taskId"),
    ];
    for (caller, body, want, why) in cases {
        let (status, answer) = caller.post("/api/workers", body).await;
        assert_eq!(status, want, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(why),
            "{answer} should say {why}"
        );
    }
    let (status, claimed) = api
        .post("/api/workers", json!({ "taskId": id(&two) }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{claimed}");
    assert_eq!(claimed["workers"][0]["task"]["id"], id(&two).as_str());
    assert!(claimed["leaseTtlSecs"].as_f64().unwrap() > 0.0);
    let (status, answer) = api
        .post("/api/workers", json!({ "taskId": id(&one) }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("concurrent workers"),
        "{answer}"
    );
    let (status, answer) = api
        .post("/api/workers", json!({ "taskId": id(&two) }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_with_a_task_id_runs_that_task_only() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let (_, key) = admin
        .account(json!({ "type": "action", "name": "ci" }), &ws, true, false)
        .await;
    let first = admin
        .task(&ws, json!({ "title": "first", "priority": 9 }))
        .await;
    let wanted = admin.task(&ws, json!({ "title": "wanted" })).await;
    let repo = Repo::new();
    let mut agent = scripted_agent(&server.url, &key, &repo, &["--task", &id(&wanted)], &[]);
    let status = agent.exit(LONG).await;
    assert!(status.success(), "{}", agent.log());
    wait_task(&admin, &id(&wanted), "completed").await;
    let (_, untouched) = admin.get(&format!("/api/tasks/{}", id(&first))).await;
    assert_eq!(
        untouched["status"], "pending",
        "the higher-priority task was left alone"
    );
    // The same task again: it is not pending any more, and the agent says so.
    let mut again = scripted_agent(&server.url, &key, &repo, &["--task", &id(&wanted)], &[]);
    let status = again.exit(LONG).await;
    assert!(!status.success());
    assert!(again.log().contains("not pending"), "{}", again.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_workflow_input_is_refused_and_changes_nothing() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let other = admin.workspace("other").await;
    let foreign = admin.task(&other, json!({ "title": "theirs" })).await;
    let too_many: Vec<String> = (0..101).map(|i| format!("task-{i}")).collect();
    for (body, want, why) in [
        (
            json!({ "dependsOn": ["task-nope"] }),
            StatusCode::NOT_FOUND,
            "dependsOn: task \"task-nope\"",
        ),
        (
            json!({ "dependsOn": [id(&foreign)] }),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            json!({ "dependsOn": [""] }),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            json!({ "dependsOn": too_many }),
            StatusCode::BAD_REQUEST,
            "at most 100",
        ),
        (
            json!({ "baseBranch": "a..b" }),
            StatusCode::BAD_REQUEST,
            "not a valid branch name",
        ),
        (
            json!({ "mode": "dream" }),
            StatusCode::BAD_REQUEST,
            "expected `run` or `plan`",
        ),
    ] {
        let mut full = json!({ "workspaceId": ws, "title": "t" });
        full.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let (status, answer) = admin.post("/api/tasks", full).await;
        assert_eq!(status, want, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(why),
            "{answer} should say {why}"
        );
    }
    let (_, tasks) = admin.get(&format!("/api/tasks?workspaceId={ws}")).await;
    assert_eq!(tasks["tasks"], json!([]));
    let pending = admin.task(&ws, json!({ "title": "p" })).await;
    for (path, body, want) in [
        (
            "followup",
            json!({ "message": "more" }),
            StatusCode::CONFLICT,
        ),
        (
            "followup",
            json!({ "message": " " }),
            StatusCode::BAD_REQUEST,
        ),
        ("retry", json!({}), StatusCode::CONFLICT),
        ("revise", json!({ "feedback": "x" }), StatusCode::CONFLICT),
    ] {
        let (status, answer) = admin
            .post(&format!("/api/tasks/{}/{path}", id(&pending)), body)
            .await;
        assert_eq!(status, want, "{path}: {answer}");
    }
    let (status, _) = admin
        .post("/api/workers/wrk-nope/instruct", json!({ "message": "x" }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
