//! A run's messages as people read them: `buildd task logs` and `task watch`, and the
//! `get_task_logs` tool of `/mcp`.
//!
//! Claude Code's stream-json is made for programs: a 2 KB `system/init` object, each
//! tool call and its result a JSON object of their own. Here each becomes a line or
//! a few: assistant text as text, a tool call as its tool and main argument, a tool
//! result cut to a few lines, the final result with its turns and cost, questions and
//! answers marked. What is not stream-json (a `--command` runner's plain output)
//! shows as it came. `--json` keeps the raw messages instead.

use serde_json::Value;

use super::messages::QUESTION_MARKER;
use super::model::Worker;

/// Lines of a tool result shown before the rest is counted.
const RESULT_LINES: usize = 3;
/// Characters of one line shown before it is cut.
const LINE_CHARS: usize = 200;

/// ANSI styles, used only on a terminal without `NO_COLOR`.
#[derive(Debug, Clone, Copy)]
enum Style {
    Dim,
    Tool,
    Question,
    Answer,
    Success,
    Failure,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Style::Dim => "2",
            Style::Tool => "36",
            Style::Question => "1;33",
            Style::Answer => "32",
            Style::Success => "1;32",
            Style::Failure => "1;31",
        }
    }
}

/// The line that opens one attempt's messages: which worker, which attempt, how it
/// stands and what it cost.
pub fn attempt_header(worker: &Worker, attempt: usize) -> String {
    format!(
        "── {} · attempt {attempt} · {} · ${:.2} ──",
        worker.id, worker.status, worker.cost_usd
    )
}

/// Renders one run's messages in order. It remembers the run's working directory (from
/// `system/init`), so that paths under it are shown relative to it.
#[derive(Debug, Default)]
pub struct Transcript {
    colour: bool,
    cwd: Option<String>,
}

impl Transcript {
    pub fn new(colour: bool) -> Self {
        Transcript { colour, cwd: None }
    }

    fn paint(&self, style: Style, text: &str) -> String {
        if self.colour {
            format!("\x1b[{}m{text}\x1b[0m", style.code())
        } else {
            text.to_owned()
        }
    }

    /// The lines one message shows as; none for messages that say nothing to people.
    pub fn lines(&mut self, message: &Value) -> Vec<String> {
        let Some(object) = message.as_object() else {
            return match message {
                Value::String(text) => text.lines().map(str::to_owned).collect(),
                other => vec![other.to_string()],
            };
        };
        let text = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or("");
        match text("type") {
            "system" => self.system(message),
            "assistant" => self.assistant(message),
            "user" => self.user(message),
            "result" => vec![self.result(message)],
            "user_reply" => vec![self.paint(Style::Answer, &format!("↳ you: {}", text("text")))],
            "user_instruction" => {
                vec![self.paint(Style::Answer, &format!("↳ instruction: {}", text("text")))]
            }
            "output" => text("text").lines().map(str::to_owned).collect(),
            "buildd_cut" => vec![format!(
                "{} {}",
                self.paint(
                    Style::Dim,
                    &format!(
                        "✂ a {} of {} bytes, cut:",
                        object
                            .get("originalType")
                            .and_then(Value::as_str)
                            .unwrap_or("line"),
                        object.get("originalBytes").unwrap_or(&Value::Null)
                    )
                ),
                shorten(text("text"))
            )],
            "buildd_notice" => vec![self.paint(Style::Dim, &format!("! {}", text("text")))],
            _ => vec![shorten(&message.to_string())],
        }
    }

    fn system(&mut self, message: &Value) -> Vec<String> {
        let subtype = message["subtype"].as_str().unwrap_or("system");
        if subtype != "init" {
            return vec![self.paint(Style::Dim, &format!("● {subtype}"))];
        }
        self.cwd = message["cwd"].as_str().map(str::to_owned);
        let mut line = format!(
            "● session {}",
            message["session_id"].as_str().unwrap_or("?")
        );
        if let Some(model) = message["model"].as_str() {
            line += &format!(" · {model}");
        }
        vec![self.paint(Style::Dim, &line)]
    }

    fn assistant(&self, message: &Value) -> Vec<String> {
        let mut lines = Vec::new();
        for block in blocks(&message["message"]["content"]) {
            match block["type"].as_str() {
                Some("text") => {
                    for line in block["text"].as_str().unwrap_or("").lines() {
                        match line.trim().strip_prefix(QUESTION_MARKER) {
                            Some(question) => lines.push(
                                self.paint(Style::Question, &format!("? {}", question.trim())),
                            ),
                            None => lines.push(line.to_owned()),
                        }
                    }
                }
                Some("tool_use") => {
                    let name = block["name"].as_str().unwrap_or("tool");
                    let call = match self.main_argument(&block["input"]) {
                        Some(arg) => format!("→ {name} {arg}"),
                        None => format!("→ {name}"),
                    };
                    lines.push(self.paint(Style::Tool, &call));
                }
                Some("thinking") => {
                    let first = block["thinking"].as_str().unwrap_or("").lines().next();
                    lines.push(self.paint(
                        Style::Dim,
                        &format!("∴ {}", shorten(first.unwrap_or("thinking"))),
                    ));
                }
                _ => {}
            }
        }
        lines
    }

    /// What a tool call is about, in a few words: the command, the file, the pattern.
    fn main_argument(&self, input: &Value) -> Option<String> {
        let field = [
            "command",
            "file_path",
            "notebook_path",
            "path",
            "pattern",
            "url",
            "query",
            "description",
            "prompt",
        ]
        .iter()
        .find_map(|k| input[*k].as_str())
        .or_else(|| input.as_object()?.values().find_map(Value::as_str))?;
        let first = field.lines().next().unwrap_or("");
        Some(shorten(&self.relative(first)))
    }

    /// `path` relative to the run's working directory, when it is under it.
    fn relative(&self, path: &str) -> String {
        self.cwd
            .as_deref()
            .and_then(|cwd| path.strip_prefix(cwd))
            .and_then(|rest| rest.strip_prefix('/'))
            .map_or_else(|| path.to_owned(), str::to_owned)
    }

    fn user(&self, message: &Value) -> Vec<String> {
        let content = &message["message"]["content"];
        // The prompt, an answer or an instruction, as Claude Code echoes it back.
        if let Some(text) = content.as_str() {
            return self.echo(text);
        }
        let mut lines = Vec::new();
        for block in blocks(content) {
            match block["type"].as_str() {
                Some("tool_result") => {
                    let text = match &block["content"] {
                        Value::String(s) => s.clone(),
                        other => blocks(other)
                            .filter_map(|b| b["text"].as_str())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    };
                    let mark = if block["is_error"] == true {
                        "✗"
                    } else {
                        "←"
                    };
                    let text = self.relative_all(&text);
                    let mut shown = text.lines().take(RESULT_LINES).map(shorten);
                    let first = shown.next().unwrap_or_default();
                    lines.push(self.paint(Style::Dim, &format!("  {mark} {first}")));
                    for line in shown {
                        lines.push(self.paint(Style::Dim, &format!("    {line}")));
                    }
                    let more = text.lines().count().saturating_sub(RESULT_LINES);
                    if more > 0 {
                        lines.push(self.paint(Style::Dim, &format!("    … {more} more lines")));
                    }
                }
                Some("text") => lines.extend(self.echo(block["text"].as_str().unwrap_or(""))),
                _ => {}
            }
        }
        lines
    }

    /// A user message as sent: its first line, and how many lines follow.
    fn echo(&self, text: &str) -> Vec<String> {
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let more = text.lines().count().saturating_sub(1);
        let rest = if more > 0 {
            format!(" (+{more} lines)")
        } else {
            String::new()
        };
        vec![self.paint(Style::Dim, &format!("» {}{rest}", shorten(first)))]
    }

    /// `text` with every mention of the run's working directory made relative.
    fn relative_all(&self, text: &str) -> String {
        match &self.cwd {
            Some(cwd) => text.replace(&format!("{cwd}/"), ""),
            None => text.to_owned(),
        }
    }

    fn result(&self, message: &Value) -> String {
        let subtype = message["subtype"].as_str().unwrap_or("result");
        let failed = message["is_error"] == true || subtype != "success";
        let mut line = format!("■ {subtype}");
        if let Some(turns) = message["num_turns"].as_i64() {
            line += &format!(" · {turns} turn{}", if turns == 1 { "" } else { "s" });
        }
        if let Some(cost) = message["total_cost_usd"].as_f64() {
            line += &format!(" · ${cost:.4}");
        }
        if let Some(ms) = message["duration_ms"].as_f64() {
            line += &format!(" · {:.1} s", ms / 1000.0);
        }
        if failed && let Some(text) = message["result"].as_str() {
            line += &format!(": {}", shorten(text.lines().next().unwrap_or("")));
        }
        self.paint(
            if failed {
                Style::Failure
            } else {
                Style::Success
            },
            &line,
        )
    }
}

/// The content blocks of a message (none when it is not a list).
fn blocks(content: &Value) -> impl Iterator<Item = &Value> {
    content.as_array().into_iter().flatten()
}

/// One line cut to [`LINE_CHARS`] characters.
fn shorten(line: &str) -> String {
    if line.chars().count() <= LINE_CHARS {
        return line.to_owned();
    }
    let cut: String = line.chars().take(LINE_CHARS).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Renders a recorded transcript (one JSON message per line).
    fn render(recorded: &str, colour: bool) -> String {
        let mut transcript = Transcript::new(colour);
        let mut out = String::new();
        for line in recorded.lines().filter(|l| !l.trim().is_empty()) {
            let message: Value = serde_json::from_str(line).unwrap();
            for l in transcript.lines(&message) {
                out += &l;
                out.push('\n');
            }
        }
        out
    }

    /// Golden transcripts: the messages of real Claude Code runs (recorded by the
    /// agent test that names `BUILDD_RECORD_TRANSCRIPT`), and what people see.
    #[test]
    fn recorded_claude_code_runs_render_as_their_golden_text() {
        let cases = [(
            include_str!("../../tests/fixtures/transcripts/question-and-writes.jsonl"),
            include_str!("../../tests/fixtures/transcripts/question-and-writes.txt"),
        )];
        for (recorded, golden) in cases {
            assert_eq!(render(recorded, false), golden);
        }
    }

    #[test]
    fn colours_only_when_asked() {
        let result = r#"{"type":"result","subtype":"success","num_turns":2,"total_cost_usd":0.5}"#;
        assert_eq!(render(result, false), "■ success · 2 turns · $0.5000\n");
        assert_eq!(
            render(result, true),
            "\x1b[1;32m■ success · 2 turns · $0.5000\x1b[0m\n"
        );
    }

    #[test]
    fn long_results_are_cut_and_plain_output_shows_as_it_came() {
        let mut t = Transcript::new(false);
        let many: Vec<String> = (1..=10).map(|i| format!("line {i}")).collect();
        let result = json!({"type": "user", "message": {"content": [
            {"type": "tool_result", "content": many.join("\n"), "is_error": true}]}});
        assert_eq!(
            t.lines(&result),
            [
                "  ✗ line 1",
                "    line 2",
                "    line 3",
                "    … 7 more lines"
            ]
        );
        assert_eq!(t.lines(&json!("plain text")), ["plain text"]);
        assert_eq!(
            t.lines(&json!({"type": "output", "text": "a\nb"})),
            ["a", "b"]
        );
        let call = json!({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "name": "Bash", "input": {"command": "cargo test\n--all", "timeout": 5}}]}});
        assert_eq!(t.lines(&call), ["→ Bash cargo test"]);
        let failed = json!({"type": "result", "subtype": "error_max_turns", "is_error": true,
                            "num_turns": 1, "result": "Reached the limit"});
        assert_eq!(
            t.lines(&failed),
            ["■ error_max_turns · 1 turn: Reached the limit"]
        );
        let long = "x".repeat(500);
        assert_eq!(t.lines(&json!({"n": long})).concat().chars().count(), 201);
    }
}
