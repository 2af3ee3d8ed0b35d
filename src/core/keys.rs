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
    fn secrets_compare_by_content() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
