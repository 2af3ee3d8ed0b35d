-- Workflows: tasks that wait for other tasks, plans, follow-ups and instructions.
ALTER TABLE tasks ADD COLUMN mode TEXT NOT NULL DEFAULT 'run';
-- The dependencies as the task was created with them (a JSON array of task ids),
-- shown with the task; `task_dependencies` holds the same edges to find dependents.
ALTER TABLE tasks ADD COLUMN depends_on TEXT NOT NULL DEFAULT '[]';
ALTER TABLE tasks ADD COLUMN base_branch TEXT;
ALTER TABLE tasks ADD COLUMN parent_id TEXT REFERENCES tasks (id);
ALTER TABLE tasks ADD COLUMN resume_session_id TEXT;
ALTER TABLE tasks ADD COLUMN preferred_account_id TEXT;
ALTER TABLE tasks ADD COLUMN preferred_until INTEGER;
ALTER TABLE tasks ADD COLUMN error TEXT;
ALTER TABLE tasks ADD COLUMN feedback TEXT;
CREATE INDEX tasks_parent ON tasks (parent_id);

CREATE TABLE task_dependencies (
    task_id    TEXT NOT NULL REFERENCES tasks (id),
    depends_on TEXT NOT NULL REFERENCES tasks (id),
    PRIMARY KEY (task_id, depends_on)
);
CREATE INDEX task_dependents ON task_dependencies (depends_on);

-- Instructions a person sent a running worker (a JSON array), until its heartbeat.
ALTER TABLE workers ADD COLUMN pending_instructions TEXT NOT NULL DEFAULT '[]';
