//! Numbered batches of a runner's messages: a batch sent twice is stored once.
//!
//! An agent numbers its messages for a worker 1, 2, … and says, with each batch, the
//! number of its first message. The server remembers how far the worker's agent got
//! (`taken`) and stores only the messages numbered above it. A retry after a lost
//! answer, or a spooled report that repeats what the live reporter already sent, so
//! stores nothing twice. Gaps are fine: an agent that dropped a batch the server
//! refused simply goes on with the next numbers.

use serde_json::{Value, json};

/// The line that marks a question: the agent tells runners to end their final message
/// with `QUESTION: …` to ask a person something, and transcripts mark such lines.
pub const QUESTION_MARKER: &str = "QUESTION:";

/// The `type` of the message a person's answer to a worker's question is stored as,
/// in the worker's stream beside the runner's own.
pub const USER_REPLY: &str = "user_reply";

/// A person's answer, as a message of the worker's stream.
pub fn user_reply(text: &str) -> Value {
    json!({ "type": USER_REPLY, "text": text })
}

/// The `type` of the message a person's instruction to a running worker is stored as.
pub const INSTRUCTION: &str = "user_instruction";

/// A person's instruction to a running worker, as a message of its stream.
pub fn instruction(text: &str) -> Value {
    json!({ "type": INSTRUCTION, "text": text })
}

/// Whether a message of a worker's stream is a person's instruction.
pub fn is_instruction(message: &Value) -> bool {
    message.get("type").and_then(Value::as_str) == Some(INSTRUCTION)
}

/// Whether a message of a worker's stream is a person's answer.
pub fn is_user_reply(message: &Value) -> bool {
    message.get("type").and_then(Value::as_str) == Some(USER_REPLY)
}

/// Which messages of a batch are new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fresh {
    /// How many of the batch's first messages the server already has.
    pub skip: usize,
    /// How far the agent got, counting this batch.
    pub taken: i64,
}

/// For a batch of `count` messages numbered from `from` (unnumbered: `None`, all new),
/// given that the messages up to `taken` were stored before.
pub fn fresh(taken: i64, from: Option<i64>, count: usize) -> Fresh {
    let Some(from) = from else {
        return Fresh { skip: 0, taken };
    };
    let count_i = i64::try_from(count).unwrap_or(i64::MAX);
    let skip = (taken - from + 1).clamp(0, count_i);
    Fresh {
        skip: usize::try_from(skip).unwrap_or(count),
        taken: taken.max(from.saturating_add(count_i) - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_overlapping_batches_store_each_message_once() {
        assert_eq!(fresh(0, Some(1), 3), Fresh { skip: 0, taken: 3 });
        // The same batch again, after its answer was lost.
        assert_eq!(fresh(3, Some(1), 3), Fresh { skip: 3, taken: 3 });
        // A batch overlapping what was taken.
        assert_eq!(fresh(3, Some(2), 4), Fresh { skip: 2, taken: 5 });
        // A gap left by a dropped batch.
        assert_eq!(fresh(3, Some(10), 2), Fresh { skip: 0, taken: 11 });
        // Unnumbered batches are always new and move nothing.
        assert_eq!(fresh(7, None, 2), Fresh { skip: 0, taken: 7 });
    }
}
