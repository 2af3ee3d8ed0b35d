//! What a run changed: the diff of its branch against the commit it started from,
//! with per-file counts, bounded so that a run that rewrote a vendored tree still
//! reports (its counts whole, its patch cut and marked as cut).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::RuleError;

/// The most patch text kept per run (1 MiB); past it the patch is cut at a line and
/// `truncated` is set. The per-file counts are always whole.
pub const MAX_PATCH_BYTES: usize = 1024 * 1024;
/// The most files listed per run.
pub const MAX_FILES: usize = 10_000;
/// The largest `PUT /api/workers/:id/diff` body: the patch, JSON-escaped, and the list.
pub const MAX_DIFF_BODY_BYTES: usize = 8 * 1024 * 1024;

/// One file a run changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileChange {
    #[schema(min_length = 1, max_length = 4096, pattern = r"^[^\x00]+$")]
    pub path: String,
    /// The path it had before, when it was renamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 4096, pattern = r"^[^\x00]+$")]
    pub old_path: Option<String>,
    /// Lines added and removed; 0 and 0 for a binary file.
    #[schema(minimum = 0)]
    pub added: i64,
    #[schema(minimum = 0)]
    pub removed: i64,
    #[serde(default)]
    pub binary: bool,
}

/// `PUT /api/workers/:id/diff`: what the agent recorded at the end of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewDiff {
    /// The commit the run started from.
    #[schema(min_length = 4, max_length = 64, pattern = r"^[0-9a-f]{4,64}$")]
    pub base_sha: String,
    /// The branch's commit when the run ended (none: the run committed nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 4, max_length = 64, pattern = r"^[0-9a-f]{4,64}$")]
    pub head_sha: Option<String>,
    #[schema(max_items = 10000)]
    pub files: Vec<FileChange>,
    /// The unified diff (`git diff`), at most 1 MiB.
    #[schema(max_length = 1048576, pattern = r"^[^\x00]*$")]
    pub patch: String,
    /// The patch was cut at [`MAX_PATCH_BYTES`]; `files` still lists every file.
    #[serde(default)]
    pub truncated: bool,
}

/// A recorded diff, as `GET /api/workers/:id/diff` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Diff {
    pub worker_id: String,
    pub task_id: String,
    /// The run's branch.
    pub branch: Option<String>,
    #[serde(flatten)]
    pub change: NewDiff,
    /// Lines added and removed over all files.
    pub added: i64,
    pub removed: i64,
    pub created_at: DateTime<Utc>,
}

impl Diff {
    pub fn new(
        worker_id: &str,
        task_id: &str,
        branch: Option<String>,
        change: NewDiff,
        created_at: DateTime<Utc>,
    ) -> Diff {
        Diff {
            worker_id: worker_id.to_owned(),
            task_id: task_id.to_owned(),
            branch,
            added: change.files.iter().map(|f| f.added).sum(),
            removed: change.files.iter().map(|f| f.removed).sum(),
            change,
            created_at,
        }
    }
}

/// Checks a diff an agent sent against the limits above.
pub fn check(diff: &NewDiff) -> Result<(), RuleError> {
    let sha = |name: &str, sha: &str| {
        if (4..=64).contains(&sha.len())
            && sha
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            Ok(())
        } else {
            Err(RuleError::Invalid(format!(
                "{name} must be a commit SHA in lower-case hex"
            )))
        }
    };
    sha("baseSha", &diff.base_sha)?;
    if let Some(head) = &diff.head_sha {
        sha("headSha", head)?;
    }
    if diff.patch.len() > MAX_PATCH_BYTES {
        return Err(RuleError::Invalid(format!(
            "patch must be at most {MAX_PATCH_BYTES} bytes; cut it and set truncated"
        )));
    }
    if diff.files.len() > MAX_FILES {
        return Err(RuleError::Invalid(format!(
            "files must list at most {MAX_FILES} files"
        )));
    }
    for file in &diff.files {
        let bad_path = |p: &str| p.is_empty() || p.len() > 4096 || p.contains('\0');
        if bad_path(&file.path) || file.old_path.as_deref().is_some_and(bad_path) {
            return Err(RuleError::Invalid(
                "each file needs a path of 1 to 4096 characters, without NUL".into(),
            ));
        }
        if file.added < 0 || file.removed < 0 {
            return Err(RuleError::Invalid(
                "added and removed must not be negative".into(),
            ));
        }
    }
    if diff.patch.contains('\0') {
        return Err(RuleError::Invalid(super::validate::NUL_REFUSED.into()));
    }
    Ok(())
}

/// `patch` cut to at most `limit` bytes at a line's end, and whether it was cut.
pub fn bounded(patch: String, limit: usize) -> (String, bool) {
    if patch.len() <= limit {
        return (patch, false);
    }
    let mut end = limit;
    while !patch.is_char_boundary(end) {
        end -= 1;
    }
    let end = patch[..end].rfind('\n').map_or(0, |i| i + 1);
    (patch[..end].to_owned(), true)
}

/// The files of `git diff --numstat -z` output: `ADDED\tREMOVED\tPATH\0`, or for a
/// rename `ADDED\tREMOVED\t\0OLD\0NEW\0`; `-` counts mark a binary file.
pub fn parse_numstat(output: &str) -> Vec<FileChange> {
    let mut fields = output.split('\0');
    let mut files = Vec::new();
    while let Some(entry) = fields.next() {
        let mut parts = entry.splitn(3, '\t');
        let (Some(added), Some(removed), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (path, old_path) = if path.is_empty() {
            let old = fields.next().unwrap_or_default().to_owned();
            (fields.next().unwrap_or_default().to_owned(), Some(old))
        } else {
            (path.to_owned(), None)
        };
        let binary = added == "-" && removed == "-";
        files.push(FileChange {
            path,
            old_path,
            added: added.parse().unwrap_or(0),
            removed: removed.parse().unwrap_or(0),
            binary,
        });
    }
    files
}

/// The review a person sends on a run's diff: comments on lines, and a summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReviewBody {
    #[schema(min_items = 1, max_items = 200)]
    pub comments: Vec<ReviewComment>,
    /// What to do overall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 65536, pattern = r"^[^\x00]*$")]
    pub summary: Option<String>,
}

/// A comment on one line of the diff: the line's number in the file after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReviewComment {
    #[schema(
        min_length = 1,
        max_length = 4096,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub path: String,
    #[schema(minimum = 1)]
    pub line: i64,
    #[schema(
        min_length = 1,
        max_length = 65536,
        pattern = r"^[^\x00]*[^\s\x00][^\x00]*$"
    )]
    pub body: String,
}

/// The most comments one review may carry.
pub const MAX_REVIEW_COMMENTS: usize = 200;

/// Checks a review and writes the follow-up's prompt: every comment with its file and
/// line, then the summary.
pub fn review_prompt(review: &ReviewBody) -> Result<String, RuleError> {
    let summary = review
        .summary
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if review.comments.is_empty() {
        return Err(RuleError::Invalid(
            "a review needs a comment on a line (for a note without one, follow the task up)"
                .into(),
        ));
    }
    if review.comments.len() > MAX_REVIEW_COMMENTS {
        return Err(RuleError::Invalid(format!(
            "a review may carry at most {MAX_REVIEW_COMMENTS} comments"
        )));
    }
    // The first line is the follow-up's title.
    let n = review.comments.len();
    let mut prompt = format!(
        "Address the review of this change ({n} comment{})\n\
         A reviewer read the change you made on this branch and asks for changes. \
         Address each comment (file:line: comment), then commit.\n",
        if n == 1 { "" } else { "s" }
    );
    for (i, c) in review.comments.iter().enumerate() {
        super::validate::text(
            &format!("comments[{i}].body"),
            &c.body,
            super::validate::MAX_COMMENT_LEN,
        )?;
        if c.path.trim().is_empty() || c.path.len() > 4096 || c.path.contains('\0') {
            return Err(RuleError::Invalid(format!(
                "comments[{i}].path must name a file"
            )));
        }
        if c.line < 1 {
            return Err(RuleError::Invalid(format!(
                "comments[{i}].line must be 1 or more"
            )));
        }
        prompt += &format!("\n{}:{}: {}", c.path, c.line, c.body.trim());
    }
    if let Some(summary) = summary {
        super::validate::optional_text("summary", Some(summary), super::validate::MAX_COMMENT_LEN)?;
        prompt += &format!("\n\nOverall: {summary}");
    }
    Ok(prompt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numstat_reads_edits_renames_and_binaries() {
        let out = "3\t1\tsrc/a.rs\0-\t-\tlogo.png\0\x30\t0\t\0old name.txt\0new name.txt\0";
        let files = parse_numstat(out);
        assert_eq!(files.len(), 3);
        assert_eq!(
            (files[0].path.as_str(), files[0].added, files[0].removed),
            ("src/a.rs", 3, 1)
        );
        assert!(files[1].binary && files[1].added == 0);
        assert_eq!(files[2].path, "new name.txt");
        assert_eq!(files[2].old_path.as_deref(), Some("old name.txt"));
        assert!(parse_numstat("").is_empty());
    }

    #[test]
    fn a_long_patch_is_cut_at_a_line() {
        let patch = "+a\n+é\n+c\n".to_owned();
        assert_eq!(bounded(patch.clone(), 100), (patch.clone(), false));
        assert_eq!(bounded(patch.clone(), 5), ("+a\n".to_owned(), true));
        // Inside the two bytes of "é": back to the line before.
        assert_eq!(bounded(patch, 5 + 1), ("+a\n".to_owned(), true));
    }

    #[test]
    fn diffs_out_of_bounds_are_refused() {
        let good = NewDiff {
            base_sha: "abc123".into(),
            head_sha: None,
            files: vec![],
            patch: String::new(),
            truncated: false,
        };
        assert!(check(&good).is_ok());
        for bad in [
            NewDiff {
                base_sha: "XYZ".into(),
                ..good.clone()
            },
            NewDiff {
                patch: "x".repeat(MAX_PATCH_BYTES + 1),
                ..good.clone()
            },
            NewDiff {
                files: vec![FileChange {
                    path: String::new(),
                    old_path: None,
                    added: 1,
                    removed: 0,
                    binary: false,
                }],
                ..good.clone()
            },
        ] {
            assert!(matches!(check(&bad), Err(RuleError::Invalid(_))));
        }
    }

    #[test]
    fn a_review_becomes_a_prompt_with_each_comment_in_place() {
        let review = ReviewBody {
            comments: vec![
                ReviewComment {
                    path: "src/a.rs".into(),
                    line: 12,
                    body: "Handle the error here.".into(),
                },
                ReviewComment {
                    path: "README.md".into(),
                    line: 3,
                    body: " Typo. ".into(),
                },
            ],
            summary: Some("Nearly there.".into()),
        };
        let prompt = review_prompt(&review).unwrap();
        assert!(prompt.starts_with("Address the review of this change (2 comments)\n"));
        assert!(prompt.contains("\nsrc/a.rs:12: Handle the error here.\nREADME.md:3: Typo.\n\nOverall: Nearly there."), "{prompt}");
        let empty = ReviewBody {
            comments: vec![],
            summary: Some("  ".into()),
        };
        assert!(review_prompt(&empty).is_err());
        let bad_line = ReviewBody {
            comments: vec![ReviewComment {
                line: 0,
                ..review.comments[0].clone()
            }],
            summary: None,
        };
        assert!(review_prompt(&bad_line).is_err());
    }
}
