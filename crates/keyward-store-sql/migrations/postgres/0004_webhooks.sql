-- Why: tamper evidence of the audit log (API.md §GET /v1/audit-log). Each event carries
-- the hash of the event before it in its chain and its own; the SQLite tree's migration of
-- the same number makes the same tables, columns and indexes. Events stored before this
-- migration keep null hashes and come before their chain's first hashed one.
-- An event about a subscription (`webhook.created`, `webhook.deleted`) names no key.
alter table audit_event alter column key_id drop not null;
alter table audit_event add column prev_hash text collate "C";
alter table audit_event add column hash text collate "C";

-- The newest hash of each chain (an account's log; the operator log is one more), written
-- in the transaction of the event that moves it. Writers of a chain lock its row first
-- (`for update`), so on several nodes a chain's events are hashed one after the other, in
-- the order of their ids, and a deletion of a chain's last events shows against it.
create table audit_chain (
    chain_id text collate "C" not null primary key,
    head_hash text collate "C" not null
);

-- A subscription: an account's (account_id set), or an operator's, which receives the
-- events of every account (account_id null). events is a JSON array of type names;
-- secret signs every delivery, so it is kept (and never shown after creation).
create table webhook (
    webhook_id text collate "C" not null primary key,
    account_id text collate "C",
    url text not null,
    events text not null,
    description text,
    secret text not null,
    created_at bigint not null
);

-- An account's subscriptions are listed, and fanned out to, by account.
create index webhook_by_account on webhook (account_id, webhook_id);

-- The outbox: one row per event and subscription, written in the transaction of the
-- change that causes the event, and the state of its delivery. A node claims due rows by
-- setting lease_until (`for update skip locked`: nodes claiming together take different
-- rows); a node that crashes mid-attempt leaves a lease that runs out, and the row is due
-- again.
create table webhook_delivery (
    delivery_id bigint generated always as identity not null primary key,
    webhook_id text collate "C" not null,
    account_id text collate "C" not null,
    event_id text collate "C" not null,
    type text collate "C" not null,
    payload text not null,
    status text collate "C" not null check (status in ('pending', 'delivered', 'failed')),
    attempts bigint not null,
    next_attempt_at bigint not null,
    lease_until bigint,
    updated_at bigint not null
);

-- The dispatcher looks for pending rows that are due.
create index webhook_delivery_due on webhook_delivery (status, next_attempt_at);

-- A subscription's deletion takes its deliveries with it.
create index webhook_delivery_by_webhook on webhook_delivery (webhook_id);

-- Every attempt, for the delivery log (GET /v1/webhooks/{id}/deliveries, newest first).
create table webhook_attempt (
    attempt_id bigint generated always as identity not null primary key,
    webhook_id text collate "C" not null,
    event_id text collate "C" not null,
    type text collate "C" not null,
    time bigint not null,
    status bigint,
    error text,
    next_attempt_at bigint
);

create index webhook_attempt_by_webhook on webhook_attempt (webhook_id, attempt_id);

-- Events made by a scan (key.expiring, key.expired), each under a mark (key, type,
-- expires_at) that exists once: nodes scanning together make each event once.
create table webhook_scan_mark (
    mark text collate "C" not null primary key
);

-- The expiry scan reads the keys whose expires_at lies within a week either side of now.
create index api_key_by_expiry on api_key (expires_at);
