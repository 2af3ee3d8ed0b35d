-- JSON is kept as the text buildd wrote, as on SQLite, so that every value reads back
-- exactly as it was written. JSONB reorders keys and rewrites numbers, and a number
-- near the largest double came back as text no JSON reader of doubles accepts, which
-- stopped the event stream at that event.
ALTER TABLE tasks ALTER COLUMN result TYPE TEXT USING result::text;
ALTER TABLE messages ALTER COLUMN body TYPE TEXT USING body::text;
ALTER TABLE events ALTER COLUMN data TYPE TEXT USING data::text;
