-- Notifications: webhooks, each delivery stored before it is sent, and how far the
-- cluster has read the events into deliveries.
CREATE TABLE webhooks (
    id             TEXT PRIMARY KEY,
    workspace_id   TEXT REFERENCES workspaces (id),
    url            TEXT NOT NULL,
    events         TEXT NOT NULL,
    -- The signing secret, sealed with a key derived from the admin token; or none.
    sealed_secret  TEXT,
    -- Events up to this one came before the webhook and are not told to it.
    from_event_id  BIGINT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    webhook_id      TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event           TEXT NOT NULL,
    task_id         TEXT NOT NULL,
    -- One status of one attempt of one task is one delivery.
    dedupe_key      TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    next_attempt_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    delivered_at    TIMESTAMPTZ,
    UNIQUE (webhook_id, dedupe_key)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_listed ON webhook_deliveries (webhook_id, created_at, id);

CREATE TABLE notify_cursor (
    id            INTEGER PRIMARY KEY,
    last_event_id BIGINT NOT NULL
);
INSERT INTO notify_cursor (id, last_event_id) VALUES (1, 0);
