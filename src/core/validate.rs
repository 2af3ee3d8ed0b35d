//! What makes a new account, workspace or task acceptable, and the defaults users
//! get when they leave a field out.

use super::error::RuleError;
use super::model::{AccountType, AuthType};

pub const MAX_NAME_LEN: usize = 200;
pub const MAX_TITLE_LEN: usize = 500;
pub const MAX_DESCRIPTION_LEN: usize = 256 * 1024;
pub const MAX_URL_LEN: usize = 2048;
pub const MAX_COMMENT_LEN: usize = 64 * 1024;
/// The most entries one `POST /api/workers/:id/messages` may carry.
pub const MAX_MESSAGES_PER_BATCH: usize = 1000;
pub const DEFAULT_MAX_WORKERS: i64 = 3;
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
pub const MAX_ATTEMPTS_LIMIT: i32 = 100;
pub const DEFAULT_BRANCH: &str = "main";

/// Why text with a NUL character is refused everywhere: Postgres cannot store it in
/// text or JSON columns, and accepting it on SQLite alone would make the two
/// backends disagree.
pub const NUL_REFUSED: &str = "text must not contain the NUL character (\\u0000)";

/// Whether any string in `value`, key or value, holds a NUL character.
pub fn has_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn invalid(msg: impl Into<String>) -> RuleError {
    RuleError::Invalid(msg.into())
}

/// A required, bounded, non-blank piece of text.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), RuleError> {
    if value.trim().is_empty() {
        return Err(invalid(format!("{field} must not be empty")));
    }
    optional_text(field, Some(value), max)
}

pub fn optional_text(field: &str, value: Option<&str>, max: usize) -> Result<(), RuleError> {
    match value {
        Some(v) if v.chars().count() > max => {
            Err(invalid(format!("{field} is longer than {max} characters")))
        }
        _ => Ok(()),
    }
}

/// A branch name a run may start from: `/`-separated parts of ASCII letters, digits,
/// `_`, `-` and single inner dots, none starting with `-` or `.` (the OpenAPI pattern
/// of `baseBranch` says the same). Git accepts more, but every name this accepts is
/// one git accepts, or no branch can have it.
/// An absolute `http(s)` URL with a host, at most [`MAX_URL_LEN`] characters.
pub fn web_url(field: &str, value: &str) -> Result<(), RuleError> {
    let ok = value.chars().count() <= MAX_URL_LEN
        && url::Url::parse(value)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} must be an http:// or https:// URL of at most {MAX_URL_LEN} characters, \
             not {value:?}"
        )))
    }
}

pub fn branch_name(field: &str, name: &str) -> Result<(), RuleError> {
    let word = |w: &str| {
        !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let part = |p: &str| !p.starts_with('-') && p.split('.').all(word);
    if name.len() > MAX_NAME_LEN || !name.split('/').all(part) {
        return Err(invalid(format!(
            "{field} {name:?} is not a valid branch name"
        )));
    }
    Ok(())
}

/// The Claude billing an account gets when its creator does not say: people use their
/// seat, machines pay per token. GitHub Actions runners cannot hold an OAuth seat.
pub fn auth_type(
    account_type: AccountType,
    requested: Option<AuthType>,
) -> Result<AuthType, RuleError> {
    match (account_type, requested) {
        (AccountType::Action, Some(AuthType::Oauth)) => Err(invalid(
            "action accounts run on ephemeral CI runners and must use authType \"api\"",
        )),
        (_, Some(t)) => Ok(t),
        (kind, None) => Ok(default_auth_type(kind)),
    }
}

/// How an account of this kind runs Claude Code unless told otherwise: people with
/// their subscription's login, services and CI with an API key.
pub fn default_auth_type(account_type: AccountType) -> AuthType {
    match account_type {
        AccountType::User => AuthType::Oauth,
        _ => AuthType::Api,
    }
}

pub fn non_negative_count(field: &str, value: Option<i64>) -> Result<(), RuleError> {
    match value {
        Some(v) if v < 0 => Err(invalid(format!("{field} must be ≥ 0"))),
        _ => Ok(()),
    }
}

pub fn money(field: &str, value: Option<f64>) -> Result<(), RuleError> {
    match value {
        Some(v) if !(v.is_finite() && v >= 0.0) => {
            Err(invalid(format!("{field} must be a number ≥ 0")))
        }
        _ => Ok(()),
    }
}

/// `owner/repo`, as GitHub spells repositories in its API paths.
pub fn github_repo(value: Option<&str>) -> Result<(), RuleError> {
    let Some(v) = value else { return Ok(()) };
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match v.split_once('/') {
        Some((owner, repo)) if ok_part(owner) && ok_part(repo) => Ok(()),
        _ => Err(invalid(format!(
            "githubRepo {v:?} is not of the form owner/repo"
        ))),
    }
}

/// A source type: a short lowercase word such as `github_issue`.
pub fn source_type(value: &str) -> Result<(), RuleError> {
    let ok = !value.is_empty()
        && value.len() <= 50
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "source type {value:?} must be 1 to 50 lowercase letters, digits or underscores"
        )))
    }
}

/// The largest attachment accepted, in bytes.
pub const MAX_ATTACHMENT_BYTES: usize = 10 * 1024 * 1024;

/// An attachment's file name: a plain name, no directories, nothing invisible, not
/// only dots.
pub fn file_name(value: &str) -> Result<(), RuleError> {
    text("name", value, 255)?;
    if value.contains(['/', '\\'])
        || value.chars().any(char::is_control)
        || value.chars().all(|c| c == '.')
    {
        return Err(invalid(format!("name {value:?} must be a plain file name")));
    }
    Ok(())
}

/// A MIME type such as `image/png` (parameters like `; charset=utf-8` allowed).
pub fn content_type(value: &str) -> Result<(), RuleError> {
    let essence = value.split(';').next().unwrap_or_default().trim();
    let token = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c))
    };
    match essence.split_once('/') {
        Some((kind, sub)) if value.len() <= 255 && token(kind) && token(sub) => Ok(()),
        _ => Err(invalid(format!(
            "content type {value:?} is not a MIME type"
        ))),
    }
}

pub fn max_attempts(value: Option<i32>) -> Result<i32, RuleError> {
    let v = value.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if (1..=MAX_ATTEMPTS_LIMIT).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(format!(
            "maxAttempts must be between 1 and {MAX_ATTEMPTS_LIMIT}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_follow_git() {
        for good in ["main", "buildd/task-1", "feature/x.y", "release-2"] {
            assert!(branch_name("baseBranch", good).is_ok(), "{good}");
        }
        for bad in [
            "", "-x", "a b", "a..b", "a~1", ".x", "x.", "a/", "a//b", "a:b", "a\\b", "é",
        ] {
            assert!(branch_name("baseBranch", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auth_type_defaults_follow_the_account_type() {
        assert_eq!(auth_type(AccountType::User, None), Ok(AuthType::Oauth));
        assert_eq!(auth_type(AccountType::Service, None), Ok(AuthType::Api));
        assert_eq!(auth_type(AccountType::Action, None), Ok(AuthType::Api));
        assert!(auth_type(AccountType::Action, Some(AuthType::Oauth)).is_err());
    }

    #[test]
    fn github_repo_shape() {
        assert!(github_repo(Some("my-org/my.repo")).is_ok());
        assert!(github_repo(None).is_ok());
        for bad in ["nope", "/repo", "org/", "a/b/c", "org/re po"] {
            assert!(github_repo(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_and_numbers() {
        assert!(text("title", "  ", 10).is_err());
        assert!(text("title", "ok", 10).is_ok());
        assert!(text("title", "much too long", 5).is_err());
        assert!(money("maxCostPerDay", Some(f64::NAN)).is_err());
        assert!(money("maxCostPerDay", Some(-1.0)).is_err());
        assert!(non_negative_count("maxConcurrentWorkers", Some(-1)).is_err());
        assert_eq!(max_attempts(None), Ok(3));
        assert!(max_attempts(Some(0)).is_err());
        assert!(source_type("github_issue").is_ok());
        assert!(source_type("GitHub Issue").is_err());
        assert!(source_type("").is_err());
        assert!(file_name("screenshot.png").is_ok());
        for bad in ["", "../etc/passwd", "a/b", "..", "x\u{7}"] {
            assert!(file_name(bad).is_err(), "{bad:?}");
        }
        assert!(content_type("image/png").is_ok());
        assert!(content_type("text/plain; charset=utf-8").is_ok());
        assert!(content_type("nonsense").is_err());
    }
}
