//! Account keys, worker tokens and the admin token.
//!
//! A key is shown once, when its account is made, and only its SHA-256 digest is
//! stored. So is a worker token: the claim that makes a worker hands it to the agent,
//! which gives it to that worker's run, and it opens only the run's own tools at
//! `/mcp` until the worker ends. Keys carry 190 random bits, so a fast digest is enough: nobody can guess
//! their way back from it, and lookups stay one indexed equality per request.

use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::model::AccountType;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SECRET_LEN: usize = 32;

fn random_secret() -> String {
    let mut rng = rand::rng();
    (0..SECRET_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A new account key, `buildd_<type>_<random>`.
pub fn new_account_key(account_type: AccountType) -> String {
    format!("buildd_{}_{}", account_type.as_str(), random_secret())
}

/// A new admin token. It has its own prefix so it can never be mistaken for an
/// account key.
pub fn new_admin_token() -> String {
    format!("buildd_admin_{}", random_secret())
}

/// A new worker token, `buildd_worker_<random>`. `worker` is no account type, so a
/// worker token is never mistaken for an account key.
pub fn new_worker_token() -> String {
    format!("buildd_worker_{}", random_secret())
}

/// Whether `token` has the shape of a worker token.
pub fn looks_like_worker_token(token: &str) -> bool {
    token.starts_with("buildd_worker_")
}

/// A new trigger token, `buildd_trigger_<random>`: it fires one trigger, nothing else.
pub fn new_trigger_token() -> String {
    format!("buildd_trigger_{}", random_secret())
}

/// Whether `token` has the shape of a trigger token.
pub fn looks_like_trigger_token(token: &str) -> bool {
    token.starts_with("buildd_trigger_")
}

/// Whether `token` has the shape of an account key (any other bearer token can only
/// be the admin token).
pub fn looks_like_account_key(token: &str) -> bool {
    AccountType::ALL
        .iter()
        .any(|t| token.starts_with(&format!("buildd_{}_", t.as_str())))
}

/// The stored form of a key: lowercase hex SHA-256.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key webhook secrets are sealed with, derived from the admin token (HKDF-SHA256):
/// the secret must be stored to sign with, and never in plain text. Every server of a
/// cluster has the same admin token, so each can open what another sealed; a server
/// started with another admin token cannot.
pub fn sealing_key(admin_token: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(b"buildd webhook secrets"), admin_token.as_bytes())
        .expand(b"chacha20poly1305", &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// `secret` sealed with `key` (ChaCha20-Poly1305, a random nonce), as hex text.
pub fn seal(key: &[u8; 32], secret: &str) -> String {
    use chacha20poly1305::aead::Aead;
    use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
    use rand::RngExt;
    let cipher = ChaCha20Poly1305::new(key.into());
    let nonce: [u8; 12] = rand::rng().random();
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), secret.as_bytes())
        .expect("sealing a short secret in memory cannot fail");
    nonce
        .iter()
        .chain(&sealed)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What [`seal`] sealed with `key`, or `None` when it was sealed with another key (a
/// server with another admin token) or is damaged.
pub fn open(key: &[u8; 32], sealed: &str) -> Option<String> {
    use chacha20poly1305::aead::Aead;
    use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
    let bytes: Vec<u8> = (0..sealed.len())
        .step_by(2)
        .map(|i| {
            sealed
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()?;
    let (nonce, body) = bytes.split_at_checked(12)?;
    let nonce: [u8; 12] = nonce.try_into().ok()?;
    let plain = ChaCha20Poly1305::new(key.into())
        .decrypt(&Nonce::from(nonce), body)
        .ok()?;
    String::from_utf8(plain).ok()
}

/// The `sha256=<hex>` HMAC-SHA256 signature of `body` with `secret`, as GitHub signs
/// its webhooks (`X-Hub-Signature-256`) and buildd signs its own.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Compares secrets in time that does not depend on where they differ.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_their_type_and_hash_stably() {
        let key = new_account_key(AccountType::Service);
        assert!(key.starts_with("buildd_service_"));
        assert!(looks_like_account_key(&key));
        assert!(!looks_like_account_key(&new_admin_token()));
        assert_eq!(hash_key(&key), hash_key(&key));
        assert_eq!(hash_key(&key).len(), 64);
        assert!(!hash_key(&key).contains(&key));
        let token = new_worker_token();
        assert!(looks_like_worker_token(&token));
        assert!(!looks_like_account_key(&token));
        assert!(!looks_like_worker_token(&key));
        let trigger = new_trigger_token();
        assert!(looks_like_trigger_token(&trigger));
        assert!(!looks_like_account_key(&trigger) && !looks_like_worker_token(&trigger));
        assert_ne!(token, new_worker_token());
    }

    #[test]
    fn sealed_secrets_open_with_their_key_only() {
        let key = sealing_key("buildd_admin_one");
        let sealed = seal(&key, "s3cret");
        assert!(!sealed.contains("s3cret"));
        assert_ne!(sealed, seal(&key, "s3cret"), "a fresh nonce each time");
        assert_eq!(open(&key, &sealed).as_deref(), Some("s3cret"));
        assert_eq!(open(&sealing_key("buildd_admin_two"), &sealed), None);
        assert_eq!(open(&key, "zz"), None);
        assert_eq!(open(&key, &sealed[..20]), None);
    }

    #[test]
    fn signatures_are_githubs_hmac_sha256() {
        // The example GitHub documents for validating webhook deliveries.
        assert_eq!(
            signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
