-- Why: plans are data (API.md §Plans, rate limits, quotas and credits), the PostgreSQL
-- twin of the SQLite tree's migration of the same number. The plan table starts with
-- KonPro's four; an account names its plan there and may override any of the plan's
-- three numbers, on any plan; accounts also get a status, the platform's own id of the
-- customer (external_id, unique) and metadata.

-- A plan and its limits; null is unlimited.
create table plan (
    name text collate "C" not null primary key,
    per_minute bigint,
    per_day bigint,
    per_month bigint
);

insert into plan (name, per_minute, per_day, per_month) values
    ('free', 10, 100, null),
    ('pro', 60, 1000, null),
    ('scale', 300, 10000, null),
    ('enterprise', null, null, null);

-- Custom limits applied to enterprise accounts only; as overrides they would apply to
-- every plan, so the other plans' accounts keep their plan's numbers.
update account set per_minute = null, per_day = null where plan <> 'enterprise';

alter table account drop constraint account_plan_check;
alter table account add constraint account_plan_fkey foreign key (plan) references plan (name);
alter table account
    add column per_month bigint,
    add column status text not null default 'active' check (status in ('active', 'suspended')),
    add column external_id text collate "C",
    add column metadata text not null default '{}';

-- A retried sign-up finds the account its first try made.
create unique index account_by_external_id on account (external_id);

-- An operator: the holder of an operator key (API.md §Operator API), which belongs to no
-- account. Like a key's secret, only the digest is kept; revoking deletes the row.
create table operator (
    operator_id text collate "C" not null primary key,
    name text not null,
    digest bytea not null,
    hint text not null,
    created_at bigint not null
);

-- Every request of the operator API finds its operator by digest.
create unique index operator_by_digest on operator (digest);
