-- Why: key policies (API.md §Key policies), the PostgreSQL twin of the SQLite tree's
-- migration of the same number. `policies` holds a key's own rate limit, credits (the
-- balance a caller set, and its refill) and allowed addresses as one JSON object, read
-- with the key and cached with it; the live balance is the rate limiter's.
-- `expire_after_inactive_days` is a column of its own because the status filter of a
-- listing reads it in SQL.
alter table api_key add column policies text not null default '{}';
alter table api_key add column expire_after_inactive_days bigint;
