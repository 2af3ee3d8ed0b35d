//! The command line itself: version, and one-line errors with non-zero exits.

use std::process::{Command, Output};

fn buildd(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_buildd"))
        .args(args)
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.path())
        .env_remove("BUILDD_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

fn one_line_error(output: &Output) -> String {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("buildd: "), "{stderr}");
    lines[0].to_owned()
}

#[test]
fn version_is_printed() {
    let out = buildd(&["--version"]);
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        printed,
        format!("buildd {}", buildd::core::version::LONG_VERSION)
    );
    // Built from this checkout: the version, then the commit.
    let commit = printed
        .strip_prefix(&format!("buildd {} (", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_default();
    assert!(
        commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{printed}"
    );
}

#[test]
fn bad_arguments_get_one_line() {
    let line = one_line_error(&buildd(&["serve", "--no-such-flag"]));
    assert!(line.contains("--no-such-flag"), "{line}");
    let line = one_line_error(&buildd(&["serve", "--lease-ttl", "0"]));
    assert!(line.contains("lease-ttl"), "{line}");
    one_line_error(&buildd(&["frobnicate"]));
}

#[test]
fn an_unusable_database_url_is_one_line() {
    let line = one_line_error(&buildd(&[
        "serve",
        "--database-url",
        "mysql://db/x",
        "--admin-token",
        "t",
    ]));
    assert!(line.contains("unsupported database URL"), "{line}");
}

#[test]
fn a_taken_port_is_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("buildd.db").display());
    let line = one_line_error(&buildd(&[
        "serve",
        "--listen",
        &addr,
        "--database-url",
        &db,
        "--admin-token",
        "t",
    ]));
    assert!(line.contains("cannot listen"), "{line}");
}
