-- What runs a task (a coding CLI, by name), with which model, and what it falls back
-- to; and what each attempt ran with. NULL: any runner, the agent's default model.
ALTER TABLE tasks ADD COLUMN runner TEXT;
ALTER TABLE tasks ADD COLUMN model TEXT;
ALTER TABLE tasks ADD COLUMN fallback_runner TEXT;
ALTER TABLE workers ADD COLUMN runner TEXT;
ALTER TABLE workers ADD COLUMN model TEXT;
