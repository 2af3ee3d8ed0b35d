//! Where buildd keeps its files when nobody says otherwise.

use std::path::PathBuf;

use directories::ProjectDirs;

/// The platform's data directory for buildd (`~/.local/share/buildd` on Linux,
/// `~/Library/Application Support/dev.buildd.buildd` on macOS).
pub fn data_dir() -> Result<PathBuf, String> {
    ProjectDirs::from("dev", "buildd", "buildd")
        .map(|dirs| dirs.data_dir().to_owned())
        .ok_or_else(|| "cannot find a home directory for buildd's data; pass --database-url".into())
}

/// The platform's config directory for buildd (`~/.config/buildd` on Linux).
pub fn config_dir() -> Result<PathBuf, String> {
    ProjectDirs::from("dev", "buildd", "buildd")
        .map(|dirs| dirs.config_dir().to_owned())
        .ok_or_else(|| "cannot find a home directory for buildd's config".into())
}

/// The SQLite file a server with no `--database-url` uses.
pub fn default_database_url() -> Result<String, String> {
    Ok(format!(
        "sqlite:{}",
        data_dir()?.join("buildd.db").display()
    ))
}

/// Where the generated admin token lives: beside the SQLite file, or in the data
/// directory when the database is Postgres.
pub fn admin_token_file(database_url: &str) -> Result<PathBuf, String> {
    if let Some(path) = database_url.strip_prefix("sqlite:") {
        let path = PathBuf::from(path.strip_prefix("//").unwrap_or(path));
        if let Some(dir) = path.parent() {
            return Ok(dir.join("admin-token"));
        }
    }
    Ok(data_dir()?.join("admin-token"))
}
