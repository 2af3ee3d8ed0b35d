-- How far each worker's agent got in numbering its messages, so that a batch sent
-- again (after a lost answer, or from the spool) is not stored twice.
ALTER TABLE workers ADD COLUMN messages_taken BIGINT NOT NULL DEFAULT 0;
-- When retention removed a finished worker's messages and attachments.
ALTER TABLE workers ADD COLUMN output_purged_at TIMESTAMPTZ;
CREATE INDEX workers_output_to_purge ON workers (finished_at) WHERE output_purged_at IS NULL;

-- The newest public event id (`seq`) that retention has deleted: a client resuming
-- from an older id is told to reload instead of silently missing what was deleted.
CREATE TABLE event_retention (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    purged_through BIGINT NOT NULL
);
INSERT INTO event_retention (id, purged_through) VALUES (1, 0);
