//! `buildd agent service`: `buildd agent` as a service of the current user, started at
//! login (or at boot, with lingering) and restarted when it fails: a systemd user
//! unit on Linux, a launchd agent on macOS.
//!
//! The service file names the server, the working directory and the agent's flags;
//! never the key. The agent reads the key `buildd login` saved, as on the command
//! line. On Linux that key must be in buildd's 0600 credentials file, because the
//! kernel keyring neither survives a reboot nor reaches a service: install puts it
//! there.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Parser, Subcommand, ValueEnum};

use super::agent::AgentArgs;
use super::credentials;

const UNIT_NAME: &str = "buildd-agent.service";
const LAUNCHD_LABEL: &str = "dev.buildd.agent";

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Write the service and start it: `buildd agent service install --dir ~/src/app
    /// --hours 'Mon-Fri 19:00-08:00,Sat-Sun'` (the flags are `buildd agent`'s).
    Install {
        /// Print the service file and the commands that would start it; change
        /// nothing.
        #[arg(long)]
        dry_run: bool,
        /// The service manager [default: systemd on Linux, launchd on macOS].
        #[arg(long, value_enum)]
        manager: Option<Manager>,
        /// `buildd agent`'s flags.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "AGENT FLAGS"
        )]
        flags: Vec<String>,
    },
    /// Whether the service runs, as the service manager tells.
    Status,
    /// The agent's log.
    Logs {
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
        /// How many lines of the past to print.
        #[arg(long, short = 'n', default_value_t = 200)]
        lines: u32,
    },
    /// Stop the service and remove it.
    Uninstall,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Manager {
    Systemd,
    Launchd,
}

impl Manager {
    fn of_this_system() -> Result<Manager, String> {
        if cfg!(target_os = "macos") {
            Ok(Manager::Launchd)
        } else if cfg!(target_os = "linux") {
            Ok(Manager::Systemd)
        } else {
            Err("buildd agent service knows systemd (Linux) and launchd (macOS) only".into())
        }
    }
}

/// `buildd agent`'s flags, parsed to check them.
#[derive(Parser)]
#[command(name = "buildd agent")]
struct AgentFlags {
    #[command(flatten)]
    args: AgentArgs,
}

/// Runs a `buildd agent service` command; `server` is the one the command line named
/// (or the default).
pub fn run(command: ServiceCommand, server: &str) -> Result<(), String> {
    match command {
        ServiceCommand::Install {
            dry_run,
            manager,
            flags,
        } => install(server, manager, &flags, dry_run),
        ServiceCommand::Status => match Manager::of_this_system()? {
            Manager::Systemd => {
                pass_through("systemctl", &["--user", "status", "--no-pager", UNIT_NAME])
            }
            Manager::Launchd => pass_through("launchctl", &["print", &launchd_target()]),
        },
        ServiceCommand::Logs { follow, lines } => {
            let lines = lines.to_string();
            match Manager::of_this_system()? {
                Manager::Systemd => {
                    let mut args = vec!["--user", "-u", UNIT_NAME, "-n", &lines, "--no-pager"];
                    if follow {
                        args.push("-f");
                    }
                    pass_through("journalctl", &args)
                }
                Manager::Launchd => {
                    let log = launchd_log()?;
                    let log = log.to_string_lossy();
                    let mut args = vec!["-n", &lines];
                    if follow {
                        args.push("-f");
                    }
                    args.push(&log);
                    pass_through("tail", &args)
                }
            }
        }
        ServiceCommand::Uninstall => uninstall(),
    }
}

fn install(
    server: &str,
    manager: Option<Manager>,
    flags: &[String],
    dry_run: bool,
) -> Result<(), String> {
    let manager = match manager {
        Some(m) => m,
        None => Manager::of_this_system()?,
    };
    for refused in ["--api-key", "--once", "--task"] {
        if flags
            .iter()
            .any(|f| f == refused || f.starts_with(&format!("{refused}=")))
        {
            return Err(format!(
                "{refused} has no place in a service (the key comes from 'buildd login'; a service runs until stopped)"
            ));
        }
    }
    let parsed = AgentFlags::try_parse_from(
        std::iter::once("buildd agent".to_owned()).chain(flags.iter().cloned()),
    )
    .map_err(|e| {
        let rendered = e.render().to_string();
        let first = rendered
            .lines()
            .next()
            .unwrap_or("invalid flags")
            .to_owned();
        format!("the agent's flags: {}", first.trim_start_matches("error: "))
    })?;
    // A --server among the agent's flags wins, as it would when the agent runs.
    let server = if flags
        .iter()
        .any(|f| f == "--server" || f.starts_with("--server="))
    {
        parsed.args.server().to_owned()
    } else {
        server.to_owned()
    };
    let key = credentials::token(&server, None).map_err(|_| {
        format!(
            "no saved key for {server}: run 'buildd login --server {server} --api-key buildd_…' first (the service reads the saved key; it is never written into the service file)"
        )
    })?;
    let service = Service {
        exe: std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .map_err(|e| format!("cannot find the buildd executable: {e}"))?,
        dir: std::env::current_dir()
            .map_err(|e| format!("cannot read the current directory: {e}"))?,
        server: server.clone(),
        path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        flags: flags.to_vec(),
        stop_timeout_secs: parsed.args.grace_secs() + 30,
    };
    let (file, text, start) = match manager {
        Manager::Systemd => (
            systemd_unit_path()?,
            service.systemd_unit(),
            vec![
                "systemctl --user daemon-reload".to_owned(),
                format!("systemctl --user enable --now {UNIT_NAME}"),
            ],
        ),
        Manager::Launchd => (
            launchd_plist_path()?,
            service.launchd_plist(&launchd_log()?),
            vec![format!(
                "launchctl bootstrap {} {}",
                launchd_domain(),
                launchd_plist_path()?.display()
            )],
        ),
    };
    if dry_run {
        println!("# {}", file.display());
        print!("{text}");
        for command in start {
            println!("# then: {command}");
        }
        return Ok(());
    }
    if manager == Manager::Systemd {
        // Refuse before writing anything where there is no user manager to run it.
        systemctl(&["show-environment"]).map_err(|why| {
            format!("systemd's user manager is not reachable here ({why}); run 'buildd agent' under your own supervisor instead (see examples/systemd)")
        })?;
        if let Some(saved) = credentials::keep_in_file(&server, &key)? {
            println!(
                "The key for {server} is now also in {} (readable only by you): the kernel keyring does not reach services.",
                saved.display()
            );
        }
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&file, &text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    match manager {
        Manager::Systemd => {
            systemctl(&["daemon-reload"])?;
            systemctl(&["enable", "--now", UNIT_NAME])?;
            println!("Installed and started {UNIT_NAME} ({}).", file.display());
            println!(
                "It runs while you are logged in. To run it from boot and after you log out: sudo loginctl enable-linger {}",
                user_name()
            );
            println!("See it with 'buildd agent service status' and 'buildd agent service logs'.");
        }
        Manager::Launchd => {
            let _ = launchctl(&["bootout", &launchd_target()]);
            launchctl(&["bootstrap", &launchd_domain(), &file.to_string_lossy()])?;
            println!(
                "Installed and started {LAUNCHD_LABEL} ({}); it starts at each login.",
                file.display()
            );
        }
    }
    Ok(())
}

fn uninstall() -> Result<(), String> {
    match Manager::of_this_system()? {
        Manager::Systemd => {
            let file = systemd_unit_path()?;
            if !file.exists() {
                return Err(format!(
                    "no service installed ({} does not exist)",
                    file.display()
                ));
            }
            systemctl(&["disable", "--now", UNIT_NAME])?;
            std::fs::remove_file(&file)
                .map_err(|e| format!("cannot remove {}: {e}", file.display()))?;
            systemctl(&["daemon-reload"])?;
        }
        Manager::Launchd => {
            let file = launchd_plist_path()?;
            if !file.exists() {
                return Err(format!(
                    "no service installed ({} does not exist)",
                    file.display()
                ));
            }
            let _ = launchctl(&["bootout", &launchd_target()]);
            std::fs::remove_file(&file)
                .map_err(|e| format!("cannot remove {}: {e}", file.display()))?;
        }
    }
    println!("The agent service is stopped and removed.");
    Ok(())
}

/// What a service file says.
struct Service {
    exe: PathBuf,
    dir: PathBuf,
    server: String,
    path: String,
    flags: Vec<String>,
    stop_timeout_secs: u64,
}

impl Service {
    fn systemd_unit(&self) -> String {
        let mut exec = vec![self.exe.to_string_lossy().into_owned(), "agent".to_owned()];
        exec.extend(self.flags.iter().cloned());
        let exec: Vec<String> = exec.iter().map(|a| systemd_quote(a)).collect();
        format!(
            "# Written by 'buildd agent service install'; remove with 'buildd agent service uninstall'.\n\
             # The key is the one 'buildd login' saved, never written here. Other secrets the\n\
             # runner needs (ANTHROPIC_API_KEY=…, GITHUB_TOKEN=…) go in ~/.config/buildd/agent.env (mode 0600).\n\
             [Unit]\n\
             Description=buildd agent for {server}\n\
             After=network-online.target\n\
             Wants=network-online.target\n\
             \n\
             [Service]\n\
             Type=exec\n\
             WorkingDirectory={dir}\n\
             Environment={server_env}\n\
             Environment={path_env}\n\
             EnvironmentFile=-%h/.config/buildd/agent.env\n\
             ExecStart={exec}\n\
             # SIGTERM: no more claims; runs get --grace seconds, then are stopped and reported.\n\
             KillSignal=SIGTERM\n\
             KillMode=mixed\n\
             TimeoutStopSec={timeout}\n\
             # A clean exit (--exit-when-idle) stays stopped; a failure restarts.\n\
             Restart=on-failure\n\
             RestartSec=10\n\
             \n\
             [Install]\n\
             WantedBy=default.target\n",
            server = self.server.replace('%', "%%"),
            dir = systemd_quote(&self.dir.to_string_lossy()),
            server_env = systemd_quote(&format!("BUILDD_SERVER={}", self.server)),
            path_env = systemd_quote(&format!("PATH={}", self.path)),
            exec = exec.join(" "),
            timeout = self.stop_timeout_secs,
        )
    }

    fn launchd_plist(&self, log: &Path) -> String {
        let string = |s: &str| format!("<string>{}</string>", xml_escape(s));
        let mut args = vec![string(&self.exe.to_string_lossy()), string("agent")];
        args.extend(self.flags.iter().map(|f| string(f)));
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <!-- Written by 'buildd agent service install'. The key is the one 'buildd login' saved in the keychain, never written here. -->\n\
             <plist version=\"1.0\">\n\
             <dict>\n\
             \t<key>Label</key>\n\t{label}\n\
             \t<key>ProgramArguments</key>\n\t<array>\n\t\t{args}\n\t</array>\n\
             \t<key>WorkingDirectory</key>\n\t{dir}\n\
             \t<key>EnvironmentVariables</key>\n\t<dict>\n\
             \t\t<key>BUILDD_SERVER</key>\n\t\t{server}\n\
             \t\t<key>PATH</key>\n\t\t{path}\n\
             \t</dict>\n\
             \t<key>RunAtLoad</key>\n\t<true/>\n\
             \t<key>KeepAlive</key>\n\t<dict>\n\t\t<key>SuccessfulExit</key>\n\t\t<false/>\n\t</dict>\n\
             \t<key>ExitTimeOut</key>\n\t<integer>{timeout}</integer>\n\
             \t<key>StandardOutPath</key>\n\t{log}\n\
             \t<key>StandardErrorPath</key>\n\t{log}\n\
             </dict>\n\
             </plist>\n",
            label = string(LAUNCHD_LABEL),
            args = args.join("\n\t\t"),
            dir = string(&self.dir.to_string_lossy()),
            server = string(&self.server),
            path = string(&self.path),
            timeout = self.stop_timeout_secs,
            log = string(&log.to_string_lossy()),
        )
    }
}

/// One word of a systemd command line or assignment: bare when plain, else quoted
/// with `\` escapes; `%` (specifiers) and `$` (variables) always doubled.
fn systemd_quote(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty()
        && escaped
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=,+@%$-".contains(c));
    if plain {
        escaped
    } else {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn home() -> Result<PathBuf, String> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| "HOME is not set".into())
}

fn systemd_unit_path() -> Result<PathBuf, String> {
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => home()?.join(".config"),
    };
    Ok(config.join("systemd/user").join(UNIT_NAME))
}

fn launchd_plist_path() -> Result<PathBuf, String> {
    Ok(home()?
        .join("Library/LaunchAgents")
        .join(format!("{LAUNCHD_LABEL}.plist")))
}

fn launchd_log() -> Result<PathBuf, String> {
    Ok(home()?.join("Library/Logs/buildd-agent.log"))
}

fn launchd_domain() -> String {
    // SAFETY: getuid(2) cannot fail.
    format!("gui/{}", unsafe { libc::getuid() })
}

fn launchd_target() -> String {
    format!("{}/{LAUNCHD_LABEL}", launchd_domain())
}

fn user_name() -> String {
    std::env::var("USER").unwrap_or_else(|_| "$USER".into())
}

fn systemctl(args: &[&str]) -> Result<String, String> {
    let mut all = vec!["--user"];
    all.extend_from_slice(args);
    capture("systemctl", &all)
}

fn launchctl(args: &[&str]) -> Result<String, String> {
    capture("launchctl", args)
}

/// Runs a program; its first line of error output is the reason it failed.
fn capture(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr
        .lines()
        .chain(stdout.lines())
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no reason given");
    Err(format!("{program} {}: {}", args.join(" "), why.trim()))
}

/// Runs a program with the terminal as its output (logs, status); a non-zero exit
/// (`systemctl status` of a stopped unit, say) is passed on.
fn pass_through(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {} exited with {status}", args.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_words_are_quoted_only_when_they_must_be() {
        assert_eq!(systemd_quote("--max-tasks"), "--max-tasks");
        assert_eq!(systemd_quote("/usr/bin/buildd"), "/usr/bin/buildd");
        assert_eq!(
            systemd_quote("Mon-Fri 19:00-08:00,Sat-Sun"),
            "\"Mon-Fri 19:00-08:00,Sat-Sun\""
        );
        assert_eq!(systemd_quote("100%"), "100%%");
        assert_eq!(systemd_quote("a\"b\\c $HOME"), "\"a\\\"b\\\\c $$HOME\"");
        assert_eq!(systemd_quote(""), "\"\"");
    }
}
