//! A run's output, from the runner's pipe to the server, losing nothing on the way.
//!
//! - The pipe is read as bytes by a task of its own ([`read_output`]) that never
//!   waits for anything but the pipe, so the runner can never block on a full pipe,
//!   whatever the server or the job is doing. Lines are split on `\n` and decoded
//!   lossily (bytes that are not UTF-8 become U+FFFD).
//! - Each line is parsed whole (for session, turns, cost and the final result), then
//!   stored as a message of at most [`MAX_MESSAGE_BYTES`] of JSON; a longer one is
//!   replaced by a `buildd_cut` message that keeps its type, its first part and its
//!   original size. A line is held in memory up to [`MAX_LINE_HELD`]; bytes beyond
//!   that are counted, not kept.
//! - Messages wait in an [`Outbox`], numbered 1, 2, … per worker. Each batch sent
//!   says the number of its first message (`from`), and the server skips numbers it
//!   already has: a retry after a lost answer, or the spool sending what the live
//!   reporter already sent, stores nothing twice.
//! - Batches are bounded in bytes ([`BATCH_BYTES`]) as well as in count, well under
//!   the server's body limit. A batch the server refuses as bad input is dropped
//!   alone; the rest, and the result, still go.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::Notify;
use tracing::warn;

use super::runner::{Finish, OutputParser};
use crate::client::{Client, ClientError};
use crate::core::validate::MAX_MESSAGES_PER_BATCH;

/// The most JSON one stored message may take. Claude Code prints a whole file in one
/// line when it writes one; such lines are cut to this, with a marker.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// How much of a cut line its marker keeps. Even if every character needs a six-byte
/// escape, the marker stays under [`MAX_MESSAGE_BYTES`].
const CUT_PREVIEW_BYTES: usize = 32 * 1024;
/// The most of one line held in memory, for the parser: enough for any stream-json
/// line a run prints in practice; the rest of a longer line is counted and dropped.
pub const MAX_LINE_HELD: usize = 16 * 1024 * 1024;
/// The most message bytes in one request: half the server's body limit, so that a
/// batch with its envelope always fits.
pub const BATCH_BYTES: usize = crate::server::MAX_BODY_BYTES / 2;
/// Output kept while the server is away. Beyond it the oldest messages are dropped,
/// with a notice, rather than letting a long outage eat the machine's memory.
const MAX_BUFFERED_BYTES: usize = 32 * 1024 * 1024;

/// Messages not yet taken by the server, numbered from `next` on.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outbox {
    /// The number of the first message in `messages`. Numbers start at 1.
    next: i64,
    messages: VecDeque<Box<RawValue>>,
    #[serde(skip)]
    bytes: usize,
    /// Messages dropped for want of room, told by the notice at the front.
    #[serde(skip)]
    dropped: u64,
    /// Whether the front message is that notice.
    #[serde(skip)]
    notice: bool,
}

impl Outbox {
    pub fn new() -> Self {
        Outbox {
            next: 1,
            ..Outbox::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Adds one message (already bounded by [`bounded`]). When the outbox is full,
    /// its oldest messages go, and a notice at its front says how many.
    pub fn push(&mut self, message: Box<RawValue>) {
        let mut dropped = 0;
        while self.bytes + message.get().len() > MAX_BUFFERED_BYTES && !self.messages.is_empty() {
            if !std::mem::take(&mut self.notice) {
                dropped += 1;
            }
            self.pop_front();
        }
        if dropped > 0 {
            self.dropped += dropped;
            let notice = to_raw(&serde_json::json!({
                "type": "buildd_notice",
                "text": format!("{} lines of output were dropped while the server could not be reached", self.dropped),
            }));
            // The notice takes the number of the last message it stands for, which
            // the server never had.
            self.next -= 1;
            self.bytes += notice.get().len();
            self.messages.push_front(notice);
            self.notice = true;
        }
        self.bytes += message.get().len();
        self.messages.push_back(message);
    }

    fn pop_front(&mut self) {
        if let Some(m) = self.messages.pop_front() {
            self.bytes -= m.get().len();
            self.next += 1;
        }
    }

    /// The first messages that fit in one request, and the number of the first.
    fn batch(&self) -> (i64, &[Box<RawValue>]) {
        let (front, _) = self.messages.as_slices();
        // The deque is contiguous after `make_contiguous`; callers ensure it.
        let mut bytes = 0;
        let mut n = 0;
        for m in front.iter().take(MAX_MESSAGES_PER_BATCH) {
            bytes += m.get().len() + 1;
            if n > 0 && bytes > BATCH_BYTES {
                break;
            }
            n += 1;
        }
        (self.next, &front[..n])
    }

    /// Removes the first `n` messages: taken by the server, or refused by it.
    fn pop(&mut self, n: usize) {
        if n > 0 && std::mem::take(&mut self.notice) {
            self.dropped = 0;
        }
        for _ in 0..n {
            self.pop_front();
        }
    }

    /// Recomputes what [`Outbox`] does not store (after reading one from the spool).
    pub fn restored(mut self) -> Self {
        self.bytes = self.messages.iter().map(|m| m.get().len()).sum();
        self.next = self.next.max(1);
        self
    }
}

/// Sends what `outbox` holds, batch by batch, removing each batch the server took.
/// A batch refused as bad input (400, 413, 422) is logged and dropped alone. Stops at
/// the first failure that says the server is away (the rest stays for later) or that
/// the worker is not ours any more.
pub async fn deliver(
    client: &Client,
    worker_id: &str,
    outbox: &Mutex<Outbox>,
) -> Result<(), ClientError> {
    loop {
        let (from, body) = {
            let mut out = lock(outbox);
            if out.is_empty() {
                return Ok(());
            }
            out.messages.make_contiguous();
            let (from, batch) = out.batch();
            (from, batch_body(from, batch))
        };
        let count = body.count;
        match client.append_messages(worker_id, body.text).await {
            Ok(_) => {}
            Err(e) if matches!(e.status(), Some(400 | 413 | 422)) => {
                warn!(worker = %worker_id, from, count, error = %e, "the server refused a batch of the run's output; dropping that batch only");
            }
            Err(e) => return Err(e),
        }
        let mut out = lock(outbox);
        // Only what is still at the front: nothing else removes messages meanwhile,
        // but a full outbox may have dropped some of its oldest.
        let taken = (from + count as i64 - out.next).clamp(0, out.len() as i64);
        out.pop(taken as usize);
    }
}

/// A batch's request body, written out once: `{"from":N,"messages":[…]}`.
struct BatchBody {
    text: String,
    count: usize,
}

fn batch_body(from: i64, batch: &[Box<RawValue>]) -> BatchBody {
    #[derive(Serialize)]
    struct Body<'a> {
        from: i64,
        messages: &'a [Box<RawValue>],
    }
    let text = serde_json::to_string(&Body {
        from,
        messages: batch,
    })
    .unwrap_or_default();
    BatchBody {
        text,
        count: batch.len(),
    }
}

fn to_raw(value: &Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).expect("a Value serialises to valid JSON")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `message` as stored: as it is when its JSON fits in [`MAX_MESSAGE_BYTES`], else a
/// `buildd_cut` marker with its type, the first part of `line` and the original size.
pub fn bounded(message: &Value, line: &str, original_bytes: usize) -> Box<RawValue> {
    // A line over the bound needs no serialising to know it is cut.
    if original_bytes <= MAX_MESSAGE_BYTES {
        let whole = message.to_string();
        if whole.len() <= MAX_MESSAGE_BYTES {
            return RawValue::from_string(whole).expect("a Value serialises to valid JSON");
        }
    }
    let preview = &line[..line.floor_char_boundary(CUT_PREVIEW_BYTES)];
    to_raw(&serde_json::json!({
        "type": "buildd_cut",
        "originalType": message["type"],
        "originalBytes": original_bytes,
        "text": preview,
    }))
}

/// `text` when it has at most `max` characters, else its first part with a note of
/// how long it was: for results, errors and questions, which the server bounds.
pub fn shortened(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let note = format!("\n… [cut by buildd: {} bytes in all]", text.len());
    let keep = max.saturating_sub(note.chars().count());
    let cut: String = text.chars().take(keep).collect();
    cut + &note
}

/// What a run's output has said so far, beyond its messages.
#[derive(Debug, Default, Clone)]
pub struct RunReport {
    pub session_id: Option<String>,
    /// Turns and cost of this run (not counting earlier runs of the task).
    pub turns: Option<i64>,
    pub cost_usd: Option<f64>,
    /// The model the run said it uses.
    pub model: Option<String>,
    pub finish: Option<Finish>,
    /// How many messages sent on stdin the run has taken.
    pub inputs_taken: usize,
    /// Whether the run finished after it took its last message: it has nothing more
    /// to do unless sent more.
    pub idle: bool,
    /// The last non-empty line, shortened: the result of a runner that prints no
    /// `result` line.
    pub last_line: String,
    /// Lines read, and bytes (newlines not counted).
    pub lines: u64,
    pub bytes: u64,
}

/// What the reader and the job share while a run goes on.
pub struct RunOutput {
    pub outbox: Mutex<Outbox>,
    pub report: Mutex<RunReport>,
    /// Woken after each line read.
    pub changed: Notify,
}

impl RunOutput {
    pub fn new(outbox: Outbox) -> Arc<Self> {
        Arc::new(RunOutput {
            outbox: Mutex::new(outbox),
            report: Mutex::new(RunReport::default()),
            changed: Notify::new(),
        })
    }

    /// Forgets what the previous run said; the outbox and its numbering go on.
    pub fn start_run(&self) {
        *lock(&self.report) = RunReport::default();
    }

    pub fn report(&self) -> RunReport {
        lock(&self.report).clone()
    }

    /// Takes the outbox, leaving an empty one numbered on after it.
    pub fn take_outbox(&self) -> Outbox {
        let mut out = lock(&self.outbox);
        let next = out.next + out.len() as i64;
        std::mem::replace(
            &mut *out,
            Outbox {
                next,
                ..Outbox::default()
            },
        )
    }
}

/// The longest last line kept as a fallback result.
const MAX_LAST_LINE: usize = 64 * 1024;

/// Reads the runner's output to its end: each line parsed, bounded and queued.
/// Waits for nothing but the pipe.
pub async fn read_output(
    pipe: impl AsyncRead + Unpin,
    mut parser: Box<dyn OutputParser>,
    output: Arc<RunOutput>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut line: Vec<u8> = Vec::new();
    let mut length = 0usize;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok(chunk) => chunk,
            Err(e) => {
                warn!(error = %e, "cannot read the runner's output any more");
                break;
            }
        };
        if chunk.is_empty() {
            break;
        }
        let (part, ends_line) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        let room = MAX_LINE_HELD.saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        length += part.len();
        let used = part.len() + usize::from(ends_line);
        reader.consume(used);
        if ends_line {
            take_line(&line, length, parser.as_mut(), &output);
            line.clear();
            length = 0;
        }
    }
    if length > 0 {
        take_line(&line, length, parser.as_mut(), &output);
    }
}

fn take_line(bytes: &[u8], length: usize, parser: &mut dyn OutputParser, output: &RunOutput) {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    if text.trim().is_empty() {
        return;
    }
    let parsed = parser.line(text);
    let message = bounded(&parsed.message, text, length);
    {
        let mut report = lock(&output.report);
        report.lines += 1;
        report.bytes += length as u64;
        report.last_line = shortened(text, MAX_LAST_LINE);
        if parsed.session_id.is_some() {
            report.session_id = parsed.session_id;
        }
        if parsed.turns.is_some() {
            report.turns = parsed.turns;
        }
        if parsed.cost_usd.is_some() {
            report.cost_usd = parsed.cost_usd;
        }
        if parsed.model.is_some() {
            report.model = parsed.model;
        }
        if parsed.took_input {
            report.inputs_taken += 1;
            report.idle = false;
        }
        if parsed.finish.is_some() {
            report.finish = parsed.finish;
            report.idle = true;
        }
    }
    lock(&output.outbox).push(message);
    output.changed.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::command::CommandRunner;
    use crate::agent::runner::Runner;

    fn raw(v: Value) -> Box<RawValue> {
        to_raw(&v)
    }

    async fn read(bytes: Vec<u8>) -> (Vec<Value>, RunReport) {
        let runner = CommandRunner {
            name: "command".into(),
            command: String::new(),
        };
        let output = RunOutput::new(Outbox::new());
        read_output(&bytes[..], runner.parser(), output.clone()).await;
        let out = output.take_outbox();
        let messages = out
            .messages
            .iter()
            .map(|m| serde_json::from_str(m.get()).unwrap())
            .collect();
        (messages, output.report())
    }

    #[tokio::test]
    async fn bytes_that_are_not_utf8_become_replacement_characters_and_nothing_after_is_lost() {
        let mut bytes = b"before\n\xff\xfe broken\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'z', 1_000_000));
        bytes.extend(b"\nlast");
        let (messages, report) = read(bytes).await;
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[0]["text"], "before");
        assert_eq!(messages[1]["text"], "\u{FFFD}\u{FFFD} broken");
        assert_eq!(messages[2]["type"], "buildd_cut");
        assert_eq!(messages[2]["originalBytes"], 1_000_000);
        assert_eq!(messages[2]["originalType"], "output");
        assert_eq!(
            messages[3]["text"], "last",
            "a last line without a newline counts"
        );
        assert_eq!(report.last_line, "last");
        assert_eq!(report.lines, 4);
    }

    #[tokio::test]
    async fn a_huge_stream_json_line_is_parsed_before_it_is_cut() {
        let file = "x".repeat(3_000_000);
        let line = serde_json::json!({
            "type": "result", "subtype": "success", "is_error": false,
            "result": file, "num_turns": 2, "total_cost_usd": 0.25, "session_id": "s-9",
        });
        let (messages, report) = read(format!("{line}\n").into_bytes()).await;
        assert_eq!(messages[0]["type"], "buildd_cut");
        assert_eq!(messages[0]["originalType"], "result");
        assert_eq!(report.session_id.as_deref(), Some("s-9"));
        assert_eq!(report.cost_usd, Some(0.25));
        assert_eq!(report.finish.unwrap().text.len(), 3_000_000);
        assert!(messages[0].to_string().len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn batches_stay_under_the_byte_bound_and_count_from_their_first_number() {
        let mut out = Outbox::new();
        let big = "y".repeat(200 * 1024);
        for _ in 0..5 {
            out.push(raw(serde_json::json!({ "type": "output", "text": big })));
        }
        out.messages.make_contiguous();
        let (from, batch) = out.batch();
        assert_eq!((from, batch.len()), (1, 2));
        let body = batch_body(from, batch);
        assert!(body.text.len() < crate::server::MAX_BODY_BYTES);
        out.pop(2);
        let (from, batch) = out.batch();
        assert_eq!((from, batch.len()), (3, 2));
        let many: Vec<_> = (0..2500).map(|i| raw(serde_json::json!(i))).collect();
        let mut out = Outbox::new();
        many.into_iter().for_each(|m| out.push(m));
        out.messages.make_contiguous();
        assert_eq!(out.batch().1.len(), MAX_MESSAGES_PER_BATCH);
    }

    #[test]
    fn a_full_outbox_drops_its_oldest_with_a_notice_and_keeps_numbering() {
        let mut out = Outbox::new();
        let line = raw(serde_json::json!("z".repeat(1024 * 1024)));
        for _ in 0..40 {
            out.push(line.clone());
        }
        assert!(out.bytes <= MAX_BUFFERED_BYTES + 1024 * 1024);
        assert_eq!(out.next + out.len() as i64, 41, "numbers are never reused");
        let first: Value = serde_json::from_str(out.messages[0].get()).unwrap();
        assert_eq!(first["type"], "buildd_notice");
        let dropped = 41 - out.len() as u64;
        assert_eq!(out.dropped, dropped);
        assert!(
            first["text"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{dropped} lines"))
        );
        let restored: Outbox =
            serde_json::from_str::<Outbox>(&serde_json::to_string(&out).unwrap())
                .unwrap()
                .restored();
        assert_eq!((restored.next, restored.bytes), (out.next, out.bytes));
    }

    #[test]
    fn long_text_is_shortened_with_a_note() {
        assert_eq!(shortened("short", 10), "short");
        let cut = shortened(&"é".repeat(100), 50);
        assert_eq!(cut.chars().count(), 50);
        assert!(cut.ends_with("[cut by buildd: 200 bytes in all]"));
    }
}
