-- Tasks made on a cron cadence, and by other systems through a trigger's own token.
-- A schedule's and a trigger's task template is JSON text, like every JSON value.
CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    cron          TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    task          TEXT NOT NULL,
    paused        BOOLEAN NOT NULL,
    paused_reason TEXT,
    max_failures  INTEGER NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    next_run_at   TIMESTAMPTZ,
    last_run_at   TIMESTAMPTZ,
    last_task_id  TEXT,
    runs          BIGINT NOT NULL,
    skipped       BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);
-- The schedulers' one question: which schedule is due next.
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE NOT paused;
CREATE INDEX schedules_workspace ON schedules (workspace_id, created_at);

CREATE TABLE triggers (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    name          TEXT NOT NULL,
    task          TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    fired         BIGINT NOT NULL,
    last_fired_at TIMESTAMPTZ,
    created_by    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX triggers_workspace ON triggers (workspace_id, created_at);

