//! The git a task needs: its own worktree and branch beside the user's checkout, a
//! commit of the result, a push. The user's own working tree is never touched.

use std::path::{Path, PathBuf};

use tokio::process::Command;

/// The branch a task's work goes on.
pub fn branch_for(task_id: &str) -> String {
    format!("buildd/{task_id}")
}

/// Runs `git` in `dir` and returns its trimmed stdout, or its stderr as the error.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr.lines().last().unwrap_or("failed").trim();
        Err(format!("git {}: {reason}", args.join(" ")))
    }
}

/// The top of the git checkout holding `dir`, or why tasks cannot branch from it.
pub async fn checkout_root(dir: &Path) -> Result<PathBuf, String> {
    let root = git(dir, &["rev-parse", "--show-toplevel"])
        .await
        .map(PathBuf::from)
        .map_err(|_| format!("{} is not a git checkout (pass --dir)", dir.display()))?;
    git(&root, &["rev-parse", "--verify", "-q", "HEAD"])
        .await
        .map_err(|_| {
            format!(
                "the checkout {} has no commit to branch from yet",
                root.display()
            )
        })?;
    Ok(root)
}

/// Makes a fresh worktree at `path` on `branch`, starting from the checkout's `HEAD`.
/// A worktree or branch left by an earlier attempt of the same task (by this agent, or
/// by one that died) is replaced: that attempt is over, and this one starts afresh.
pub async fn add_worktree(repo: &Path, path: &Path, branch: &str) -> Result<(), String> {
    if path.exists() {
        remove_worktree(repo, path).await;
    }
    // Forget worktrees whose directories are gone, so their branches are free again.
    git(repo, &["worktree", "prune"]).await?;
    let path_arg = path.to_string_lossy();
    git(
        repo,
        &[
            "worktree", "add", "--force", "-B", branch, &path_arg, "HEAD",
        ],
    )
    .await
    .map(drop)
}

/// Removes a task's worktree; its branch, with the committed result, stays.
pub async fn remove_worktree(repo: &Path, path: &Path) {
    let path_arg = path.to_string_lossy();
    if git(repo, &["worktree", "remove", "--force", &path_arg])
        .await
        .is_err()
    {
        // Not a registered worktree any more (or never was): clear what is there.
        let _ = tokio::fs::remove_dir_all(path).await;
        let _ = git(repo, &["worktree", "prune"]).await;
    }
}

/// Commits everything in the worktree and returns the new commit, or `None` when the
/// run changed nothing. Uses the repository's identity, or buildd's when it has none.
pub async fn commit_all(worktree: &Path, message: &str) -> Result<Option<String>, String> {
    git(worktree, &["add", "-A"]).await?;
    if git(worktree, &["diff", "--cached", "--quiet"])
        .await
        .is_ok()
    {
        return Ok(None);
    }
    let mut args = Vec::new();
    if git(worktree, &["config", "user.email"]).await.is_err() {
        args.extend([
            "-c",
            "user.name=buildd",
            "-c",
            "user.email=buildd@localhost",
        ]);
    }
    args.extend(["commit", "--no-verify", "-q", "-m", message]);
    git(worktree, &args).await?;
    git(worktree, &["rev-parse", "HEAD"]).await.map(Some)
}

/// Pushes `branch` to `origin`.
pub async fn push(worktree: &Path, branch: &str) -> Result<(), String> {
    git(worktree, &["push", "-q", "--force", "origin", branch])
        .await
        .map(drop)
}

/// The URL of the checkout's `origin`, if it has one.
pub async fn origin_url(repo: &Path) -> Option<String> {
    git(repo, &["remote", "get-url", "origin"]).await.ok()
}
