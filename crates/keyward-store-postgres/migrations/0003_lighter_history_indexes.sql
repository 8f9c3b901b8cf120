-- Why: every metered request inserts one request_log row and one entry in each of its
-- indexes, and at 40,000 requests/s the metering flush fell behind. The endpoint index
-- goes: filtering by endpoint walks the account's rows newest first through the account
-- index, as filtering by status always did. (SQLite's migration 3, of the same number,
-- replaces all three of its history indexes with runs; see ARCHITECTURE.md.)
drop index request_log_by_endpoint;
