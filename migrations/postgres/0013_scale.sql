-- A workspace's tasks of one status, newest first: the dashboard's filters combined.
-- (The index it replaces served only the counts, which this one serves too.)
DROP INDEX tasks_workspace_status;
CREATE INDEX tasks_workspace_status ON tasks (workspace_id, status, created_at, id);
