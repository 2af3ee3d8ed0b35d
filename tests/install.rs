//! `install.sh` and `scripts/release.sh`: a release folder made by the release script
//! (packaging the test binary), served over local HTTP, installed with
//! `curl -fsSL …/install.sh | sh` under dash and bash.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Serves the files under `dir` at `/…`; returns the base URL.
async fn serve(dir: PathBuf) -> String {
    async fn file(State(dir): State<PathBuf>, UrlPath(path): UrlPath<String>) -> impl IntoResponse {
        if path.split('/').any(|part| part == "..") {
            return Err(StatusCode::BAD_REQUEST);
        }
        std::fs::read(dir.join(path)).map_err(|_| StatusCode::NOT_FOUND)
    }
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::get(file))
        .with_state(dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// `release.sh OUT` packaging the test binary (stripped of its debug info, which
/// only makes every download slower), as a release would package its own.
fn release_into(out: &Path) {
    let binary = out.with_extension("bin");
    let stripped = Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(&binary)
        .arg(env!("CARGO_BIN_EXE_buildd"))
        .status()
        .unwrap();
    assert!(stripped.success());
    let made = Command::new(Path::new(ROOT).join("scripts/release.sh"))
        .arg(out)
        .env("BUILDD_RELEASE_BINARY", &binary)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

fn triple() -> String {
    let out = Command::new("rustc").arg("-vV").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap()
        .to_owned()
}

/// `curl -fsSL URL/install.sh | SHELL`, with `env` set and `path_prefix` (if any) put
/// first on PATH.
fn install(shell: &str, url: &str, env: &[(&str, &str)], path_prefix: Option<&Path>) -> Output {
    let mut path = std::env::var("PATH").unwrap();
    if let Some(prefix) = path_prefix {
        path = format!("{}:{path}", prefix.display());
    }
    Command::new("sh")
        .arg("-c")
        .arg(format!("curl -fsSL {url}/install.sh | {shell}"))
        .env("PATH", path)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn install_sh_installs_a_verified_release_and_refuses_anything_else() {
    let site = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(ROOT).join("install.sh"),
        site.path().join("install.sh"),
    )
    .unwrap();
    release_into(&site.path().join("good"));
    let asset = format!("buildd-{}.tar.gz", triple());
    assert!(site.path().join("good").join(&asset).exists());
    // The same archive with a checksum that does not match it.
    release_into(&site.path().join("tampered"));
    std::fs::write(
        site.path().join("tampered").join(format!("{asset}.sha256")),
        format!("{}  {asset}\n", "0".repeat(64)),
    )
    .unwrap();
    let url = serve(site.path().to_owned()).await;
    let version = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_buildd"))
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();

    for shell in ["dash", "bash"] {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        let good = format!("{url}/good");
        let env = [
            ("HOME", home.path().to_str().unwrap()),
            ("BUILDD_INSTALL_DIR", bin.to_str().unwrap()),
            ("BUILDD_DOWNLOAD_URL", good.as_str()),
        ];

        // A fresh install, then one over an older binary.
        for round in 0..2 {
            let out = install(shell, &url, &env, None);
            assert!(
                out.status.success(),
                "{shell} round {round}: {}",
                stderr(&out)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                version,
                "{shell}: prints the installed version"
            );
            let ran = Command::new(bin.join("buildd"))
                .arg("--version")
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&ran.stdout), version);
            std::fs::write(bin.join("buildd"), "#!/bin/sh\necho old\n").unwrap();
        }
        let old = std::fs::read(bin.join("buildd")).unwrap();
        let untouched = |what: &str| {
            assert_eq!(
                std::fs::read(bin.join("buildd")).unwrap(),
                old,
                "{shell}: {what} changed the installed binary"
            );
            let leftovers: Vec<_> = std::fs::read_dir(&bin)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                leftovers.len(),
                1,
                "{shell}: {what} left files behind: {leftovers:?}"
            );
        };

        let tampered = format!("{url}/tampered");
        let out = install(
            shell,
            &url,
            &[env[0], env[1], ("BUILDD_DOWNLOAD_URL", &tampered)],
            None,
        );
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("checksum mismatch"),
            "{shell}: {}",
            stderr(&out)
        );
        untouched("a wrong checksum");

        let missing = format!("{url}/nowhere");
        let out = install(
            shell,
            &url,
            &[env[0], env[1], ("BUILDD_DOWNLOAD_URL", &missing)],
            None,
        );
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("download failed"),
            "{shell}: {}",
            stderr(&out)
        );
        untouched("a missing asset");

        // A platform no release is built for, as `uname` reports it.
        let fake = tempfile::tempdir().unwrap();
        let uname = fake.path().join("uname");
        std::fs::write(
            &uname,
            "#!/bin/sh\ncase \"$1\" in -s) echo SunOS ;; *) echo sparc64 ;; esac\n",
        )
        .unwrap();
        std::fs::set_permissions(&uname, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = install(shell, &url, &env, Some(fake.path()));
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("unsupported"),
            "{shell}: {}",
            stderr(&out)
        );
        untouched("an unknown platform");
    }
}
