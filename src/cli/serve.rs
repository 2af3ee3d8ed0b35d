//! `buildd serve`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::paths;
use crate::core::keys;
use crate::server::events::EventHub;
use crate::server::{self, AppState};
use crate::store;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    logging: super::LogArgs,
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, env = "BUILDD_LISTEN", default_value = "127.0.0.1:3000")]
    listen: String,
    /// `sqlite:PATH` or `postgres://…` [env: BUILDD_DATABASE_URL, then DATABASE_URL]
    /// [default: SQLite file buildd.db in the platform data dir]
    #[arg(long)]
    database_url: Option<String>,
    /// The admin bearer token [default: generated on first start and saved 0600 as
    /// admin-token beside the SQLite file, or in the data dir]
    #[arg(long, env = "BUILDD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Seconds without a heartbeat after which a worker is lost and its task requeued.
    #[arg(long, env = "BUILDD_LEASE_TTL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    lease_ttl: u64,
    /// A GitHub token: action tasks then wake the workflows of action accounts with a
    /// githubRepo (repository_dispatch), and a review's follow-up gets the review's
    /// line comments [env: BUILDD_GITHUB_TOKEN, then GITHUB_TOKEN]
    #[arg(long)]
    github_token: Option<String>,
    /// The secret of the repositories' webhooks: `POST /api/github/webhook` takes
    /// deliveries signed with it (and is off without it)
    #[arg(long, env = "BUILDD_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    github_webhook_secret: Option<String>,
    /// The GitHub REST API.
    #[arg(
        long,
        env = "BUILDD_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    github_api_url: String,
    /// Event streams (`/api/events`) one account, or the admin token, may hold open on
    /// this server at once: one per agent, so at least the largest fleet sharing one
    /// account; past it a stream is refused with 429
    #[arg(long, env = "BUILDD_MAX_STREAMS_PER_CALLER",
        default_value_t = crate::core::events::DEFAULT_MAX_STREAMS_PER_CALLER as u64,
        value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_streams_per_caller: u64,
    /// Days events of the stream are kept (fractions allowed; 0 keeps them for good).
    /// A client resuming from a deleted event is told to reload (`stream.reset`).
    #[arg(long, env = "BUILDD_RETENTION", default_value_t = 7.0, value_parser = days)]
    retention: f64,
    /// Days a finished worker's messages and attachments are kept (fractions allowed)
    /// [default: as long as the worker]
    #[arg(long, env = "BUILDD_MESSAGE_RETENTION", value_parser = days)]
    message_retention: Option<f64>,
}

/// A number of days: finite and not negative.
fn days(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(d) if d.is_finite() && (0.0..=36_500.0).contains(&d) => Ok(d),
        _ => Err(format!("{text:?} is not a number of days from 0 to 36500")),
    }
}

/// `days` as a period to keep things for; 0 means for good.
fn keep_for(days: f64) -> Option<Duration> {
    (days > 0.0).then(|| Duration::from_secs_f64(days * 86_400.0))
}

pub async fn run(args: ServeArgs) -> Result<(), String> {
    args.logging.init();

    let database_url = match args.database_url {
        Some(url) => url,
        None => {
            match env_nonempty("BUILDD_DATABASE_URL").or_else(|| env_nonempty("DATABASE_URL")) {
                Some(url) => url,
                None => paths::default_database_url()?,
            }
        }
    };
    let admin_token = match args.admin_token.filter(|t| !t.is_empty()) {
        Some(token) => token,
        None => load_or_create_admin_token(&paths::admin_token_file(&database_url)?)?,
    };

    let store = store::open(&database_url)
        .await
        .map_err(|e| format!("cannot open the database: {e}"))?;
    info!(database = %redact(&database_url), "database ready");

    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;

    let github_token = args
        .github_token
        .filter(|t| !t.is_empty())
        .or_else(|| env_nonempty("BUILDD_GITHUB_TOKEN"))
        .or_else(|| env_nonempty("GITHUB_TOKEN"));
    let github = match github_token {
        Some(token) => {
            info!(api = %args.github_api_url, "GitHub Actions dispatch on");
            Some(server::github::GithubApi::new(
                &args.github_api_url,
                &token,
            )?)
        }
        None => None,
    };

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let metrics = Arc::new(server::metrics::Metrics::default());
    let events = EventHub::start(
        store.clone(),
        metrics.clone(),
        args.max_streams_per_caller as usize,
        shutdown.clone(),
    )
    .await
    .map_err(|e| format!("cannot read the event log: {e}"))?;
    let state = AppState {
        store,
        events,
        admin_token: Arc::from(admin_token),
        lease_ttl: Duration::from_secs(args.lease_ttl),
        new_work: Arc::new(Notify::new()),
        schedules_changed: Arc::new(Notify::new()),
        deliveries_queued: Arc::new(Notify::new()),
        shutdown,
        github,
        github_webhook_secret: args
            .github_webhook_secret
            .filter(|s| !s.is_empty())
            .map(Arc::from),
        metrics,
        retention: server::retention::Retention {
            events: keep_for(args.retention),
            worker_output: args.message_retention.and_then(keep_for),
        },
        presence: Arc::default(),
        waiters: Arc::default(),
    };
    info!(
        lease_ttl_secs = args.lease_ttl,
        "listening on http://{addr}"
    );
    server::serve(listener, state)
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    info!("stopped");
    Ok(())
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A database URL fit for the log: any password is masked, in the user part
/// (`user:pw@host`) and in the query (`?password=…`, as libpq also takes it).
fn redact(database_url: &str) -> String {
    let Ok(mut url) = url::Url::parse(database_url) else {
        return database_url.to_owned();
    };
    let mut masked = false;
    if url.password().is_some() {
        masked = url.set_password(Some("***")).is_ok();
    }
    let secret = |key: &str| matches!(key, "password" | "sslpassword");
    if url.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        masked = true;
    }
    if masked {
        url.to_string()
    } else {
        database_url.to_owned()
    }
}

/// Reads the saved admin token, or makes one and saves it readable by its owner only.
/// Two servers starting together agree: whoever creates the file first wins and the
/// other reads it.
fn load_or_create_admin_token(path: &Path) -> Result<String, String> {
    let read = |path: &Path| -> Result<Option<String>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!(
                "cannot read the admin token at {}: {e}",
                path.display()
            )),
        }
    };
    if let Some(token) = read(path)? {
        info!(path = %path.display(), "admin token loaded");
        return Ok(token);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let token = keys::new_admin_token();
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut file) => {
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write the admin token to {}: {e}", path.display()))?;
            info!(path = %path.display(), "admin token generated; use it as the Bearer token");
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(path)?.ok_or_else(|| format!("the admin token file {} is empty", path.display()))
        }
        Err(e) => Err(format!(
            "cannot create the admin token file {}: {e}",
            path.display()
        )),
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    super::wait_for_signal().await;
    info!("shutting down: finishing in-flight requests");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_logged_urls() {
        assert_eq!(
            redact("postgres://bob:secret@db:5432/buildd"),
            "postgres://bob:***@db:5432/buildd"
        );
        assert_eq!(redact("postgres://db/buildd"), "postgres://db/buildd");
        assert_eq!(redact("sqlite:/tmp/x.db"), "sqlite:/tmp/x.db");
        assert_eq!(
            redact("postgres://bob@db/buildd?password=secret&sslmode=require"),
            "postgres://bob@db/buildd?password=***&sslmode=require"
        );
        assert_eq!(
            redact("postgres://bob:p%40ss@db/b?sslpassword=x"),
            "postgres://bob:***@db/b?sslpassword=***"
        );
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn admin_token_is_created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin-token");
        let first = load_or_create_admin_token(&path).unwrap();
        let second = load_or_create_admin_token(&path).unwrap();
        assert_eq!(first, second);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
