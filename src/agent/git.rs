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
    // One at a time in this process, so that no half-made entry seen below is one of
    // this agent's own adds still in progress.
    static ADDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _adding = ADDING.lock().await;
    if path.exists() {
        remove_worktree(repo, path).await;
    }
    if let Some(ours) = path.parent() {
        remove_half_made_entries(repo, ours).await?;
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

/// Removes the entries (`.git/worktrees/NAME`) that a git killed while adding one of
/// our worktrees left half-written. Git writes `gitdir`, then `commondir`; an entry
/// whose file exists but is still empty makes every later `git worktree add` in the
/// repository fail ("failed to read …/commondir"), and `git worktree prune` keeps it
/// because it is locked as "initializing". Only entries pointing under `ours` (or too
/// broken to point anywhere) are removed.
async fn remove_half_made_entries(repo: &Path, ours: &Path) -> Result<(), String> {
    let common = PathBuf::from(git(repo, &["rev-parse", "--git-common-dir"]).await?);
    let entries = repo.join(common).join("worktrees");
    let Ok(mut dir) = tokio::fs::read_dir(&entries).await else {
        return Ok(());
    };
    while let Ok(Some(entry)) = dir.next_entry().await {
        let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).ok();
        let gitdir = read("gitdir");
        let half_made = [gitdir.as_deref(), read("commondir").as_deref()]
            .iter()
            .any(|file| file.is_some_and(|text| text.trim().is_empty()));
        let points_to_ours = match gitdir.as_deref().map(str::trim) {
            None | Some("") => true,
            Some(target) => Path::new(target).starts_with(ours),
        };
        if half_made && points_to_ours {
            tracing::info!(entry = %entry.path().display(), "removing a worktree entry a killed git left half-made");
            let _ = tokio::fs::remove_dir_all(entry.path()).await;
        }
    }
    Ok(())
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
