//! Which token a terminal command sends.

use super::paths;

/// `--api-key` / `BUILDD_API_KEY` if given; otherwise the admin token of a server
/// running locally with its defaults (its `admin-token` file), so that on the machine
/// that runs `buildd serve` the commands work with no setup.
pub fn token(explicit: Option<String>) -> Result<String, String> {
    if let Some(key) = explicit.filter(|k| !k.trim().is_empty()) {
        return Ok(key.trim().to_owned());
    }
    let file = paths::admin_token_file(&paths::default_database_url()?)?;
    match std::fs::read_to_string(&file) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        _ => Err(format!(
            "no API key: pass --api-key or set BUILDD_API_KEY (no local admin token at {})",
            file.display()
        )),
    }
}
