-- What each run changed: its branch's diff against the commit it started from.
CREATE TABLE worker_diffs (
    worker_id  TEXT PRIMARY KEY REFERENCES workers (id),
    task_id    TEXT NOT NULL REFERENCES tasks (id),
    base_sha   TEXT NOT NULL,
    head_sha   TEXT,
    -- The per-file counts, a JSON array.
    files      TEXT NOT NULL,
    patch      TEXT NOT NULL,
    truncated  BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX worker_diffs_task ON worker_diffs (task_id);
