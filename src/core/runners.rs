//! Runners: the coding CLIs a task may ask for and an agent may have, how their
//! names are written, what their models cost, and when a task falls back to another.
//!
//! A task's `runner` names what runs it (`claude`, `codex`, `gemini`, or a name an
//! agent declares for a command); `runnerPreference` says who runs it (which kind of
//! account). `buildd task create --runner` takes both, so a runner may not be named
//! like a preference.

use super::RuleError;
use super::model::{RunnerPreference, Task};

/// Claude Code (`claude`).
pub const CLAUDE: &str = "claude";
/// OpenAI's Codex CLI (`codex exec --json`).
pub const CODEX: &str = "codex";
/// Google's Gemini CLI (`gemini -p … --output-format stream-json`).
pub const GEMINI: &str = "gemini";
/// Any program, through `buildd agent --command` (without a name of its own).
pub const COMMAND: &str = "command";

/// The coding CLIs the agent reads the output of.
pub const KNOWN: &[&str] = &[CLAUDE, CODEX, GEMINI];

/// The longest runner name.
pub const MAX_NAME_LEN: usize = 32;
/// The longest model name.
pub const MAX_MODEL_LEN: usize = 200;
/// The most runners one agent may advertise.
pub const MAX_PER_AGENT: usize = 32;

/// Checks a runner's name: 1 to 32 of `a-z 0-9 . _ -`, starting with a letter or a
/// digit, and not a runner preference (`any`, `user`, `service`, `action`).
pub fn check_name(field: &str, name: &str) -> Result<(), RuleError> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !well_formed {
        return Err(RuleError::Invalid(format!(
            "{field} must be 1 to {MAX_NAME_LEN} of a-z, 0-9, '.', '_' and '-', starting \
             with a letter or a digit (got {name:?})"
        )));
    }
    if name.parse::<RunnerPreference>().is_ok() {
        return Err(RuleError::Invalid(format!(
            "{field} may not be {name:?}: that is a runnerPreference (who runs a task), \
             not a runner (what runs it)"
        )));
    }
    Ok(())
}

/// Checks a model's name: 1 to 200 characters, no blanks or ASCII controls.
pub fn check_model(model: &str) -> Result<(), RuleError> {
    if model.is_empty()
        || model.chars().count() > MAX_MODEL_LEN
        || model
            .chars()
            .any(|c| c.is_whitespace() || c < ' ' || c == '\x7f')
    {
        return Err(RuleError::Invalid(format!(
            "model must be 1 to {MAX_MODEL_LEN} characters without blanks"
        )));
    }
    Ok(())
}

/// Checks a task's runner fields: each name well formed. A model without a runner
/// goes to whichever runner the agent picks; a fallback without a runner, or equal
/// to it, never comes into play ([`fall_back`]).
pub fn check_task(
    runner: Option<&str>,
    model: Option<&str>,
    fallback: Option<&str>,
) -> Result<(), RuleError> {
    if let Some(runner) = runner {
        check_name("runner", runner)?;
    }
    if let Some(model) = model {
        check_model(model)?;
    }
    if let Some(fallback) = fallback {
        check_name("fallbackRunner", fallback)?;
    }
    Ok(())
}

/// Checks the runners an agent advertises: each a runner name, at most
/// [`MAX_PER_AGENT`] of them.
pub fn check_advertised(runners: &[String]) -> Result<(), RuleError> {
    if runners.len() > MAX_PER_AGENT {
        return Err(RuleError::Invalid(format!(
            "runners: at most {MAX_PER_AGENT}"
        )));
    }
    runners.iter().try_for_each(|r| check_name("runners", r))
}

/// The runners as one text the claim's SQL can search: `,a,b,` (each name is
/// found as `,name,`; names hold no comma).
pub fn as_search_list(runners: &[String]) -> String {
    format!(",{},", runners.join(","))
}

/// Whether an agent that has `runners` may run `task`: a task that names no runner
/// goes to any agent.
pub fn can_run(task: &Task, runners: &[String]) -> bool {
    task.runner
        .as_deref()
        .is_none_or(|wanted| runners.iter().any(|r| r == wanted))
}

/// Why a run failed, when the reason is the runner's and another runner might do the
/// task: its provider refused for quota or rate limits, or it could not sign in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RunnerFailure {
    /// The provider refused: quota spent, rate limited, out of credit.
    Quota,
    /// The CLI had no working credentials.
    Auth,
}

impl RunnerFailure {
    pub fn describe(self) -> &'static str {
        match self {
            RunnerFailure::Quota => "its provider's quota is spent",
            RunnerFailure::Auth => "it could not authenticate",
        }
    }
}

/// Switches `task` to its `fallbackRunner` after an attempt failed for a reason of
/// its runner's (`why`: a runner failure, or its account's daily budget spent), and
/// says so in a sentence; `None` when the task has no fallback or already runs it.
/// The task keeps its model only if it stays with the same runner, so the fallback
/// runs with the agent's default model.
pub fn fall_back(task: &mut Task, why: &str) -> Option<String> {
    let fallback = task.fallback_runner.clone()?;
    let from = task.runner.replace(fallback.clone())?;
    if from == fallback {
        return None;
    }
    task.model = None;
    Some(format!(
        "{from} stopped ({why}); the next attempt runs with {fallback} (fallbackRunner)"
    ))
}

/// Tokens one run used, as its CLI counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tokens {
    /// Input tokens read at the full price (cache writes included for OpenAI and
    /// Gemini, which do not charge them apart).
    pub input: f64,
    /// Input tokens read from the provider's cache.
    pub cached_input: f64,
    /// Input tokens written to Anthropic's cache (1.25× the input price).
    pub cache_write: f64,
    /// Output tokens, reasoning included.
    pub output: f64,
}

/// A model's list price in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
}

/// Published list prices per million tokens (Anthropic, OpenAI and Google pricing
/// pages), matched by the longest model-name prefix. Gemini 2.5 Pro's price is its
/// price for prompts up to 200k tokens. Where a CLI reports its own cost (Claude
/// Code), that figure is used instead.
const PRICES: &[(&str, Price)] = &[
    ("claude-opus-4-1", price(15.0, 1.5, 75.0)),
    ("claude-opus-4-0", price(15.0, 1.5, 75.0)),
    ("claude-opus-4", price(5.0, 0.5, 25.0)),
    ("claude-sonnet", price(3.0, 0.3, 15.0)),
    ("claude-haiku-4", price(1.0, 0.1, 5.0)),
    ("claude-3-5-haiku", price(0.8, 0.08, 4.0)),
    ("gpt-5-mini", price(0.25, 0.025, 2.0)),
    ("gpt-5-nano", price(0.05, 0.005, 0.4)),
    ("gpt-5", price(1.25, 0.125, 10.0)),
    ("gpt-4.1-mini", price(0.4, 0.1, 1.6)),
    ("gpt-4.1", price(2.0, 0.5, 8.0)),
    ("o4-mini", price(1.1, 0.275, 4.4)),
    ("o3", price(2.0, 0.5, 8.0)),
    ("codex-mini", price(1.5, 0.375, 6.0)),
    ("gemini-2.5-pro", price(1.25, 0.31, 10.0)),
    ("gemini-2.5-flash-lite", price(0.1, 0.025, 0.4)),
    ("gemini-2.5-flash", price(0.3, 0.075, 2.5)),
    ("gemini-2.0-flash", price(0.1, 0.025, 0.4)),
];

const fn price(input: f64, cached_input: f64, output: f64) -> Price {
    Price {
        input,
        cached_input,
        output,
    }
}

/// The price of `model`, by the longest prefix of [`PRICES`]; a model the table
/// does not know is priced as its family's flagship (`claude-sonnet`, `gpt-5`,
/// `gemini-2.5-pro`), so that a new model's spend still counts against budgets.
pub fn price_of(model: &str) -> Price {
    let model = model.to_ascii_lowercase();
    let model = model.rsplit('/').next().unwrap_or_default();
    let known = PRICES
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len());
    if let Some((_, price)) = known {
        return *price;
    }
    let flagship = if model.starts_with("gemini") {
        "gemini-2.5-pro"
    } else if model.starts_with("gpt") || model.starts_with('o') || model.contains("codex") {
        "gpt-5"
    } else {
        "claude-sonnet"
    };
    PRICES
        .iter()
        .find(|(prefix, _)| *prefix == flagship)
        .map(|(_, price)| *price)
        .expect("the flagships are in the table")
}

/// What `tokens` of `model` cost at list prices, in US dollars.
pub fn cost_usd(model: &str, tokens: Tokens) -> f64 {
    let p = price_of(model);
    (tokens.input * p.input
        + tokens.cached_input * p.cached_input
        + tokens.cache_write * p.input * 1.25
        + tokens.output * p.output)
        / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_and_not_preferences() {
        for ok in ["claude", "codex", "gemini", "aider-0.8", "my_cli", "7z"] {
            assert_eq!(check_name("runner", ok), Ok(()), "{ok}");
        }
        for bad in ["", "Claude", "-x", "a b", "a,b", "x%", &"a".repeat(33)] {
            assert!(check_name("runner", bad).is_err(), "{bad:?}");
        }
        for preference in ["any", "user", "service", "action"] {
            let e = check_name("runner", preference).unwrap_err().to_string();
            assert!(e.contains("runnerPreference"), "{e}");
        }
    }

    #[test]
    fn a_tasks_runner_fields_are_checked_one_by_one() {
        assert_eq!(check_task(None, None, None), Ok(()));
        assert_eq!(
            check_task(Some("codex"), Some("gpt-5"), Some("claude")),
            Ok(())
        );
        assert_eq!(check_task(None, Some("gpt-5"), Some("claude")), Ok(()));
        assert!(check_task(Some("any"), None, None).is_err());
        assert!(check_task(None, None, Some("Codex")).is_err());
        assert!(check_task(Some("codex"), Some("gpt 5"), None).is_err());
        assert!(check_task(Some("codex"), Some(""), None).is_err());
    }

    #[test]
    fn agents_run_what_they_advertise() {
        let mut task = Task::new("ws".into(), "t", crate::core::time::now());
        let claude_only = vec!["claude".to_owned()];
        assert!(can_run(&task, &claude_only));
        assert!(can_run(&task, &[]));
        task.runner = Some("codex".into());
        assert!(!can_run(&task, &claude_only));
        assert!(!can_run(&task, &[]));
        assert!(can_run(&task, &["claude".into(), "codex".into()]));
        assert_eq!(as_search_list(&claude_only), ",claude,");
        assert!(check_advertised(&vec!["x".to_owned(); 33]).is_err());
        assert!(check_advertised(&["any".to_owned()]).is_err());
    }

    #[test]
    fn a_task_falls_back_once() {
        let mut task = Task::new("ws".into(), "t", crate::core::time::now());
        assert_eq!(fall_back(&mut task, "quota"), None);
        task.runner = Some("claude".into());
        task.model = Some("claude-opus-4-5".into());
        assert_eq!(fall_back(&mut task, "quota"), None, "no fallback named");
        task.fallback_runner = Some("codex".into());
        let said = fall_back(&mut task, "its provider's quota is spent").unwrap();
        assert!(said.contains("next attempt runs with codex"), "{said}");
        assert_eq!(task.runner.as_deref(), Some("codex"));
        assert_eq!(task.model, None);
        assert_eq!(
            fall_back(&mut task, "again"),
            None,
            "already on the fallback"
        );
    }

    #[test]
    fn prices_match_the_longest_prefix_and_unknown_models_their_flagship() {
        assert_eq!(price_of("gpt-5-mini-2025-08-07").input, 0.25);
        assert_eq!(price_of("gpt-5-codex").output, 10.0);
        assert_eq!(price_of("gemini-2.5-flash-lite").output, 0.4);
        assert_eq!(price_of("gemini-2.5-flash").output, 2.5);
        assert_eq!(price_of("models/gemini-2.5-pro").input, 1.25);
        assert_eq!(price_of("claude-haiku-4-5").input, 1.0);
        assert_eq!(price_of("claude-opus-4-5").output, 25.0);
        assert_eq!(price_of("gpt-7-turbo"), price_of("gpt-5"));
        assert_eq!(price_of("gemini-9-ultra"), price_of("gemini-2.5-pro"));
        assert_eq!(price_of("mystery"), price_of("claude-sonnet-4-5"));
        let tokens = Tokens {
            input: 1_000_000.0,
            cached_input: 1_000_000.0,
            cache_write: 0.0,
            output: 1_000_000.0,
        };
        assert!((cost_usd("gpt-5", tokens) - 11.375).abs() < 1e-9);
        let anthropic = Tokens {
            input: 1_000_000.0,
            cache_write: 1_000_000.0,
            ..Tokens::default()
        };
        assert!((cost_usd("claude-sonnet-4-5", anthropic) - 6.75).abs() < 1e-9);
    }
}
