//! How the terminal commands print: aligned tables and short sentences for people,
//! the API's JSON for scripts (`--json`).

use serde_json::Value;
use unicode_width::UnicodeWidthStr;

/// Prints rows under headers, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", table_text(headers, rows));
}

/// The table as text. Widths are terminal columns (a CJK character or an emoji takes
/// two), not characters, so wide titles keep the columns aligned.
fn table_text(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.width()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.width()))))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut text = line(headers.to_vec());
    for row in rows {
        text += &line(row.iter().map(String::as_str).collect());
    }
    text
}

/// Prints JSON for scripts: compact, one document per line.
/// How long ago, for people: `45s`, `12m`, `3h`, `2d`.
pub fn ago(at: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (chrono::Utc::now() - at).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn json(value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("cannot write the answer as JSON: {e}"),
    }
}

/// An optional field as a table cell.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// One entry of a runner's stream as a line of text: its text where it has some
/// (plain strings, `{"text": …}`, Claude Code's stream-json assistant messages),
/// else the compact JSON.
pub fn message_text(message: &Value) -> String {
    if let Some(s) = message.as_str() {
        return s.to_owned();
    }
    if let Some(s) = message["text"].as_str() {
        return s.to_owned();
    }
    if let Some(content) = message["message"]["content"].as_array() {
        let texts: Vec<&str> = content.iter().filter_map(|c| c["text"].as_str()).collect();
        if !texts.is_empty() {
            return texts.join("\n");
        }
    }
    if let Some(s) = message["result"].as_str() {
        return s.to_owned();
    }
    message.to_string()
}

/// Whether standard output should be coloured: a terminal, and `NO_COLOR` unset or
/// empty (<https://no-color.org>).
pub fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wide_characters_keep_columns_aligned() {
        let rows = vec![
            vec!["修复登录".to_owned(), "pending".to_owned()],
            vec!["🚀 ship".to_owned(), "running".to_owned()],
            vec!["plain".to_owned(), "done".to_owned()],
        ];
        let text = table_text(&["TITLE", "STATUS"], &rows);
        let starts: Vec<usize> = text
            .lines()
            .map(|l| {
                let at = l.rfind("  ").unwrap() + 2;
                l[..at].width()
            })
            .collect();
        assert_eq!(starts, [10, 10, 10, 10], "{text}");
    }

    #[test]
    fn messages_show_their_text() {
        assert_eq!(message_text(&json!("plain")), "plain");
        assert_eq!(
            message_text(&json!({"type": "user_reply", "text": "yes"})),
            "yes"
        );
        let assistant = json!({"type": "assistant", "message": {"content": [{"type": "text", "text": "Done."}]}});
        assert_eq!(message_text(&assistant), "Done.");
        assert_eq!(message_text(&json!({"n": 1})), "{\"n\":1}");
    }
}
