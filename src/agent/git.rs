//! The git a task needs: its own worktree and branch beside the user's checkout, a
//! commit of the result, a push. The user's own working tree is never touched.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::core::diff::{self, NewDiff};

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

/// The repository's git directory, shared by all its worktrees.
async fn common_dir(repo: &Path) -> Result<PathBuf, String> {
    Ok(repo.join(git(repo, &["rev-parse", "--git-common-dir"]).await?))
}

/// Holds the repository's worktree lock until dropped.
struct WorktreeLock {
    _file: std::fs::File,
    _in_process: tokio::sync::MutexGuard<'static, ()>,
}

/// Serialises changes to the repository's worktrees (add, remove, prune) across every
/// agent that shares the checkout, in this process and in others: `git worktree
/// prune` run by one agent while another adds would delete the entry being made. The
/// lock is a file in the git directory, held with `flock`, so it goes with the process
/// that held it however it dies.
async fn lock_worktrees(repo: &Path) -> Result<WorktreeLock, String> {
    // flock is per open file, so agents of one process would not wait for each other
    // through it alone without each opening the file; the mutex makes that cheap.
    static IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let in_process = IN_PROCESS.lock().await;
    let path = common_dir(repo).await?.join("buildd-worktrees.lock");
    let file = tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // SAFETY: flock(2) on a descriptor this closure owns; it blocks until free.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(file)
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(WorktreeLock {
        _file: file,
        _in_process: in_process,
    })
}

/// How many times making a worktree is tried before the attempt is given up.
const WORKTREE_TRIES: u32 = 3;

/// Makes a fresh worktree at `path` on `branch`, starting from the checkout's `HEAD`.
/// A worktree or branch left by an earlier attempt of the same task (by this agent, or
/// by one that died) is replaced: that attempt is over, and this one starts afresh.
/// A failure is tried again a few times before it is returned.
///
/// The branch may still be checked out in a worktree of another agent on the same
/// checkout that died running an earlier attempt; `abandoned` tells whether such a
/// worktree's agent is gone, and then it is removed (its branch stays).
pub async fn add_worktree(
    repo: &Path,
    path: &Path,
    branch: &str,
    base: Option<&str>,
    abandoned: fn(&Path) -> bool,
) -> Result<(), String> {
    let start = match base {
        // A run carrying on a branch it pushes (a CI fix, a review's follow-up) starts
        // where the pull request is: origin's branch, which may be ahead of ours.
        Some(base) if base == branch => match fetch_origin(repo, base).await {
            Ok(sha) => sha,
            Err(_) => resolve_base(repo, base).await?,
        },
        Some(base) => resolve_base(repo, base).await?,
        None => "HEAD".to_owned(),
    };
    let mut tries = 0;
    loop {
        tries += 1;
        match try_add_worktree(repo, path, branch, &start, abandoned).await {
            Ok(()) => return Ok(()),
            Err(e) if tries < WORKTREE_TRIES => {
                tracing::warn!(error = %e, "cannot create the worktree; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(tries))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The commit a run starting from branch `base` starts at: the checkout's branch of
/// that name, else `origin`'s, fetched now.
async fn resolve_base(repo: &Path, base: &str) -> Result<String, String> {
    let local = format!("refs/heads/{base}^{{commit}}");
    if let Ok(sha) = git(repo, &["rev-parse", "--verify", "--quiet", &local]).await {
        return Ok(sha.trim().to_owned());
    }
    fetch_origin(repo, base).await.map_err(|e| {
        format!("the base branch {base} is neither in the checkout nor on origin: {e}")
    })
}

/// The commit of `origin`'s branch `branch`, fetched now.
async fn fetch_origin(repo: &Path, branch: &str) -> Result<String, String> {
    let refspec = format!("refs/heads/{branch}");
    git(repo, &["fetch", "--quiet", "origin", &refspec]).await?;
    let sha = git(repo, &["rev-parse", "--verify", "FETCH_HEAD^{commit}"]).await?;
    Ok(sha.trim().to_owned())
}

async fn try_add_worktree(
    repo: &Path,
    path: &Path,
    branch: &str,
    start: &str,
    abandoned: fn(&Path) -> bool,
) -> Result<(), String> {
    // Under the lock, no half-made entry seen below is another agent's add in
    // progress.
    let _lock = lock_worktrees(repo).await?;
    if path.exists() {
        remove_locked(repo, path).await;
    }
    if let Some(holder) = worktree_of_branch(repo, branch).await
        && holder != path
        && abandoned(&holder)
    {
        tracing::info!(worktree = %holder.display(), "removing a worktree of the same task left by an agent that is gone");
        remove_locked(repo, &holder).await;
    }
    if let Some(ours) = path.parent() {
        remove_half_made_entries(repo, ours).await?;
    }
    // Forget worktrees whose directories are gone, so their branches are free again.
    git(repo, &["worktree", "prune"]).await?;
    let path_arg = path.to_string_lossy();
    git(
        repo,
        &["worktree", "add", "--force", "-B", branch, &path_arg, start],
    )
    .await
    .map(drop)
}

/// The worktree that has `branch` checked out, if any.
async fn worktree_of_branch(repo: &Path, branch: &str) -> Option<PathBuf> {
    let list = git(repo, &["worktree", "list", "--porcelain"]).await.ok()?;
    let wanted = format!("branch refs/heads/{branch}");
    let mut current = None;
    for line in list.lines() {
        if let Some(path) = line.strip_prefix("worktree ") {
            current = Some(PathBuf::from(path));
        } else if line == wanted {
            return current;
        }
    }
    None
}

/// Removes the entries (`.git/worktrees/NAME`) that a git killed while adding one of
/// our worktrees left half-written. Git writes `gitdir`, then `commondir`; an entry
/// whose file exists but is still empty makes every later `git worktree add` in the
/// repository fail ("failed to read …/commondir"), and `git worktree prune` keeps it
/// because it is locked as "initializing". Only entries pointing under `ours` (or too
/// broken to point anywhere) are removed.
async fn remove_half_made_entries(repo: &Path, ours: &Path) -> Result<(), String> {
    let entries = common_dir(repo).await?.join("worktrees");
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
    match lock_worktrees(repo).await {
        Ok(_lock) => remove_locked(repo, path).await,
        Err(e) => tracing::warn!(error = %e, "cannot remove the worktree"),
    }
}

/// [`remove_worktree`], for a caller that holds the worktree lock.
async fn remove_locked(repo: &Path, path: &Path) {
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

/// The commit the worktree is at.
pub async fn head(worktree: &Path) -> Result<String, String> {
    git(worktree, &["rev-parse", "HEAD"]).await
}

/// What the worktree's branch changed since `base`: the files with their counts, and
/// the patch, cut past [`diff::MAX_PATCH_BYTES`] (read no further than that, however
/// large the change).
pub async fn diff_since(worktree: &Path, base: &str) -> Result<NewDiff, String> {
    let head = head(worktree).await?;
    let range = format!("{base}..{head}");
    let numstat = git(worktree, &["diff", "--numstat", "-z", "-M", &range]).await?;
    let mut files = diff::parse_numstat(&numstat);
    files.truncate(diff::MAX_FILES);
    let (patch, truncated) = bounded_output(
        worktree,
        &["diff", "-M", "--no-color", "--no-ext-diff", &range],
        diff::MAX_PATCH_BYTES,
    )
    .await?;
    Ok(NewDiff {
        base_sha: base.to_owned(),
        head_sha: (head != base).then_some(head),
        files,
        patch,
        truncated,
    })
}

/// The first `limit` bytes of `git ARGS`'s output (cut at a line), and whether there
/// was more; git is stopped once the limit is passed.
async fn bounded_output(dir: &Path, args: &[&str], limit: usize) -> Result<(String, bool), String> {
    use tokio::io::AsyncReadExt;
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        stdout
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| format!("cannot read git's output: {e}"))?;
    }
    let more = out.len() > limit;
    if more {
        let _ = child.kill().await;
    } else {
        let status = child.wait().await.map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("git {} failed", args.join(" ")));
        }
    }
    let (text, cut) = diff::bounded(String::from_utf8_lossy(&out).into_owned(), limit);
    Ok((text, cut || more))
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
