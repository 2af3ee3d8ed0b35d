-- The agents connected to the cluster, as they last reported themselves; a row is
-- refreshed while its agent's event stream is open and deleted a lease after.
CREATE TABLE agents (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts (id),
    hostname     TEXT NOT NULL,
    version      TEXT NOT NULL,
    runners      TEXT NOT NULL,
    state        TEXT NOT NULL,
    running      TEXT NOT NULL,
    connected_at TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX agents_last_seen ON agents (last_seen_at);
CREATE INDEX agents_account ON agents (account_id);
