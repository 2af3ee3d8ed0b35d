//! Tool-call latency over `/mcp` beside the same call over the REST API: `get_task`
//! against `GET /api/tasks/:id` (and against the three requests that read what it
//! answers: the task, its workers, its artifacts), `create_task` against
//! `POST /api/tasks`, one call at a time from one client, on the real release binary
//! (SQLite, and Postgres when `BUILDD_TEST_DATABASE_URL` is set).
//!
//! `cargo bench --bench mcp` — prints p50 and p99 of each. The MCP client is the
//! official Rust SDK's (Streamable HTTP), as `buildd mcp` uses it; the REST client is
//! reqwest. `BUILDD_BENCH_CALLS` sets the calls per row (default 2000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use common::{ADMIN, Server};

fn main() {
    let calls: usize = common::env_or("BUILDD_BENCH_CALLS", 2000);
    common::block_on(async {
        println!("MCP tool calls against the REST API: {calls} calls per row, one at a time");
        let server = Server::sqlite(&[]);
        report("sqlite", &server, calls).await;
        drop(server);
        match common::pg_database().await {
            None => println!("postgres: skipped (BUILDD_TEST_DATABASE_URL is not set)"),
            Some(url) => {
                let dir = tempfile::tempdir().unwrap();
                let server = Server::start(&url, dir.path(), &[]);
                report("postgres", &server, calls).await;
            }
        }
    });
}

async fn report(backend: &str, server: &Server, calls: usize) {
    let admin = server.admin();
    let ws = admin.workspace("bench").await;
    let task = admin.task(&ws, json!({"title": "Read me"})).await;
    let id = task["id"].as_str().unwrap().to_owned();

    let transport = StreamableHttpClientTransport::with_client(
        reqwest::Client::new(),
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.url))
            .auth_header(ADMIN),
    );
    let mcp = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("bench", "0"),
    )
    .serve(transport)
    .await
    .expect("an MCP session");
    let tool = |name: &'static str, args: Value| {
        let call =
            CallToolRequestParams::new(name).with_arguments(args.as_object().unwrap().clone());
        let mcp = &mcp;
        async move {
            let result = mcp.call_tool(call).await.expect("the call is answered");
            assert_ne!(result.is_error, Some(true), "{result:?}");
        }
    };

    let get = json!({"id": id});
    let create = json!({"workspace": ws, "title": "Made over MCP"});
    let mcp_get = time(calls, || tool("get_task", get.clone())).await;
    let rest_get = time(calls, || async {
        let (status, _) = admin.get(&format!("/api/tasks/{id}")).await;
        assert!(status.is_success());
    })
    .await;
    let rest_get_whole = time(calls, || async {
        for path in [
            format!("/api/tasks/{id}"),
            format!("/api/workers?taskId={id}"),
            format!("/api/tasks/{id}/artifacts"),
        ] {
            let (status, _) = admin.get(&path).await;
            assert!(status.is_success());
        }
    })
    .await;
    let mcp_create = time(calls, || tool("create_task", create.clone())).await;
    let rest_create = time(calls, || async {
        admin.task(&ws, json!({"title": "Made over REST"})).await;
    })
    .await;
    for (label, mut latencies) in [
        ("get_task over /mcp", mcp_get),
        ("GET /api/tasks/:id", rest_get),
        ("the same in 3 GETs", rest_get_whole),
        ("create_task over /mcp", mcp_create),
        ("POST /api/tasks", rest_create),
    ] {
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "{backend:<9} {label:<22} p50 {:>6.2} ms   p99 {:>6.2} ms",
            ms(pct(0.50)),
            ms(pct(0.99)),
        );
    }
}

/// The latency of each of `calls` calls, made one after another.
async fn time<F: std::future::Future<Output = ()>>(
    calls: usize,
    call: impl Fn() -> F,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call().await;
        latencies.push(started.elapsed());
    }
    latencies
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
