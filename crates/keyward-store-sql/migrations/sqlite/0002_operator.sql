-- Why: plans are data (API.md §Plans, rate limits, quotas and credits). The plan table
-- starts with KonPro's four; an account names its plan there and may override any of the
-- plan's three numbers (per minute, per day, per month), on any plan. Accounts also get a
-- status (active or suspended), the platform's own id of the customer (external_id,
-- unique) and metadata. The PostgreSQL tree's migration of the same number makes the same
-- schema.
--
-- SQLite can't drop the old check on account.plan in place, so the table is rebuilt.
-- Foreign keys are deferred to the commit: dropping the old table counts the keys that
-- point at it, and refilling the new one (named account, as the keys' references say)
-- counts them back, so the commit checks that every key still has its account.
pragma defer_foreign_keys = on;

-- A plan and its limits; null is unlimited.
create table plan (
    name text not null primary key,
    per_minute integer,
    per_day integer,
    per_month integer
) strict;

insert into plan (name, per_minute, per_day, per_month) values
    ('free', 10, 100, null),
    ('pro', 60, 1000, null),
    ('scale', 300, 10000, null),
    ('enterprise', null, null, null);

create temp table account_0001 as select * from account;
drop table account;

-- An account (a tenant): its plan, its own overrides of the plan's numbers (null keeps
-- the plan's), its status, the platform's id of it, and metadata (JSON text).
create table account (
    account_id text not null primary key,
    name text not null,
    plan text not null references plan (name),
    per_minute integer,
    per_day integer,
    created_at integer not null,
    per_month integer,
    status text not null default 'active' check (status in ('active', 'suspended')),
    external_id text,
    metadata text not null default '{}'
) strict;

-- A retried sign-up finds the account its first try made.
create unique index account_by_external_id on account (external_id);

-- Custom limits applied to enterprise accounts only; as overrides they would apply to
-- every plan, so the other plans' accounts keep their plan's numbers.
insert into account (account_id, name, plan, per_minute, per_day, created_at)
select account_id, name, plan,
       case when plan = 'enterprise' then per_minute end,
       case when plan = 'enterprise' then per_day end,
       created_at
from account_0001;

drop table account_0001;

-- An operator: the holder of an operator key (API.md §Operator API), which belongs to no
-- account. Like a key's secret, only the digest is kept; revoking deletes the row.
create table operator (
    operator_id text not null primary key,
    name text not null,
    digest blob not null,
    hint text not null,
    created_at integer not null
) strict;

-- Every request of the operator API finds its operator by digest.
create unique index operator_by_digest on operator (digest);
