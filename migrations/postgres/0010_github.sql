-- GitHub's webhooks: which issues' label makes a task, how many CI fixes a task may
-- get, the branch a task carries on, and the deliveries already acted on.
ALTER TABLE workspaces ADD COLUMN github_label TEXT NOT NULL DEFAULT 'buildd';
ALTER TABLE workspaces ADD COLUMN max_ci_retries INTEGER NOT NULL DEFAULT 3;
ALTER TABLE tasks ADD COLUMN branch TEXT;
-- The task of a pull request, for a comment on it (whose payload names only its URL).
CREATE INDEX workers_pr_url ON workers (pr_url) WHERE pr_url IS NOT NULL;
-- The tasks carrying on a branch, newest first.
CREATE INDEX tasks_branch ON tasks (branch, created_at) WHERE branch IS NOT NULL;
CREATE TABLE github_deliveries (
    id          TEXT PRIMARY KEY,
    event       TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX github_deliveries_received ON github_deliveries (received_at);
-- The one comment buildd keeps on each issue it works on: the text it should show,
-- what GitHub shows, and when it is sent next (null: GitHub shows the latest text).
CREATE TABLE issue_reports (
    source_id       TEXT PRIMARY KEY REFERENCES sources (id),
    repo            TEXT NOT NULL,
    issue_number    BIGINT NOT NULL,
    comment_id      BIGINT,
    body            TEXT NOT NULL,
    sent_body       TEXT,
    attempts        INTEGER NOT NULL,
    last_error      TEXT,
    -- Since when the latest text waits: retries stop a bounded time after it.
    queued_at       TIMESTAMPTZ NOT NULL,
    next_attempt_at TIMESTAMPTZ
);
CREATE INDEX issue_reports_due ON issue_reports (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
