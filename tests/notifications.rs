//! Notifications through the real binary: a receiver on loopback gets each
//! notification signed and once, after failing twice; deliveries survive a restart;
//! two servers on one Postgres send each once.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use common::{Api, Server};

/// A webhook receiver on loopback: it keeps every request (headers and body) and
/// answers 500 to the first `failures`, then as `answer` says.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(HeaderMap, String, u16)>>>,
    failures: Arc<AtomicUsize>,
    answer: Arc<Mutex<u16>>,
}

impl Receiver {
    async fn start(failures: usize) -> Receiver {
        let receiver = Receiver {
            url: String::new(),
            got: Arc::default(),
            failures: Arc::new(AtomicUsize::new(failures)),
            answer: Arc::new(Mutex::new(200)),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, ..receiver }
    }

    /// The bodies it answered with 2xx, in order.
    fn taken(&self) -> Vec<(HeaderMap, Value)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, status)| (200..300).contains(status))
            .map(|(h, b, _)| (h.clone(), serde_json::from_str(b).unwrap()))
            .collect()
    }

    async fn until_taken(&self, n: usize) -> Vec<(HeaderMap, Value)> {
        for _ in 0..300 {
            let taken = self.taken();
            if taken.len() >= n {
                return taken;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the receiver took {} of {n}", self.taken().len());
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let status = if r
        .failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
        .is_ok()
    {
        500
    } else {
        *r.answer.lock().unwrap()
    };
    r.got.lock().unwrap().push((headers, body, status));
    StatusCode::from_u16(status).unwrap()
}

both_backends!(
    a_receiver_gets_each_notification_signed_and_once_after_failing_twice,
    webhooks_refuse_bad_input_and_are_the_admins,
);

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers.get(name).unwrap().to_str().unwrap()
}

/// Claims `task` as `agent` and reports `statuses` for its worker.
async fn run(agent: &Api, task: &str, statuses: &[&str]) -> String {
    let claimed = agent.ok("/api/workers", json!({"taskId": task})).await;
    let worker = claimed["workers"][0]["id"].as_str().unwrap().to_owned();
    agent.move_worker(&worker, statuses).await;
    worker
}

async fn a_receiver_gets_each_notification_signed_and_once_after_failing_twice(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    let (_, key) = admin
        .account(json!({"type": "service", "name": "vm"}), &ws, true, true)
        .await;
    let agent = server.client(&key);
    let receiver = Receiver::start(2).await;
    let hook = admin
        .ok(
            "/api/webhooks",
            json!({"url": receiver.url, "secret": "s3cret", "workspaceId": ws,
                   "events": ["task.running", "task.waiting_input", "task.completed"]}),
        )
        .await;
    assert_eq!(hook["hasSecret"], true);
    assert!(hook.get("secret").is_none(), "{hook}");
    let hook_id = hook["id"].as_str().unwrap().to_owned();

    let task = admin
        .task(&ws, json!({"title": "Fix the login test"}))
        .await;
    let task = task["id"].as_str().unwrap().to_owned();
    let worker = run(&agent, &task, &["starting", "running"]).await;
    // A progress line changes the task, not its status: no second `running`.
    agent
        .patch(
            &format!("/api/workers/{worker}"),
            json!({"progress": "halfway"}),
        )
        .await;
    agent.move_worker(&worker, &["waiting_input"]).await;
    admin
        .ok(
            &format!("/api/tasks/{task}/reply"),
            json!({"message": "main"}),
        )
        .await;
    agent.move_worker(&worker, &["running", "completed"]).await;

    // running, waiting_input, running again (after the answer: same attempt, so
    // already told), completed.
    let taken = receiver.until_taken(3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let taken_then = receiver.taken();
    assert_eq!(taken_then.len(), 3, "no more than one of each");
    // Each delivery on its own: the first, retried, comes after the others.
    let mut events: Vec<&str> = taken
        .iter()
        .map(|(_, b)| b["event"].as_str().unwrap())
        .collect();
    events.sort();
    assert_eq!(
        events,
        ["task.completed", "task.running", "task.waiting_input"]
    );
    for (headers, body) in &taken {
        assert_eq!(body["task"]["id"], task.as_str());
        assert_eq!(body["text"], body["content"]);
        assert!(
            body["text"]
                .as_str()
                .unwrap()
                .contains("Fix the login test")
        );
        assert_eq!(header(headers, "x-buildd-event"), body["event"]);
        assert_eq!(header(headers, "x-buildd-delivery"), body["deliveryId"]);
        assert_eq!(header(headers, "content-type"), "application/json");
    }
    // Signed with the secret, over the body as sent.
    for (headers, body, _) in receiver.got.lock().unwrap().iter() {
        assert_eq!(
            header(headers, "x-buildd-signature-256"),
            buildd::core::keys::signature("s3cret", body.as_bytes())
        );
    }
    // Two tries were refused, and tried again under the same delivery id: every
    // delivery was taken once, after as many tries as the server counted.
    let all = receiver.got.lock().unwrap().clone();
    assert_eq!(all.len(), 5, "two refusals and three deliveries");
    let (_, listed) = admin
        .get(&format!("/api/webhooks/{hook_id}/deliveries"))
        .await;
    let deliveries = listed["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 3, "{listed}");
    for delivery in deliveries {
        let id = delivery["id"].as_str().unwrap();
        let tries: Vec<u16> = all
            .iter()
            .filter(|(h, _, _)| header(h, "x-buildd-delivery") == id)
            .map(|(_, _, status)| *status)
            .collect();
        assert_eq!(
            tries.iter().filter(|s| **s == 200).count(),
            1,
            "{id}: {tries:?}"
        );
        assert_eq!(tries.last(), Some(&200));
        assert_eq!(delivery["attempts"], tries.len(), "{delivery}");
        assert_eq!(delivery["state"], "delivered");
        assert_eq!(delivery["lastStatus"], 200);
    }
    // A task of another workspace is not this webhook's.
    let other = admin.workspace("gadgets").await;
    let elsewhere = admin.task(&other, json!({"title": "Elsewhere"})).await;
    admin
        .post(
            &format!("/api/tasks/{}/cancel", elsewhere["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.taken().len(), 3);
    let (status, _) = admin
        .call(
            reqwest::Method::DELETE,
            &format!("/api/webhooks/{hook_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = admin
        .get(&format!("/api/webhooks/{hook_id}/deliveries"))
        .await;
    assert_eq!(status, 404);
}

async fn webhooks_refuse_bad_input_and_are_the_admins(server: Server) {
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    let (_, key) = admin
        .account(json!({"type": "user", "name": "me"}), &ws, true, true)
        .await;
    for (body, status, says) in [
        (
            json!({"url": "ftp://x.example.com", "events": ["task.failed"]}),
            400,
            "http://",
        ),
        (
            json!({"url": "https://x.example.com", "events": []}),
            400,
            "at least one",
        ),
        (
            json!({"url": "https://x.example.com", "events": ["task.exploded"]}),
            400,
            "unknown",
        ),
        (
            json!({"url": "https://x.example.com", "events": ["task.failed"], "secret": " "}),
            400,
            "secret",
        ),
        (
            json!({"url": "https://x.example.com", "events": ["task.failed"], "workspaceId": "ws-nope"}),
            404,
            "ws-nope",
        ),
    ] {
        let (code, answer) = admin.post("/api/webhooks", body.clone()).await;
        assert_eq!(code, status, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    let (code, _) = server
        .client(&key)
        .post(
            "/api/webhooks",
            json!({"url": "https://x.example.com", "events": ["task.failed"]}),
        )
        .await;
    assert_eq!(code, 403);
    let (code, _) = server.client(&key).get("/api/webhooks").await;
    assert_eq!(code, 403);
    let (_, list) = admin.get("/api/webhooks").await;
    assert_eq!(list["webhooks"], json!([]));
}

/// A delivery is stored before it is sent: one whose receiver was down when its
/// server was killed goes out after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_survives_a_server_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", tmp.path().join("buildd.db").display());
    let mut server = Server::start(&db, tmp.path(), &[]);
    let admin = server.admin();
    let ws = admin.workspace("widgets").await;
    let receiver = Receiver::start(0).await;
    *receiver.answer.lock().unwrap() = 503;
    let webhook = admin
        .ok(
            "/api/webhooks",
            json!({"url": receiver.url, "events": ["task.cancelled"]}),
        )
        .await;
    let webhook = webhook["id"].as_str().unwrap().to_owned();
    let task = admin.task(&ws, json!({"title": "Cancel me"})).await;
    let task = task["id"].as_str().unwrap().to_owned();
    admin
        .ok(&format!("/api/tasks/{task}/cancel"), json!({}))
        .await;
    // Tried while the receiver was down, and that try recorded: a server killed
    // between sending and recording leaves the delivery to its lease (a minute), which
    // is right but longer than this test waits.
    let mut recorded = false;
    for _ in 0..100 {
        let (_, list) = admin
            .get(&format!("/api/webhooks/{webhook}/deliveries"))
            .await;
        recorded = list["deliveries"][0]["lastStatus"] == 503;
        if recorded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recorded, "tried while the receiver was down");
    let listen = server.url.trim_start_matches("http://").to_owned();
    // Dropping a server kills it (SIGKILL): nothing is flushed on the way out.
    drop(server);
    *receiver.answer.lock().unwrap() = 200;
    server = Server::start_on(&listen, &db, tmp.path(), &[]);
    let taken = receiver.until_taken(1).await;
    assert_eq!(taken[0].1["event"], "task.cancelled");
    assert_eq!(taken[0].1["task"]["id"], task.as_str());
    drop(server);
}

/// Two servers on one Postgres: every notification reaches the receiver once.
#[tokio::test(flavor = "multi_thread")]
async fn two_servers_on_one_postgres_send_each_notification_once() {
    let Some(url) = common::pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(&url, dir.path(), &[]);
    let second = Server::start(&url, dir.path(), &[]);
    let admin = first.admin();
    let ws = admin.workspace("widgets").await;
    let receiver = Receiver::start(0).await;
    second
        .admin()
        .ok(
            "/api/webhooks",
            json!({"url": receiver.url, "events": ["task.created", "task.cancelled"]}),
        )
        .await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let through = if i % 2 == 0 { &first } else { &second };
        let task = through
            .admin()
            .task(&ws, json!({"title": format!("Task {i}")}))
            .await;
        let id = task["id"].as_str().unwrap().to_owned();
        through
            .admin()
            .ok(&format!("/api/tasks/{id}/cancel"), json!({}))
            .await;
        tasks.push(id);
    }
    let taken = receiver.until_taken(20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let taken_then = receiver.taken();
    assert_eq!(taken_then.len(), 20, "each once");
    for id in &tasks {
        for event in ["task.created", "task.cancelled"] {
            let n = taken
                .iter()
                .filter(|(_, b)| b["task"]["id"] == id.as_str() && b["event"] == event)
                .count();
            assert_eq!(n, 1, "{id} {event}");
        }
    }
}
