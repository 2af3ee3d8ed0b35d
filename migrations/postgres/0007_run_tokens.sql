-- What a run says of itself while it works (its MCP `report_progress`), on the worker
-- and on its task; and the digest of each live worker's token, which opens the run's
-- own tools at /mcp and is cleared when the worker ends.
ALTER TABLE tasks ADD COLUMN progress TEXT;
ALTER TABLE workers ADD COLUMN progress TEXT;
ALTER TABLE workers ADD COLUMN token_hash TEXT;
CREATE UNIQUE INDEX workers_token_hash ON workers (token_hash) WHERE token_hash IS NOT NULL;
