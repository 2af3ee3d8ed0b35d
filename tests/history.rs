//! The whole history through the real binary, on both backends: cursor pages with
//! tasks inserted meanwhile, search, exact counts and usage.

mod common;

use std::collections::HashSet;

use futures::StreamExt;
use futures::stream;
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{Api, Server};

const TASKS: usize = 5_000;

fn ids(list: &Value, field: &str) -> Vec<String> {
    list[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {list}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Creates `n` tasks in `ws`, eight at a time, titled `{prefix} {i}`.
async fn create_tasks(admin: &Api, ws: &str, prefix: &str, n: usize) -> Vec<String> {
    stream::iter(0..n)
        .map(|i| {
            let admin = admin.clone();
            let title = format!("{prefix} {i}");
            async move {
                admin.task(ws, json!({ "title": title })).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// Every page of `path` (which has a query string), following `nextCursor`.
async fn every_page(api: &Api, path: &str, field: &str) -> (Vec<String>, usize) {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_owned(),
        };
        let (status, page) = api.get(&url).await;
        assert_eq!(status, StatusCode::OK, "{url}: {page}");
        pages += 1;
        seen.extend(ids(&page, field));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (seen, pages),
        }
    }
}

async fn pages_counts_and_search(server: &Server) {
    let admin = server.admin();
    let ws = admin.workspace("history").await;
    let other = admin.workspace("other").await;
    let before: HashSet<String> = create_tasks(&admin, &ws, "seeded", TASKS)
        .await
        .into_iter()
        .collect();

    // Page through the workspace with tasks being added meanwhile: every task that
    // existed before the first page is seen exactly once, newest first.
    let inserting = {
        let admin = admin.clone();
        let ws = ws.clone();
        tokio::spawn(async move { create_tasks(&admin, &ws, "added", 300).await })
    };
    let (seen, pages) = every_page(
        &admin,
        &format!("/api/tasks?workspaceId={ws}&limit=97"),
        "tasks",
    )
    .await;
    let added: HashSet<String> = inserting.await.unwrap().into_iter().collect();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a task was given twice");
    let missing = before.iter().filter(|id| !unique.contains(id)).count();
    assert_eq!(missing, 0, "{missing} tasks that existed were never given");
    assert!(
        seen.iter()
            .all(|id| before.contains(id) || added.contains(id)),
        "a task of another list"
    );
    assert!(pages >= TASKS / 97, "{pages} pages");

    // The order is newest first and the last page has no cursor.
    let (_, first) = admin
        .get(&format!("/api/tasks?workspaceId={ws}&limit=1000"))
        .await;
    let times: Vec<chrono::DateTime<chrono::Utc>> = first["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["createdAt"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "not newest first");
    let (_, empty) = admin.get(&format!("/api/tasks?workspaceId={other}")).await;
    assert_eq!(empty, json!({ "tasks": [], "nextCursor": null }));

    // Counts are exact, per workspace and over all, and match the rows listed.
    let total = before.len() + added.len();
    let (_, counts) = admin
        .get(&format!("/api/tasks/counts?workspaceId={ws}"))
        .await;
    assert_eq!(counts["total"], total, "{counts}");
    let pending = counts["byStatus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "pending")
        .unwrap();
    assert_eq!(pending["count"], total);
    assert_eq!(
        counts["byStatus"].as_array().unwrap().len(),
        9,
        "every status is named"
    );
    admin.task(&other, json!({ "title": "elsewhere" })).await;
    let (_, all) = admin.get("/api/tasks/counts").await;
    assert_eq!(all["total"], total + 1);
    let (listed, _) = every_page(
        &admin,
        &format!("/api/tasks?workspaceId={ws}&status=pending&limit=1000"),
        "tasks",
    )
    .await;
    assert_eq!(listed.len(), total, "counts match the rows listed");

    // Search: title or description, any case, wildcards taken literally.
    let needle = admin
        .task(
            &ws,
            json!({ "title": "Fix the LOGIN page", "description": "users see 100%_blank" }),
        )
        .await;
    let by_desc = admin
        .task(
            &ws,
            json!({ "title": "other", "description": "the login FORM" }),
        )
        .await;
    let (_, found) = admin
        .get(&format!("/api/tasks?workspaceId={ws}&q=login"))
        .await;
    let found = ids(&found, "tasks");
    assert_eq!(
        found,
        vec![
            by_desc["id"].as_str().unwrap(),
            needle["id"].as_str().unwrap()
        ]
    );
    let (_, literal) = admin.get(&format!("/api/tasks?q={}", "100%25_")).await;
    assert_eq!(ids(&literal, "tasks"), vec![needle["id"].as_str().unwrap()]);
    let (_, none) = admin.get("/api/tasks?q=seeded%20999999").await;
    assert_eq!(ids(&none, "tasks"), Vec::<String>::new());
    let (searched, _) = every_page(
        &admin,
        &format!("/api/tasks?workspaceId={ws}&q=seeded%2042&limit=3"),
        "tasks",
    )
    .await;
    // "seeded 42", "seeded 420" … "seeded 4299": 1 + 10 + 100 titles.
    assert_eq!(searched.len(), 1 + 10 + 100);

    // An account sees the counts and lists of its own workspaces only.
    let (_, key) = admin
        .account(
            json!({ "type": "service", "name": "viewer" }),
            &other,
            true,
            false,
        )
        .await;
    let viewer = server.client(&key);
    let (_, mine) = viewer.get("/api/tasks/counts").await;
    assert_eq!(mine["total"], 1, "{mine}");
    let (status, _) = viewer
        .get(&format!("/api/tasks/counts?workspaceId={ws}"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A cursor the server did not give out, or a bad limit, is a 400.
    for bad in [
        "/api/tasks?cursor=nope",
        "/api/tasks?limit=0",
        "/api/workers?cursor=%00",
        "/api/accounts?limit=1001",
    ] {
        let (status, body) = admin.get(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].as_str().is_some(), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_counts_and_search_on_sqlite() {
    pages_counts_and_search(&Server::sqlite(&[])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_counts_and_search_on_postgres() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    pages_counts_and_search(&Server::start(&url, dir.path(), &[])).await;
}

/// Workers, messages, comments and accounts page the same way; usage is the server's
/// exact count.
#[tokio::test(flavor = "multi_thread")]
async fn every_list_pages_and_usage_is_exact() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, account, key) = admin.workspace_with_claimer().await;
    let agent = server.client(&key);
    create_tasks(&admin, &ws, "t", 7).await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(agent.claim_one().await);
    }
    let (seen, pages) = every_page(&admin, "/api/workers?limit=2", "workers").await;
    assert_eq!((seen.len(), pages), (3, 2));
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 3);

    let messages: Vec<Value> = (0..25).map(|i| json!({ "type": "text", "n": i })).collect();
    agent
        .ok(
            &format!("/api/workers/{}/messages", workers[0]),
            json!({ "messages": messages }),
        )
        .await;
    let mut cursor: Option<String> = None;
    let mut numbers = Vec::new();
    loop {
        let path = format!(
            "/api/workers/{}/messages?limit=10{}",
            workers[0],
            cursor
                .as_ref()
                .map(|c| format!("&cursor={c}"))
                .unwrap_or_default()
        );
        let (_, page) = admin.get(&path).await;
        numbers.extend(
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["message"]["n"].as_i64().unwrap()),
        );
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(numbers, (0..25).collect::<Vec<_>>());

    let (_, task) = admin.get(&format!("/api/workers/{}", workers[0])).await;
    let task_id = task["taskId"].as_str().unwrap();
    for i in 0..5 {
        admin
            .ok(
                &format!("/api/tasks/{task_id}/comments"),
                json!({ "body": format!("note {i}") }),
            )
            .await;
    }
    let (_, first) = admin
        .get(&format!("/api/tasks/{task_id}/comments?limit=3"))
        .await;
    let cursor = first["nextCursor"].as_str().unwrap();
    let (_, rest) = admin
        .get(&format!(
            "/api/tasks/{task_id}/comments?limit=3&cursor={cursor}"
        ))
        .await;
    let bodies: Vec<&str> = first["comments"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["comments"].as_array().unwrap())
        .map(|c| c["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["note 0", "note 1", "note 2", "note 3", "note 4"]);
    assert_eq!(rest["nextCursor"], Value::Null);

    for i in 0..4 {
        admin
            .ok(
                "/api/accounts",
                json!({ "type": "user", "name": format!("u{i}") }),
            )
            .await;
    }
    let (accounts, _) = every_page(&admin, "/api/accounts?limit=2", "accounts").await;
    assert_eq!(accounts.len(), 5);
    assert_eq!(accounts[0], account, "oldest first");

    // Usage: three workers hold slots; reported costs add up exactly.
    for (worker, cost) in workers.iter().zip([0.25, 0.5, 1.125]) {
        agent.move_worker(worker, &["starting", "running"]).await;
        let (status, _) = agent
            .patch(
                &format!("/api/workers/{worker}"),
                json!({ "costUsd": cost }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    agent.move_worker(&workers[2], &["completed"]).await;
    let (_, usage) = agent.get(&format!("/api/accounts/{account}/usage")).await;
    assert_eq!(usage["activeWorkers"], 2, "{usage}");
    assert_eq!(usage["costToday"], 1.875, "{usage}");
    assert_eq!(usage["maxConcurrentWorkers"], 3);
    let (_, by_admin) = admin.get(&format!("/api/accounts/{account}/usage")).await;
    assert_eq!(by_admin, usage);
    let (status, _) = server
        .client(&key)
        .get("/api/accounts/acc-someone-else/usage")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// The terminal: `task list` pages (`--all`) and searches; `task logs --follow` shows
/// each message once as it comes, and ends when the task does.
#[tokio::test(flavor = "multi_thread")]
async fn the_terminal_lists_every_page_and_follows_logs() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let (ws, _, key) = admin.workspace_with_claimer().await;
    create_tasks(&admin, &ws, "listed", 250).await;
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_buildd"))
            .args(args)
            .args(["--server", &server.url, "--api-key", common::ADMIN])
            .output()
            .unwrap()
    };
    let all = cli(&["task", "list", "--workspace", &ws, "--all", "--json"]);
    let all: Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 250);
    let newest = cli(&["task", "list", "--workspace", &ws]);
    let table = String::from_utf8_lossy(&newest.stdout);
    assert_eq!(
        table.lines().count(),
        1 + 100,
        "a header and the newest 100"
    );
    assert!(String::from_utf8_lossy(&newest.stderr).contains("--all"));
    let found = cli(&["task", "list", "--search", "LISTED 249", "--json"]);
    let found: Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");

    let agent = server.client(&key);
    let worker = agent.claim_one().await;
    agent.move_worker(&worker, &["starting", "running"]).await;
    let (_, w) = admin.get(&format!("/api/workers/{worker}")).await;
    let task = w["taskId"].as_str().unwrap().to_owned();
    let say = |text: &str| json!({"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}});
    agent
        .ok(
            &format!("/api/workers/{worker}/messages"),
            json!({ "messages": [say("first words")] }),
        )
        .await;
    let mut follow = Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args(["task", "logs", &task, "--follow"])
        .args(["--server", &server.url, "--api-key", common::ADMIN])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |text: &str| {
        while !seen.iter().any(|l: &String| l.contains(text)) {
            let line = lines
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("{text:?} never came; saw {seen:?}"));
            seen.push(line);
        }
    };
    wait_for("first words");
    agent
        .ok(
            &format!("/api/workers/{worker}/messages"),
            json!({ "messages": [say("then more")] }),
        )
        .await;
    wait_for("then more");
    let result =
        json!({"type": "result", "subtype": "success", "num_turns": 2, "total_cost_usd": 0.25});
    agent
        .ok(
            &format!("/api/workers/{worker}/messages"),
            json!({ "messages": [result] }),
        )
        .await;
    agent.move_worker(&worker, &["completed"]).await;
    wait_for("■ success · 2 turns · $0.2500");
    let status = follow.wait().unwrap();
    assert!(status.success(), "logs --follow ends with the task");
    for line in lines.try_iter() {
        seen.push(line);
    }
    for text in ["first words", "then more"] {
        assert_eq!(
            seen.iter().filter(|l| l.contains(text)).count(),
            1,
            "{text} once: {seen:?}"
        );
    }
    assert!(seen[0].starts_with("── wrk-"), "{seen:?}");
}
