-- Why: the first schema, the PostgreSQL twin of the SQLite tree's migration of the same
-- number: the same tables, columns and indexes (a test compares the two as the databases
-- report them), and the same meaning. Times are unix seconds (UTC) in bigint.
--
-- Ids, months and endpoints are `collate "C"`: listings and cursors order by byte value,
-- as SQLite's BINARY collation does, whatever locale the database was created with, and
-- the metering flush locks rows in the same byte order that Rust sorts them in.
--
-- scopes, metadata and changes are JSON *text*, not jsonb: jsonb refuses "\u0000" in
-- strings and rewrites numbers (1e19 comes back as an integer), so what is read would not
-- always be what was stored.

-- An account (a tenant), with its plan and the custom limits of an enterprise plan.
create table account (
    account_id text collate "C" not null primary key,
    name text not null,
    plan text not null check (plan in ('free', 'pro', 'scale', 'enterprise')),
    per_minute bigint,
    per_day bigint,
    created_at bigint not null
);

-- A key, without its secrets; version is bumped by every change, for the optimistic
-- check of the next one.
create table api_key (
    key_id text collate "C" not null primary key,
    account_id text collate "C" not null references account (account_id),
    name text,
    scopes text not null,
    metadata text not null,
    status text not null check (status in ('active', 'inactive')),
    expires_at bigint,
    created_at bigint not null,
    last_used bigint,
    hint text not null,
    version bigint not null default 1
);

-- A listing walks one account's keys in id order (the page cursor is a key id).
create index api_key_by_account on api_key (account_id, key_id);

-- A key's secrets, found by digest on every authentication. Kept apart from the key: a
-- rotated key has two live secrets during its grace period (expires_at set on the old).
create table key_secret (
    digest bytea not null primary key,
    key_id text collate "C" not null references api_key (key_id) on delete cascade,
    expires_at bigint,
    created_at bigint not null
);

-- A change of a key finds (and a revocation deletes) its secrets.
create index key_secret_by_key on key_secret (key_id);

-- Monthly request counts per account, endpoint and key; the metering flush adds to them.
create table usage_counter (
    account_id text collate "C" not null,
    month text collate "C" not null,
    endpoint text collate "C" not null,
    key_id text collate "C" not null,
    count bigint not null,
    primary key (account_id, month, endpoint, key_id)
);

-- Every change of a key, written in the change's own transaction. No foreign key: the
-- events of a revoked key outlive it.
create table audit_event (
    audit_event_id bigint generated always as identity not null primary key,
    account_id text collate "C" not null,
    time bigint not null,
    action text not null,
    actor_key_id text collate "C",
    key_id text collate "C" not null,
    changes text not null,
    request_id text not null
);

-- The audit log is read one account at a time, newest first, by cursor.
create index audit_event_by_account on audit_event (account_id, audit_event_id);

-- Request history, by runs: a run is one account's rows of one flush (at most 256) with
-- consecutive ids, stored as one row keyed by its last id, its rows one JSON text.
-- first_time, last_time and row_count let retention decide without decoding: a run that
-- ends before the cutoff is deleted whole, one that straddles it is rewritten.
create table request_log_run (
    last_id bigint not null primary key,
    first_time bigint not null,
    last_time bigint not null,
    row_count bigint not null,
    rows text not null
);

-- A run's rows are compressed on every flush: lz4 does it at a fraction of the CPU of
-- pglz, the default. A server without lz4 (built without it, or older than 14) keeps pglz.
do $$
begin
    execute 'alter table request_log_run alter column rows set compression lz4';
exception when others then
    null;
end
$$;

-- The runs of an account: history is read by walking them newest first.
create table request_log_span (
    account_id text collate "C" not null,
    last_id bigint not null,
    first_id bigint not null,
    primary key (account_id, last_id)
);

-- The runs in which a key has at least one row.
create table request_log_key_span (
    account_id text collate "C" not null,
    key_id text collate "C" not null,
    last_id bigint not null,
    first_id bigint not null,
    primary key (account_id, key_id, last_id)
);

-- The runs in which an endpoint has at least one row.
create table request_log_endpoint_span (
    account_id text collate "C" not null,
    endpoint text collate "C" not null,
    last_id bigint not null,
    first_id bigint not null,
    primary key (account_id, endpoint, last_id)
);

-- Retention deletes the spans of runs whose rows are all gone, oldest first.
create index request_log_span_by_last on request_log_span (last_id);
create index request_log_key_span_by_last on request_log_key_span (last_id);
create index request_log_endpoint_span_by_last on request_log_endpoint_span (last_id);

-- The next history id, in a table of its own so that ids are never reused, even after
-- retention has emptied the history (a client may still hold a cursor). One row: each
-- flush moves it forward and holds its row lock to commit, so the flushes of several
-- nodes commit in id order, and a page read by cursor never misses rows committed later
-- below it.
create table request_log_next_id (
    next_id bigint not null
);

insert into request_log_next_id (next_id) values (1);
