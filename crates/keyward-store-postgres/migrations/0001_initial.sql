-- Why: the first schema, the PostgreSQL twin of the SQLite tree's 0001_initial.sql: the same
-- tables, columns, indexes and meaning. Accounts, keys with their secrets kept apart (a
-- rotated key has two live secrets during its grace period), request history, monthly usage
-- counters and the audit log. Times are unix seconds (UTC) in bigint, as in SQLite.
--
-- Ids, months and endpoints are `collate "C"`: listing and cursors order by byte value, as
-- SQLite's BINARY collation does, whatever locale the database was created with, and the
-- meter's upserts lock rows in the same byte order that Rust sorts them in.
--
-- scopes, metadata and changes stay JSON *text* (not jsonb): jsonb would reject "\u0000" in
-- metadata strings and rewrite numbers (1e19 comes back as an integer), so what was stored
-- would no longer be what is read, unlike SQLite.

create table account (
    account_id text collate "C" primary key,
    name text not null,
    plan text not null check (plan in ('free', 'pro', 'scale', 'enterprise')),
    per_minute bigint,
    per_day bigint,
    created_at bigint not null
);

create table api_key (
    key_id text collate "C" primary key,
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

create index api_key_by_account on api_key (account_id, key_id);

create table key_secret (
    digest bytea primary key,
    key_id text collate "C" not null references api_key (key_id) on delete cascade,
    expires_at bigint,
    created_at bigint not null
);

create index key_secret_by_key on key_secret (key_id);

create table request_log (
    request_log_id bigint generated always as identity primary key,
    account_id text collate "C" not null,
    time bigint not null,
    method text not null,
    endpoint text collate "C" not null,
    status bigint not null,
    user_agent text,
    key_id text collate "C" not null,
    request_id text not null,
    latency_ms bigint not null
);

create index request_log_by_account on request_log (account_id, request_log_id);
create index request_log_by_key on request_log (account_id, key_id, request_log_id);
create index request_log_by_endpoint on request_log (account_id, endpoint, request_log_id);
create index request_log_by_time on request_log (time);

create table usage_counter (
    account_id text collate "C" not null,
    month text collate "C" not null,
    endpoint text collate "C" not null,
    key_id text collate "C" not null,
    count bigint not null,
    primary key (account_id, month, endpoint, key_id)
);

create table audit_event (
    audit_event_id bigint generated always as identity primary key,
    account_id text collate "C" not null,
    time bigint not null,
    action text not null,
    actor_key_id text collate "C",
    key_id text collate "C" not null,
    changes text not null,
    request_id text not null
);

create index audit_event_by_account on audit_event (account_id, audit_event_id);
