//! A runner's process and everything it starts, as one process group, so that stopping
//! a run stops its shells, test servers and language servers too.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a stopped run gets to exit after SIGTERM before its group gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

pub struct RunProcess {
    child: Child,
    group: i32,
}

impl RunProcess {
    /// Starts `command` as the leader of a new process group, its stdout piped for the
    /// agent to read and its stderr passed through to the agent's own. Its stdin is a
    /// pipe the agent writes to when `input`, and empty otherwise.
    pub fn spawn(
        mut command: Command,
        input: bool,
    ) -> std::io::Result<(Self, ChildStdout, Option<ChildStdin>)> {
        command
            .process_group(0)
            .stdin(if input { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe, which is all a pre-exec hook may call.
        // It makes the kernel kill the runner if the agent dies without stopping it
        // (kill -9), instead of leaving it working in a worktree nobody watches.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let stdin = child.stdin.take();
        let group = child.id().map_or(0, |id| id as i32);
        Ok((RunProcess { child, group }, stdout, stdin))
    }

    /// Waits for the leader to exit, then ends whatever it left running in its group.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        self.end_group();
        Ok(status)
    }

    /// Stops the whole group: SIGTERM, then SIGKILL for whatever is left after
    /// [`TERM_GRACE`]. Returns once the leader has exited.
    pub async fn stop(&mut self) {
        signal_group(self.group, libc::SIGTERM);
        if tokio::time::timeout(TERM_GRACE, self.child.wait())
            .await
            .is_err()
        {
            signal_group(self.group, libc::SIGKILL);
            let _ = self.child.wait().await;
        }
        self.end_group();
    }

    /// Kills what is left of the group, once: after that its id may belong to
    /// another process group.
    fn end_group(&mut self) {
        signal_group(self.group, libc::SIGKILL);
        self.group = 0;
    }
}

impl Drop for RunProcess {
    /// A run abandoned by a cancelled task must not outlive the agent's interest in it.
    fn drop(&mut self) {
        self.end_group();
    }
}

fn signal_group(group: i32, signal: i32) {
    if group > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; it touches no
        // memory. A group that is already gone yields ESRCH, which is fine.
        unsafe {
            libc::kill(-group, signal);
        }
    }
}
