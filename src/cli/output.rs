//! How the terminal commands print: aligned tables and short sentences for people,
//! the API's JSON for scripts (`--json`).

use serde_json::Value;

/// Prints rows under headers, each column as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints JSON for scripts: compact, one document per line.
pub fn json(value: &Value) {
    println!("{value}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
