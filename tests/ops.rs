//! What operators rely on: `/readyz`, `/metrics`, JSON logs, key rotation and the
//! per-caller bound on event streams.

mod common;

use std::time::Duration;

use common::{ADMIN, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The value of the sample `name` (with its labels, as printed) in a metrics text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn metrics(server: &Server) -> String {
    let response = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("application/openmetrics-text"));
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_tasks_claims_streams_and_lease_expiries() {
    let server = Server::sqlite(&["--lease-ttl", "1"]);
    let admin = server.admin();
    let (ws, _, key) = admin.workspace_with_claimer().await;
    let agent = server.client(&key);

    let (status, _) = server.client("").get("/metrics").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = agent.get("/metrics").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    for _ in 0..3 {
        admin.task(&ws, json!({})).await;
    }
    let kept = agent.claim_one().await;
    let lost = agent.claim_one().await;
    let (_stream_status, _stream) = agent.events("", None).await;

    let text = metrics(&server).await;
    assert_eq!(sample(&text, "buildd_tasks{status=\"pending\"}"), 1.0);
    assert_eq!(sample(&text, "buildd_tasks{status=\"assigned\"}"), 2.0);
    assert_eq!(sample(&text, "buildd_tasks{status=\"completed\"}"), 0.0);
    assert_eq!(sample(&text, "buildd_active_workers"), 2.0);
    assert_eq!(sample(&text, "buildd_claims_total"), 2.0);
    assert_eq!(sample(&text, "buildd_claim_duration_seconds_count"), 2.0);
    assert_eq!(
        sample(&text, "buildd_claim_duration_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    assert_eq!(sample(&text, "buildd_sse_subscribers"), 1.0);
    assert_eq!(sample(&text, "buildd_lease_expiries_total"), 0.0);

    // One worker keeps heartbeating; the other goes silent and loses its lease.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        agent
            .ok(&format!("/api/workers/{kept}/heartbeat"), json!({}))
            .await;
        let text = metrics(&server).await;
        if sample(&text, "buildd_lease_expiries_total") >= 1.0 {
            assert_eq!(sample(&text, "buildd_lease_expiries_total"), 1.0);
            assert_eq!(sample(&text, "buildd_tasks{status=\"pending\"}"), 2.0);
            assert_eq!(sample(&text, "buildd_active_workers"), 1.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker {lost} never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn readyz_follows_the_database() {
    let server = Server::sqlite(&[]);
    let (status, body) = server.client("").get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ready"}));

    let Some(url) = common::pg_database().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&url, tmp.path(), &[]);
    let (status, _) = server.client("").get("/readyz").await;
    assert_eq!(status, StatusCode::OK);

    // The database goes away under the running server.
    use sqlx::Connection;
    let base = common::pg_base_url().unwrap();
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    let name = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let (status, body) = server.client("").get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("database"));
    let (status, _) = server.client("").get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "the process itself is alive");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let server = Server::sqlite(&["--log-format", "json"]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    admin
        .account(json!({"type": "user", "name": "u"}), &ws, true, true)
        .await;
    let log = server.log.lock().unwrap().clone();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        assert!(line["timestamp"].is_string() && line["level"].is_string());
    }
    let created = lines
        .iter()
        .find(|l| l["message"] == "account created")
        .expect("the account creation is logged");
    assert!(created["account"].as_str().unwrap().starts_with("acc-"));
    assert_eq!(created["account_type"], "user");
    // It happened inside the request's span, which names the request.
    let span = &created["span"];
    assert_eq!(span["name"], "request", "{created}");
    assert_eq!(span["method"], "POST");
    assert_eq!(span["route"], "/api/accounts");
    assert_eq!(span["request_id"].as_str().unwrap().len(), 16);

    // A caller's request id is kept and sent back; without one, a new one is made.
    let http = reqwest::Client::new();
    let answer = http
        .get(format!("{}/healthz", server.url))
        .header("x-request-id", "from-the-proxy-42")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["x-request-id"], "from-the-proxy-42");
    let answer = http
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["x-request-id"].len(), 16);
}

#[tokio::test]
async fn a_rotated_key_stops_at_once_and_its_streams_end() {
    let server = Server::sqlite(&[]);
    let admin = server.admin();
    let ws = admin.workspace("w").await;
    let (id, old_key) = admin
        .account(json!({"type": "service", "name": "s"}), &ws, true, false)
        .await;
    let (other_id, other_key) = admin
        .account(json!({"type": "service", "name": "t"}), &ws, true, false)
        .await;
    let old = server.client(&old_key);
    let (status, mut stream) = old.events("", None).await;
    assert_eq!(status, StatusCode::OK);

    // Another account may not rotate this one's key.
    let (status, _) = server
        .client(&other_key)
        .post(&format!("/api/accounts/{id}/rotate-key"), json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = admin
        .post("/api/accounts/acc-nonexistent/rotate-key", json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The account rotates its own key.
    let rotated = old
        .ok(&format!("/api/accounts/{id}/rotate-key"), json!({}))
        .await;
    assert_eq!(rotated["id"], id.as_str());
    let new_key = rotated["apiKey"].as_str().unwrap();
    assert!(new_key.starts_with("buildd_service_") && new_key != old_key);

    let (status, body) = old.get("/api/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        stream.ends_within(Duration::from_secs(5)).await,
        "the old key's event stream stayed open"
    );
    let (status, _) = old.events("", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, me) = server.client(new_key).get("/api/me").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["id"], id.as_str());

    // The admin rotates another account's key.
    let rotated = admin
        .ok(&format!("/api/accounts/{other_id}/rotate-key"), json!({}))
        .await;
    let (status, _) = server.client(&other_key).get("/api/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .client(rotated["apiKey"].as_str().unwrap())
        .get("/api/me")
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// One caller's streams are bounded per server (`--max-streams-per-caller`): past the
/// bound a stream is refused with 429 naming the flag; other callers are not counted
/// against it, and a closed stream frees its slot.
#[tokio::test]
async fn event_streams_per_caller_are_bounded() {
    let server = Server::sqlite(&["--max-streams-per-caller", "3"]);
    let admin = server.admin();
    let (_, _, key) = admin.workspace_with_claimer().await;
    let agent = server.client(&key);

    let mut open = Vec::new();
    for _ in 0..3 {
        let (status, stream) = agent.events("", None).await;
        assert_eq!(status, StatusCode::OK);
        open.push(stream);
    }
    let refused = agent
        .http
        .get(format!("{}/api/events", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = refused.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("3 event streams") && error.contains("--max-streams-per-caller"),
        "{error}"
    );
    // Other callers are not affected.
    let (status, _admin_stream) = admin.events("", None).await;
    assert_eq!(status, StatusCode::OK);

    // Closing one frees its slot.
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _stream) = agent.events("", None).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
