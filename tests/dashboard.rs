//! The web dashboard, served by the real binary, in real headless Chromium (Debian's
//! `chromium`, driven by playwright-core: `tests/browser/dashboard.mjs`). Screenshots
//! of the main views land in `target/dashboard-screenshots/`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use common::Server;

/// Chromium and playwright-core, installed on first use: Chromium from Debian's
/// packages (when the tests run as root, as CI does), playwright-core from npm.
fn browser_tools() -> (PathBuf, PathBuf) {
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if !chromium.exists() {
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "the dashboard tests need Chromium: apt-get install chromium (or set CHROMIUM)"
        );
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .expect("apt-get");
        assert!(status.success(), "apt-get install chromium failed");
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    common::npm_ci(&dir, "playwright-core");
    (chromium, dir.join("dashboard.mjs"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_works_in_a_real_browser() {
    let (chromium, script) = browser_tools();
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", tmp.path().join("buildd.db").display());
    let mut server = Server::start(&db, tmp.path(), &[]);
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    let (_, key) = admin
        .account(
            json!({"type": "user", "name": "laptop", "maxCostPerDay": 20}),
            &ws,
            true,
            true,
        )
        .await;
    let agent = server.client(&key);
    // Older than everything below: the list shows the newest 100 first.
    for i in 0..120 {
        admin
            .task(
                &ws,
                json!({"title": format!("Bulk task {i}"), "priority": -1}),
            )
            .await;
    }

    // A task waiting for an answer, with some output.
    let waiting = admin
        .task(&ws, json!({"title": "Pick a branch", "priority": 10}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let worker = agent.claim_one().await;
    agent.move_worker(&worker, &["starting", "running"]).await;
    agent
        .ok(
            &format!("/api/workers/{worker}/messages"),
            json!({"messages": [
                {"type": "system", "subtype": "init", "session_id": "s-1"},
                {"type": "assistant", "message": {"content": [{"type": "text", "text": "Looking at the repository"}]}}
            ]}),
        )
        .await;
    // What its run said of itself through buildd's MCP tools (the same update).
    let (status, _) = agent
        .patch(
            &format!("/api/workers/{worker}"),
            json!({"progress": "Reading the branches", "artifacts": [
                {"kind": "link", "value": "https://ci.example.com/runs/7"},
                {"kind": "file", "value": "docs/branches.md"}]}),
        )
        .await;
    assert!(status.is_success());
    let (status, _) = agent
        .patch(
            &format!("/api/workers/{worker}"),
            json!({"status": "waiting_input", "question": "Which branch?", "costUsd": 0.42}),
        )
        .await;
    assert!(status.is_success());
    let to_cancel = admin
        .task(&ws, json!({"title": "Fix the login page"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let xss = admin
        .task(
            &ws,
            json!({"title": "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A plan waiting for approval, and a task blocked on another.
    let plan_task = admin
        .task(
            &ws,
            json!({"title": "Plan the search feature", "mode": "plan"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let claimed = agent.ok("/api/workers", json!({"taskId": plan_task})).await;
    let plan_worker = claimed["workers"][0]["id"].as_str().unwrap().to_owned();
    agent
        .move_worker(&plan_worker, &["starting", "running"])
        .await;
    let plan = json!({"steps": [
        {"ref": "index", "title": "Build the search index", "description": "Index titles."},
        {"ref": "ui", "title": "Add the search box", "dependsOn": ["index"]},
    ]});
    let (status, _) = agent
        .patch(
            &format!("/api/workers/{plan_worker}"),
            json!({"status": "completed", "result": {"text": "Two steps.", "branch": "b", "plan": plan}}),
        )
        .await;
    assert!(status.is_success());
    let blocked = admin
        .task(
            &ws,
            json!({"title": "After the login fix", "dependsOn": [to_cancel]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A finished run with its recorded change, to review from the page.
    let reviewed = admin.task(&ws, json!({"title": "Tidy the app"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let claimed = agent.ok("/api/workers", json!({"taskId": reviewed})).await;
    let review_worker = claimed["workers"][0]["id"].as_str().unwrap().to_owned();
    agent
        .move_worker(&review_worker, &["starting", "running"])
        .await;
    let patch = "diff --git a/src/app.js b/src/app.js\nindex 1111111..2222222 100644\n\
                 --- a/src/app.js\n+++ b/src/app.js\n@@ -1,3 +1,4 @@\n const a = 1;\n\
                 -const b = 2;\n+const b = 3;\n+const c = 4;\n export { a };\n";
    let (status, diff) = agent
        .call(
            reqwest::Method::PUT,
            &format!("/api/workers/{review_worker}/diff"),
            Some(
                json!({"baseSha": "1111111", "headSha": "2222222", "patch": patch,
                        "files": [{"path": "src/app.js", "added": 2, "removed": 1}]}),
            ),
        )
        .await;
    assert!(status.is_success(), "{diff}");
    agent.move_worker(&review_worker, &["completed"]).await;

    // A schedule, to be seen and paused from the page.
    let schedule = admin
        .ok(
            "/api/schedules",
            json!({"workspaceId": ws, "cron": "0 9 * * 1-5", "timezone": "Europe/Paris",
                   "task": {"title": "Weekday standup notes"}}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("dashboard-screenshots");
    let mut node = Command::new("node")
        .arg(&script)
        .env("SERVER", &server.url)
        .env("TOKEN", common::ADMIN)
        .env("ACCOUNT_KEY", &key)
        .env("WORKSPACE", &ws)
        .env("TASK_CANCEL", &to_cancel)
        .env("TASK_WAITING", &waiting)
        .env("WORKER_WAITING", &worker)
        .env("TASK_XSS", &xss)
        .env("TASK_PLAN", &plan_task)
        .env("TASK_BLOCKED", &blocked)
        .env("TASK_REVIEWED", &reviewed)
        .env("SCHEDULE", &schedule)
        .env("TASKS", "126")
        .env("CHROMIUM", &chromium)
        .env("OUT", &out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs the browser script");
    let mut to_node = node.stdin.take().unwrap();
    let from_node = BufReader::new(node.stdout.take().unwrap());
    let mut page_weight = None;
    let mut ok = false;
    for line in from_node.lines().map_while(Result::ok) {
        println!("[browser] {line}");
        if let Some(bytes) = line.strip_prefix("PAGE_WEIGHT ") {
            page_weight = bytes.trim().parse::<f64>().ok();
        } else if line == "RESTART" {
            let listen = server.url.trim_start_matches("http://").to_owned();
            drop(server);
            server = Server::start_on(&listen, &db, tmp.path(), &[]);
            writeln!(to_node, "RESTARTED").unwrap();
        } else if line == "OK" {
            ok = true;
        }
    }
    let status = node.wait().unwrap();
    assert!(
        status.success() && ok,
        "the browser script failed (see its output above)"
    );

    let weight = page_weight.expect("the script measured the first load");
    println!(
        "dashboard first load: {:.1} KiB transferred",
        weight / 1024.0
    );
    assert!(
        weight < 200.0 * 1024.0,
        "first load {weight} bytes is over 200 KiB"
    );
    for shot in [
        "sign-in",
        "tasks",
        "task-waiting",
        "task-plan",
        "accounts",
        "review",
        "schedules",
        "phone",
    ] {
        assert!(out.join(format!("{shot}.png")).exists(), "{shot}.png");
    }

    // What the page did reached the server.
    let admin = server.admin();
    let (_, t) = admin.get(&format!("/api/tasks/{to_cancel}")).await;
    assert_eq!(t["status"], "cancelled");
    let agent = server.client(&key);
    let (_, beat) = agent
        .post(&format!("/api/workers/{worker}/heartbeat"), json!({}))
        .await;
    assert_eq!(beat["reply"], "use main", "{beat}");
    assert_eq!(
        beat["instructions"],
        json!(["also update the docs"]),
        "{beat}"
    );
    let (_, made) = admin.get("/api/tasks?limit=1000").await;
    let made = made["tasks"].as_array().unwrap();
    let browser_task = made
        .iter()
        .find(|t| t["title"] == "Made in the browser")
        .expect("the form created its task");
    assert_eq!(browser_task["description"], "Line one\nLine two");

    // The plan was approved from the page, the instruction sent, the follow-up made.
    let (_, planned) = admin.get(&format!("/api/tasks/{plan_task}")).await;
    assert_eq!(planned["status"], "completed");
    assert_eq!(
        planned["children"].as_array().unwrap().len(),
        2,
        "{planned}"
    );
    let followup = made
        .iter()
        .find(|t| t["parentId"] == to_cancel.as_str())
        .expect("the follow-up box created a task");
    assert_eq!(followup["description"], "Try again with the new layout");
    // The review sent from the page became a follow-up carrying its comment.
    let review_followup = made
        .iter()
        .find(|t| t["parentId"] == reviewed.as_str())
        .expect("the review created a follow-up");
    let prompt = review_followup["description"].as_str().unwrap();
    assert!(
        prompt.contains("src/app.js:3: Why a new constant?")
            && prompt.contains("Overall: Keep it small."),
        "{prompt}"
    );
    let (_, comments) = admin.get(&format!("/api/tasks/{reviewed}/comments")).await;
    assert!(
        comments["comments"][0]["body"]
            .as_str()
            .unwrap()
            .contains("src/app.js:3")
    );
    // The schedule was paused from the page.
    let (_, paused) = admin.get(&format!("/api/schedules/{schedule}")).await;
    assert_eq!(paused["paused"], true, "{paused}");
    // The blocked task failed when the task it waited for was cancelled.
    let (_, failed) = admin.get(&format!("/api/tasks/{blocked}")).await;
    assert_eq!(failed["status"], "failed", "{failed}");
}
