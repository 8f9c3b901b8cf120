-- Why: every metered request inserts one request_log row, and each index is another
-- B-tree insert on the hot write path. The time index served only retention, which now
-- walks the oldest rows by id instead (ids grow with time: rows are appended as batches
-- are flushed), so it goes.
drop index request_log_by_time;
