//! Which token a terminal command sends, and where `buildd login` keeps it.
//!
//! Lookup order: `--api-key` / `BUILDD_API_KEY`; the key saved by `buildd login` for
//! this server (the OS keyring, or the 0600 fallback file); the admin token of a
//! server running locally with its defaults, so that on the machine that runs
//! `buildd serve` the commands work with no setup.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::paths;

const KEYRING_SERVICE: &str = "buildd";

/// Where the key of `server` was saved.
pub enum Saved {
    Keyring,
    File(PathBuf),
}

fn normalise(server: &str) -> String {
    server.trim_end_matches('/').to_owned()
}

/// The fallback store: `credentials.json` in the config dir, `{server: key}`.
fn credentials_file() -> Result<PathBuf, String> {
    Ok(paths::config_dir()?.join("credentials.json"))
}

fn read_file() -> BTreeMap<String, String> {
    credentials_file()
        .ok()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

pub fn token(server: &str, explicit: Option<String>) -> Result<String, String> {
    if let Some(key) = explicit.filter(|k| !k.trim().is_empty()) {
        return Ok(key.trim().to_owned());
    }
    let server = normalise(server);
    if let Ok(entry) = keyring::Entry::new(KEYRING_SERVICE, &server)
        && let Ok(key) = entry.get_password()
    {
        return Ok(key);
    }
    if let Some(key) = read_file().remove(&server) {
        return Ok(key);
    }
    let file = paths::admin_token_file(&paths::default_database_url()?)?;
    match std::fs::read_to_string(&file) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        _ => Err(format!(
            "no API key for {server}: run 'buildd login', pass --api-key or set BUILDD_API_KEY"
        )),
    }
}

/// Saves `key` for `server`: in the OS keyring when there is one, else in a file
/// only its owner can read.
pub fn save(server: &str, key: &str) -> Result<Saved, String> {
    let server = normalise(server);
    if let Ok(entry) = keyring::Entry::new(KEYRING_SERVICE, &server)
        && entry.set_password(key).is_ok()
        && entry.get_password().is_ok_and(|k| k == key)
    {
        return Ok(Saved::Keyring);
    }
    write_file(server, key).map(Saved::File)
}

/// Puts `key` for `server` in the credentials file unless it is there already, for a
/// process the OS keyring does not reach (a service). Returns the file if it wrote.
pub fn keep_in_file(server: &str, key: &str) -> Result<Option<PathBuf>, String> {
    let server = normalise(server);
    if read_file().get(&server).is_some_and(|k| k == key) {
        return Ok(None);
    }
    write_file(server, key).map(Some)
}

/// Writes `key` for `server` into the 0600 credentials file, keeping the others.
fn write_file(server: String, key: &str) -> Result<PathBuf, String> {
    let file = credentials_file()?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut all = read_file();
    all.insert(server, key.to_owned());
    let text = serde_json::to_string_pretty(&all).map_err(|e| e.to_string())?;
    // Write beside it and rename, so a crash never leaves a half-written file.
    let tmp = file.with_extension("json.tmp");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &file).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(file)
}
