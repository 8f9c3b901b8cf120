-- Why: PostgreSQL stored a row per request with three B-tree entries (its id, its account,
-- its account and key), and at 40,000-60,000 requests/s its backends took 60-80 % of a
-- core just to take them in, on a host where keyward, the load and PostgreSQL share two.
-- History is now stored by runs, as the SQLite tree's migrations 3 and 4 do: a run is one
-- account's rows of one flush (at most 256) with consecutive ids, stored as one row whose
-- rows are a JSON array, oldest first, each
-- [id, time, method, endpoint, status, user_agent, key_id, request_id, latency_ms];
-- spans find an account's runs, or the runs with a key's or an endpoint's rows.
--
-- Consecutive ids come from request_log_next_id, which each flush moves forward under its
-- row lock. Flushes of several nodes so commit one after another, in id order: a page read
-- by cursor can no longer miss rows that a slower node committed later with smaller ids.
create table request_log_run (
    last_id bigint primary key,
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

create table request_log_span (
    account_id text collate "C" not null,
    last_id bigint not null,
    first_id bigint not null,
    primary key (account_id, last_id)
);

-- A run of an account's rows in which the key has at least one row.
create table request_log_key_span (
    account_id text collate "C" not null,
    key_id text collate "C" not null,
    last_id bigint not null,
    first_id bigint not null,
    primary key (account_id, key_id, last_id)
);

-- A run of an account's rows in which the endpoint has at least one row.
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

-- Ids are never reused, even after retention has emptied the history (a client may still
-- hold a cursor): the next id carries on after the last one request_log handed out.
create table request_log_next_id (
    next_id bigint not null
);

insert into request_log_next_id (next_id)
select greatest(
    coalesce((select max(request_log_id) from request_log), 0),
    coalesce(pg_sequence_last_value(pg_get_serial_sequence('request_log', 'request_log_id')::regclass), 0)
) + 1;

-- The rows written so far: each account's rows, in id order, cut into runs of at most
-- 256. Requests of many accounts interleave, so one account's runs span other accounts'
-- ids; reads only need an account's own runs not to overlap, and each row keeps its id.
create temporary table old_row on commit drop as
select request_log_id, account_id,
    min(request_log_id) over run as first_id,
    max(request_log_id) over run as last_id
from (
    select request_log_id, account_id,
        (row_number() over (partition by account_id order by request_log_id) - 1) / 256
            as piece
    from request_log
) pieces
window run as (partition by account_id, piece);

insert into request_log_run (last_id, first_time, last_time, row_count, rows)
select o.last_id, min(r.time), max(r.time), count(*),
    json_agg(json_build_array(r.request_log_id, r.time, r.method, r.endpoint, r.status,
        r.user_agent, r.key_id, r.request_id, r.latency_ms) order by r.request_log_id)::text
from old_row o
join request_log r using (request_log_id)
group by o.last_id;

insert into request_log_span (account_id, last_id, first_id)
select distinct account_id, last_id, first_id from old_row;

insert into request_log_key_span (account_id, key_id, last_id, first_id)
select distinct o.account_id, r.key_id, o.last_id, o.first_id
from old_row o
join request_log r using (request_log_id);

insert into request_log_endpoint_span (account_id, endpoint, last_id, first_id)
select distinct o.account_id, r.endpoint, o.last_id, o.first_id
from old_row o
join request_log r using (request_log_id);

drop table request_log;
