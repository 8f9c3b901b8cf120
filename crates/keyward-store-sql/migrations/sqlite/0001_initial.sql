-- Why: the first schema. Times are unix seconds (UTC). The PostgreSQL tree's migration of
-- the same number makes the same tables, columns and indexes (a test compares the two as
-- the databases report them). Tables are STRICT, so a value of the wrong type is refused
-- instead of stored as it came.

-- An account (a tenant), with its plan and the custom limits of an enterprise plan.
create table account (
    account_id text not null primary key,
    name text not null,
    plan text not null check (plan in ('free', 'pro', 'scale', 'enterprise')),
    per_minute integer,
    per_day integer,
    created_at integer not null
) strict;

-- A key, without its secrets. scopes and metadata are JSON text; version is bumped by
-- every change, for the optimistic check of the next one.
create table api_key (
    key_id text not null primary key,
    account_id text not null references account (account_id),
    name text,
    scopes text not null,
    metadata text not null,
    status text not null check (status in ('active', 'inactive')),
    expires_at integer,
    created_at integer not null,
    last_used integer,
    hint text not null,
    version integer not null default 1
) strict;

-- A listing walks one account's keys in id order (the page cursor is a key id).
create index api_key_by_account on api_key (account_id, key_id);

-- A key's secrets, found by digest on every authentication. Kept apart from the key: a
-- rotated key has two live secrets during its grace period (expires_at set on the old).
-- Without rowid: the digest is the only way in, so the table is its primary key's B-tree.
create table key_secret (
    digest blob not null primary key,
    key_id text not null references api_key (key_id) on delete cascade,
    expires_at integer,
    created_at integer not null
) strict, without rowid;

-- A change of a key finds (and a revocation deletes) its secrets.
create index key_secret_by_key on key_secret (key_id);

-- Monthly request counts per account, endpoint and key; the metering flush adds to them.
create table usage_counter (
    account_id text not null,
    month text not null,
    endpoint text not null,
    key_id text not null,
    count integer not null,
    primary key (account_id, month, endpoint, key_id)
) strict, without rowid;

-- Every change of a key, written in the change's own transaction. No foreign key: the
-- events of a revoked key outlive it.
create table audit_event (
    audit_event_id integer not null primary key autoincrement,
    account_id text not null,
    time integer not null,
    action text not null,
    actor_key_id text,
    key_id text not null,
    changes text not null,
    request_id text not null
) strict;

-- The audit log is read one account at a time, newest first, by cursor.
create index audit_event_by_account on audit_event (account_id, audit_event_id);

-- Request history, by runs: a run is one account's rows of one flush (at most 256) with
-- consecutive ids, stored as one row keyed by its last id, its rows one JSON text.
-- first_time, last_time and row_count let retention decide without decoding: a run that
-- ends before the cutoff is deleted whole, one that straddles it is rewritten.
create table request_log_run (
    last_id integer not null primary key,
    first_time integer not null,
    last_time integer not null,
    row_count integer not null,
    -- Last, so that reading the columns above never reads its overflow pages.
    rows text not null
) strict;

-- The runs of an account: history is read by walking them newest first.
create table request_log_span (
    account_id text not null,
    last_id integer not null,
    first_id integer not null,
    primary key (account_id, last_id)
) strict, without rowid;

-- The runs in which a key has at least one row.
create table request_log_key_span (
    account_id text not null,
    key_id text not null,
    last_id integer not null,
    first_id integer not null,
    primary key (account_id, key_id, last_id)
) strict, without rowid;

-- The runs in which an endpoint has at least one row.
create table request_log_endpoint_span (
    account_id text not null,
    endpoint text not null,
    last_id integer not null,
    first_id integer not null,
    primary key (account_id, endpoint, last_id)
) strict, without rowid;

-- Retention deletes the spans of runs whose rows are all gone, oldest first.
create index request_log_span_by_last on request_log_span (last_id);
create index request_log_key_span_by_last on request_log_key_span (last_id);
create index request_log_endpoint_span_by_last on request_log_endpoint_span (last_id);

-- The next history id, in a table of its own so that ids are never reused, even after
-- retention has emptied the history (a client may still hold a cursor). One row.
create table request_log_next_id (
    next_id integer not null
) strict;

insert into request_log_next_id (next_id) values (1);
