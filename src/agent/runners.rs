//! Which runners this machine has: the coding CLIs found on `PATH` (or named with
//! `--runner NAME=PATH`) that have credentials, and commands declared with
//! `--command` or `--runner NAME='shell command'`. The agent advertises their names
//! with each claim, so the server hands it only tasks it can run, and runs each task
//! with the runner it names (or the first one, for a task that names none).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::claude::{CLAUDE_CREDENTIALS, ClaudeRunner};
use super::codex::{CODEX_CREDENTIALS, CodexRunner};
use super::command::CommandRunner;
use super::gemini::{GEMINI_CREDENTIALS, GeminiRunner};
use super::runner::Runner;
use crate::core::runners::{self, CLAUDE, CODEX, COMMAND, GEMINI};

/// `--runner NAME=VALUE`: for `claude`, `codex` and `gemini` the CLI's executable (a
/// path, or a name on `PATH`); for any other name a shell command run like
/// `--command`, advertised under that name.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerArg {
    pub name: String,
    pub value: String,
}

impl std::str::FromStr for RunnerArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| format!("'{text}' is not NAME=PATH or NAME='shell command'"))?;
        runners::check_name("the runner's name", name).map_err(|e| e.to_string())?;
        if value.trim().is_empty() {
            return Err(format!("--runner {name}= needs a path or a command"));
        }
        if name == COMMAND {
            return Err("`command` is --command's name; give this runner another".into());
        }
        Ok(RunnerArg {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// What the agent was told about its runners.
#[derive(Debug, Clone, Default)]
pub struct RunnerOptions {
    /// `--command`: run this instead of looking for coding CLIs.
    pub command: Option<String>,
    /// `--runner NAME=…`, in order.
    pub named: Vec<RunnerArg>,
    /// `--claude-bin`, when given.
    pub claude_bin: Option<PathBuf>,
    /// Claude Code's own options.
    pub claude_model: Option<String>,
    pub allowed_tools: String,
    pub max_turns: Option<u32>,
}

/// One runner as looked for: ready, or why not.
#[derive(Debug, Clone, PartialEq)]
pub struct Survey {
    pub name: String,
    /// Where it is and what it authenticates with, or why it cannot run.
    pub detail: String,
    pub ready: bool,
    /// Named with `--runner` (or `--claude-bin`): asked for, so it must work.
    pub asked_for: bool,
}

/// The runners the agent runs tasks with; the first is the default.
pub struct RunnerSet {
    runners: Vec<Arc<dyn Runner>>,
}

impl RunnerSet {
    /// The runners that are ready, or why none is (or why one asked for is not).
    pub fn from_survey(options: &RunnerOptions) -> Result<RunnerSet, String> {
        let (runners, survey) = look(options);
        if let Some(broken) = survey.iter().find(|s| s.asked_for && !s.ready) {
            return Err(format!("runner {}: {}", broken.name, broken.detail));
        }
        if runners.is_empty() {
            let why: Vec<String> = survey
                .iter()
                .map(|s| format!("{}: {}", s.name, s.detail))
                .collect();
            return Err(format!("no runner can run tasks here ({})", why.join("; ")));
        }
        Ok(RunnerSet { runners })
    }

    /// Their names, as the agent advertises them.
    pub fn names(&self) -> Vec<String> {
        self.runners.iter().map(|r| r.name().to_owned()).collect()
    }

    /// The runner for a task that names `wanted` (the default for one that names
    /// none), or why this agent has none.
    pub fn pick(&self, wanted: Option<&str>) -> Result<Arc<dyn Runner>, String> {
        let found = match wanted {
            None => self.runners.first(),
            Some(name) => self.runners.iter().find(|r| r.name() == name),
        };
        found.cloned().ok_or_else(|| {
            format!(
                "this agent has no {} runner (it has {})",
                wanted.unwrap_or("default"),
                self.names().join(", ")
            )
        })
    }
}

impl From<Arc<dyn Runner>> for RunnerSet {
    fn from(runner: Arc<dyn Runner>) -> Self {
        RunnerSet {
            runners: vec![runner],
        }
    }
}

/// Every runner the agent would look at, with what it found.
pub fn survey(options: &RunnerOptions) -> Vec<Survey> {
    look(options).1
}

fn look(options: &RunnerOptions) -> (Vec<Arc<dyn Runner>>, Vec<Survey>) {
    let mut runners: Vec<Arc<dyn Runner>> = Vec::new();
    let mut survey = Vec::new();
    if let Some(command) = &options.command {
        runners.push(Arc::new(CommandRunner {
            name: COMMAND.to_owned(),
            command: command.clone(),
        }));
        survey.push(Survey {
            name: COMMAND.to_owned(),
            detail: format!("sh -c {command:?}"),
            ready: true,
            asked_for: true,
        });
    }
    for cli in runners::KNOWN {
        let named = options.named.iter().find(|n| n.name == *cli);
        let claude_bin = options.claude_bin.as_ref().filter(|_| *cli == CLAUDE);
        let asked_for = named.is_some() || claude_bin.is_some();
        // With --command, only the CLIs asked for by name.
        if options.command.is_some() && !asked_for {
            continue;
        }
        let bin = match (named, claude_bin) {
            (Some(named), _) => PathBuf::from(&named.value),
            (None, Some(bin)) => bin.clone(),
            (None, None) => PathBuf::from(cli),
        };
        let found = credentials_of(cli).and_then(|credentials| {
            let path = resolve(&bin).ok_or_else(|| not_found(cli, &bin))?;
            Ok((path, credentials))
        });
        match found {
            Ok((path, credentials)) => {
                runners.push(cli_runner(cli, path.clone(), options));
                survey.push(Survey {
                    name: cli.to_string(),
                    detail: format!("{} ({credentials})", path.display()),
                    ready: true,
                    asked_for,
                });
            }
            Err(why) => survey.push(Survey {
                name: cli.to_string(),
                detail: why,
                ready: false,
                asked_for,
            }),
        }
    }
    for named in &options.named {
        if runners::KNOWN.contains(&named.name.as_str()) {
            continue;
        }
        runners.push(Arc::new(CommandRunner {
            name: named.name.clone(),
            command: named.value.clone(),
        }));
        survey.push(Survey {
            name: named.name.clone(),
            detail: format!("sh -c {:?}", named.value),
            ready: true,
            asked_for: true,
        });
    }
    (runners, survey)
}

fn cli_runner(cli: &str, bin: PathBuf, options: &RunnerOptions) -> Arc<dyn Runner> {
    match cli {
        CLAUDE => Arc::new(ClaudeRunner {
            bin,
            model: options.claude_model.clone(),
            allowed_tools: options.allowed_tools.clone(),
            max_turns: options.max_turns,
        }),
        CODEX => Arc::new(CodexRunner { bin }),
        GEMINI => Arc::new(GeminiRunner { bin }),
        other => unreachable!("{other} is not a known CLI"),
    }
}

fn not_found(cli: &str, bin: &Path) -> String {
    let package = match cli {
        CLAUDE => "@anthropic-ai/claude-code",
        CODEX => "@openai/codex",
        _ => "@google/gemini-cli",
    };
    match bin.components().count() {
        1 => format!(
            "{} is not on PATH: install it (npm install -g {package}) or give --runner {cli}=PATH",
            bin.display()
        ),
        _ => format!("{} is not an executable file", bin.display()),
    }
}

/// `bin` as an executable file: a path as given, or a bare name looked up on `PATH`.
fn resolve(bin: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if bin.components().count() > 1 {
        return executable(bin).then(|| bin.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(bin))
        .find(|p| executable(p))
}

/// What a CLI would authenticate with here, or why it could not.
fn credentials_of(cli: &str) -> Result<String, String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let variable = |names: &[&str]| names.iter().find(|n| set(n)).map(|n| n.to_string());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file_in = |dir: Option<PathBuf>, file: &str| {
        dir.map(|d| d.join(file))
            .filter(|p| p.is_file())
            .map(|p| p.display().to_string())
    };
    match cli {
        CLAUDE => variable(&CLAUDE_CREDENTIALS)
            .or_else(|| {
                variable(&["CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX"])
            })
            .or_else(claude_login)
            .ok_or_else(|| "No authentication configured: set CLAUDE_CODE_OAUTH_TOKEN (a Claude subscription) or ANTHROPIC_API_KEY (API billing) in the agent's environment, or sign Claude Code in on this machine (run `claude`, then /login)".into()),
        CODEX => {
            let codex_home = std::env::var_os("CODEX_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".codex")));
            variable(&CODEX_CREDENTIALS)
                .or_else(|| file_in(codex_home, "auth.json"))
                .ok_or_else(|| "no credentials: set OPENAI_API_KEY or CODEX_API_KEY, or sign Codex in on this machine (codex login)".into())
        }
        _ => variable(&GEMINI_CREDENTIALS)
            .or_else(|| {
                ["GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA"]
                    .iter()
                    .find(|n| std::env::var(n).is_ok_and(|v| v == "true"))
                    .map(|n| n.to_string())
            })
            .or_else(|| file_in(home.map(|h| h.join(".gemini")), "oauth_creds.json"))
            .ok_or_else(|| "no credentials: set GEMINI_API_KEY (or GOOGLE_API_KEY for Vertex AI), or sign Gemini in on this machine (gemini, then /auth)".into()),
    }
}

/// Claude Code's own login: `.credentials.json` in its config directory on Linux,
/// or an `apiKeyHelper` in its settings. On macOS the login lives in the keychain,
/// which cannot be read without a prompt: there the run tells, not this check.
fn claude_login() -> Option<String> {
    if cfg!(target_os = "macos") {
        return Some("the keychain's login, if any".into());
    }
    let config = match std::env::var_os("CLAUDE_CONFIG_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".claude"),
    };
    let credentials = config.join(".credentials.json");
    if credentials.is_file() {
        return Some(credentials.display().to_string());
    }
    std::fs::read_to_string(config.join("settings.json"))
        .is_ok_and(|settings| settings.contains("apiKeyHelper"))
        .then(|| "the apiKeyHelper of its settings".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_args_are_name_equals_path_or_command() {
        let arg: RunnerArg = "codex=/opt/codex/bin/codex".parse().unwrap();
        assert_eq!(arg.name, "codex");
        assert_eq!(arg.value, "/opt/codex/bin/codex");
        let arg: RunnerArg = "aider=aider --yes --message \"$BUILDD_PROMPT\""
            .parse()
            .unwrap();
        assert_eq!(arg.value, "aider --yes --message \"$BUILDD_PROMPT\"");
        for bad in ["codex", "=x", "Codex=x", "any=x", "codex= ", "command=x"] {
            assert!(bad.parse::<RunnerArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_command_declared_by_name_is_a_runner_of_that_name() {
        let options = RunnerOptions {
            command: Some("true".into()),
            named: vec!["aider=aider".parse().unwrap()],
            ..RunnerOptions::default()
        };
        let set = RunnerSet::from_survey(&options).unwrap();
        assert_eq!(set.names(), ["command", "aider"]);
        assert_eq!(set.pick(None).unwrap().name(), "command");
        assert_eq!(set.pick(Some("aider")).unwrap().name(), "aider");
        let e = set.pick(Some("codex")).err().unwrap();
        assert_eq!(e, "this agent has no codex runner (it has command, aider)");
    }

    #[test]
    fn a_cli_asked_for_that_is_missing_stops_the_agent() {
        let options = RunnerOptions {
            command: Some("true".into()),
            named: vec!["gemini=/nonexistent/gemini".parse().unwrap()],
            ..RunnerOptions::default()
        };
        let e = RunnerSet::from_survey(&options).err().unwrap();
        assert!(e.starts_with("runner gemini: "), "{e}");
    }
}
