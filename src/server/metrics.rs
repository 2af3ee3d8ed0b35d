//! `GET /metrics`: what an operator graphs and alerts on, in the Prometheus text format.
//!
//! Two kinds of figures: counters and the claim-latency histogram are this server's own
//! (Prometheus sums them over the servers it scrapes), while task and worker counts are
//! read from the database at scrape time, so every server of a cluster reports the
//! same cluster-wide values.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Counts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

pub struct Metrics {
    registry: Registry,
    tasks: Family<StatusLabel, Gauge>,
    active_workers: Gauge,
    claims: Counter,
    claim_seconds: Histogram,
    sse_subscribers: Gauge,
    lease_expiries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let tasks = Family::<StatusLabel, Gauge>::default();
        let active_workers = Gauge::default();
        let claims = Counter::default();
        // 0.5 ms to about 4 s: a claim is one transaction, so anything slower than a
        // few seconds is an outage rather than a latency.
        let claim_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let sse_subscribers = Gauge::default();
        let lease_expiries = Counter::default();

        let mut registry = Registry::with_prefix("buildd");
        registry.register(
            "tasks",
            "Tasks in each status, across the cluster",
            tasks.clone(),
        );
        registry.register(
            "active_workers",
            "Workers holding a slot (idle, starting, running, waiting_input, paused), across the cluster",
            active_workers.clone(),
        );
        registry.register(
            "claims",
            "Tasks this server handed to workers",
            claims.clone(),
        );
        registry.register(
            "claim_duration_seconds",
            "Time one claim transaction took on this server",
            claim_seconds.clone(),
        );
        registry.register(
            "sse_subscribers",
            "Open /api/events streams on this server",
            sse_subscribers.clone(),
        );
        registry.register(
            "lease_expiries",
            "Workers this server's sweeper declared lost",
            lease_expiries.clone(),
        );
        Metrics {
            registry,
            tasks,
            active_workers,
            claims,
            claim_seconds,
            sse_subscribers,
            lease_expiries,
        }
    }
}

impl Metrics {
    /// One claim transaction that took `took` and handed out `tasks` tasks.
    pub fn claimed(&self, took: Duration, tasks: usize) {
        self.claim_seconds.observe(took.as_secs_f64());
        self.claims.inc_by(tasks as u64);
    }

    pub fn lease_expired(&self) {
        self.lease_expiries.inc();
    }

    pub fn stream_opened(&self) {
        self.sse_subscribers.inc();
    }

    pub fn stream_closed(&self) {
        self.sse_subscribers.dec();
    }

    /// The text exposition, with the cluster-wide figures set from `counts`.
    pub fn render(&self, counts: &Counts) -> String {
        for (status, n) in &counts.tasks_by_status {
            self.tasks
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(*n);
        }
        self.active_workers.set(counts.active_workers);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
