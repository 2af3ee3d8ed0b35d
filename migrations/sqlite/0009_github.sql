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
    received_at INTEGER NOT NULL
);
CREATE INDEX github_deliveries_received ON github_deliveries (received_at);
