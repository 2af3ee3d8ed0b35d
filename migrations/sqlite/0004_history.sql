-- Lists page by keyset (newest first, `created_at, id`), and counts group by status:
-- each reads one index range instead of sorting the table.
DROP INDEX tasks_workspace;
CREATE INDEX tasks_created ON tasks (created_at, id);
CREATE INDEX tasks_workspace ON tasks (workspace_id, created_at, id);
CREATE INDEX tasks_status ON tasks (status, created_at, id);
CREATE INDEX tasks_workspace_status ON tasks (workspace_id, status);
CREATE INDEX workers_started ON workers (started_at, id);
CREATE INDEX workers_task_started ON workers (task_id, started_at, id);
DROP INDEX workers_task;
