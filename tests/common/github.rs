//! GitHub's webhook deliveries as tests send them: a documented payload
//! (`tests/fixtures/github/`) with a case's fields set, signed as GitHub signs.

use reqwest::StatusCode;
use serde_json::Value;

use super::Server;

/// The webhook secret the tests' servers are started with.
pub const SECRET: &str = "it's-a-secret-to-everybody";

/// A documented payload with `edit` applied.
pub fn payload(name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let path = format!(
        "{}/tests/fixtures/github/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut value);
    value
}

/// The HMAC-SHA256 GitHub sends, computed here independently of buildd's code.
pub fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// GitHub sending deliveries to one server, over one HTTP client (GitHub keeps its
/// connections too: a new client per delivery costs more than the server's work).
pub struct Sender {
    http: reqwest::Client,
    url: String,
}

impl Sender {
    pub fn to(server: &Server) -> Sender {
        Sender {
            http: reqwest::Client::new(),
            url: format!("{}/api/github/webhook", server.url),
        }
    }

    /// Sends a delivery as GitHub does; `signature` overrides (or, `Some("")`, leaves
    /// out) the right one.
    pub async fn deliver_as(
        &self,
        event: &str,
        id: &str,
        body: &Value,
        signature: Option<&str>,
    ) -> (StatusCode, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let mut request = self
            .http
            .post(&self.url)
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", id)
            .header("Content-Type", "application/json")
            .header("User-Agent", "GitHub-Hookshot/test");
        match signature {
            None => request = request.header("X-Hub-Signature-256", sign(SECRET, &bytes)),
            Some("") => {}
            Some(other) => request = request.header("X-Hub-Signature-256", other),
        }
        let response = request.body(bytes).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// [`Sender::deliver_as`], signed, which must be answered 200.
    pub async fn deliver(&self, event: &str, id: &str, body: &Value) -> Value {
        let (status, answer) = self.deliver_as(event, id, body, None).await;
        assert_eq!(status, StatusCode::OK, "{event} {id}: {answer}");
        answer
    }
}
