-- Why: the first schema. Accounts, keys with their secrets kept apart (a rotated key has
-- two live secrets during its grace period), request history, monthly usage counters and
-- the audit log. Times are unix seconds (UTC).

create table account (
    account_id text primary key,
    name text not null,
    plan text not null check (plan in ('free', 'pro', 'scale', 'enterprise')),
    per_minute integer,
    per_day integer,
    created_at integer not null
) strict;

create table api_key (
    key_id text primary key,
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

create index api_key_by_account on api_key (account_id, key_id);

create table key_secret (
    digest blob primary key,
    key_id text not null references api_key (key_id) on delete cascade,
    expires_at integer,
    created_at integer not null
) strict, without rowid;

create index key_secret_by_key on key_secret (key_id);

create table request_log (
    request_log_id integer primary key autoincrement,
    account_id text not null,
    time integer not null,
    method text not null,
    endpoint text not null,
    status integer not null,
    user_agent text,
    key_id text not null,
    request_id text not null,
    latency_ms integer not null
) strict;

create index request_log_by_account on request_log (account_id, request_log_id);
create index request_log_by_key on request_log (account_id, key_id, request_log_id);
create index request_log_by_endpoint on request_log (account_id, endpoint, request_log_id);
create index request_log_by_time on request_log (time);

create table usage_counter (
    account_id text not null,
    month text not null,
    endpoint text not null,
    key_id text not null,
    count integer not null,
    primary key (account_id, month, endpoint, key_id)
) strict, without rowid;

create table audit_event (
    audit_event_id integer primary key autoincrement,
    account_id text not null,
    time integer not null,
    action text not null,
    actor_key_id text,
    key_id text not null,
    changes text not null,
    request_id text not null
) strict;

create index audit_event_by_account on audit_event (account_id, audit_event_id);
