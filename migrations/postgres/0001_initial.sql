CREATE TABLE accounts (
    id                      TEXT PRIMARY KEY,
    type                    TEXT NOT NULL,
    name                    TEXT NOT NULL,
    auth_type               TEXT NOT NULL,
    max_concurrent_workers  BIGINT NOT NULL,
    max_concurrent_sessions BIGINT,
    max_cost_per_day        DOUBLE PRECISION,
    github_repo             TEXT,
    -- SHA-256 of the account key; the key itself is never stored.
    key_hash                TEXT NOT NULL UNIQUE,
    -- Workers that hold one of the account's slots (see WorkerStatus::ACTIVE), kept
    -- in step by every transaction that claims or changes a worker.
    active_workers          BIGINT NOT NULL DEFAULT 0,
    created_at              TIMESTAMPTZ NOT NULL
);

CREATE TABLE workspaces (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    repo_url       TEXT,
    default_branch TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL
);

CREATE TABLE account_workspaces (
    account_id   TEXT NOT NULL REFERENCES accounts (id),
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    can_claim    BOOLEAN NOT NULL,
    can_create   BOOLEAN NOT NULL,
    PRIMARY KEY (account_id, workspace_id)
);

-- Where tasks come from; one row per (type, external id) in a workspace.
CREATE TABLE sources (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    type         TEXT NOT NULL,
    external_id  TEXT,
    url          TEXT,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX sources_external ON sources (workspace_id, type, external_id);

CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    workspace_id      TEXT NOT NULL REFERENCES workspaces (id),
    title             TEXT NOT NULL,
    description       TEXT NOT NULL,
    runner_preference TEXT NOT NULL,
    priority          INTEGER NOT NULL,
    status            TEXT NOT NULL,
    attempts          INTEGER NOT NULL,
    max_attempts      INTEGER NOT NULL,
    max_cost_usd      DOUBLE PRECISION,
    claimed_by        TEXT REFERENCES accounts (id),
    worker_id         TEXT,
    created_at        TIMESTAMPTZ NOT NULL,
    claimed_at        TIMESTAMPTZ,
    completed_at      TIMESTAMPTZ,
    result            JSONB,
    source_id         TEXT REFERENCES sources (id)
);
-- The claim walks pending tasks in dispatch order and stops at the first it may take.
CREATE INDEX tasks_pending ON tasks (priority DESC, created_at, id) WHERE status = 'pending';
CREATE INDEX tasks_workspace ON tasks (workspace_id, created_at);
CREATE INDEX tasks_source ON tasks (source_id);

CREATE TABLE workers (
    id            TEXT PRIMARY KEY,
    task_id       TEXT NOT NULL REFERENCES tasks (id),
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    account_id    TEXT NOT NULL REFERENCES accounts (id),
    status        TEXT NOT NULL,
    cost_usd      DOUBLE PRECISION NOT NULL,
    turns         BIGINT NOT NULL,
    session_id    TEXT,
    branch        TEXT,
    commit_sha    TEXT,
    pr_url        TEXT,
    question      TEXT,
    error         TEXT,
    pending_reply TEXT,
    started_at    TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ
);
CREATE INDEX workers_status_heartbeat ON workers (status, heartbeat_at);
CREATE INDEX workers_task ON workers (task_id);

-- What workers produced (branch, commit, PR, file), across all of a task's attempts.
CREATE TABLE artifacts (
    id         BIGSERIAL PRIMARY KEY,
    task_id    TEXT NOT NULL REFERENCES tasks (id),
    worker_id  TEXT NOT NULL REFERENCES workers (id),
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX artifacts_task ON artifacts (task_id, id);

CREATE TABLE comments (
    id         BIGSERIAL PRIMARY KEY,
    task_id    TEXT NOT NULL REFERENCES tasks (id),
    author     TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX comments_task ON comments (task_id, id);

-- What each account's workers started on each UTC day have cost, for maxCostPerDay.
CREATE TABLE account_usage (
    account_id TEXT NOT NULL REFERENCES accounts (id),
    day        TEXT NOT NULL,
    cost_usd   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (account_id, day)
);

CREATE TABLE messages (
    worker_id  TEXT NOT NULL REFERENCES workers (id),
    seq        BIGINT NOT NULL,
    body       JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (worker_id, seq)
);

-- Files a worker's run produced, with their bytes.
CREATE TABLE attachments (
    id           TEXT PRIMARY KEY,
    worker_id    TEXT NOT NULL REFERENCES workers (id),
    task_id      TEXT NOT NULL REFERENCES tasks (id),
    message_seq  BIGINT,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    data         BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX attachments_worker ON attachments (worker_id, created_at);

-- Every change, for the event stream to replay. `id` is taken at insert, so two
-- transactions can commit in the other order; `seq`, the id subscribers see, is
-- stamped after commit by the sequencer, in commit order.
CREATE TABLE events (
    id           BIGSERIAL PRIMARY KEY,
    seq          BIGINT UNIQUE,
    name         TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    data         JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_unsequenced ON events (id) WHERE seq IS NULL;
