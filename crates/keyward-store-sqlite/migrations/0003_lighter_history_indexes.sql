-- Why: the metering writer spent most of its time in the three history indexes, each
-- led by the account: every row was three B-tree inserts, and with many accounts active
-- each commit rewrote a leaf page per account per index. The flush now gives each
-- account's rows of a batch consecutive ids and records that run once, with the keys and
-- endpoints that have rows in it; the rows themselves are only appended, and have no
-- index but their id. History is read by walking an account's runs (or the runs that
-- have a key's or an endpoint's rows) newest first. Filtering by status or time reads the
-- rows of those runs, as it always read the rows the index led to.
create table request_log_span (
    account_id text not null,
    last_id integer not null,
    first_id integer not null,
    primary key (account_id, last_id)
) strict, without rowid;

-- A run of an account's rows in which the key has at least one row.
create table request_log_key_span (
    account_id text not null,
    key_id text not null,
    last_id integer not null,
    first_id integer not null,
    primary key (account_id, key_id, last_id)
) strict, without rowid;

-- A run of an account's rows in which the endpoint has at least one row.
create table request_log_endpoint_span (
    account_id text not null,
    endpoint text not null,
    last_id integer not null,
    first_id integer not null,
    primary key (account_id, endpoint, last_id)
) strict, without rowid;

-- Retention deletes the runs whose rows are all gone, oldest first.
create index request_log_span_by_last on request_log_span (last_id);
create index request_log_key_span_by_last on request_log_key_span (last_id);
create index request_log_endpoint_span_by_last on request_log_endpoint_span (last_id);

-- The rows written so far: each run of one account's consecutive rows (in id order)
-- becomes a span. Within a run, the overall rank and the rank among the account's rows
-- differ by a constant.
insert into request_log_span (account_id, last_id, first_id)
select account_id, max(request_log_id), min(request_log_id)
from (
    select request_log_id, account_id,
        row_number() over (order by request_log_id)
            - row_number() over (partition by account_id order by request_log_id) as run
    from request_log
)
group by account_id, run;

insert into request_log_key_span (account_id, key_id, last_id, first_id)
select s.account_id, r.key_id, s.last_id, s.first_id
from request_log_span s
join request_log r on r.request_log_id between s.first_id and s.last_id
group by s.account_id, s.last_id, r.key_id;

insert into request_log_endpoint_span (account_id, endpoint, last_id, first_id)
select s.account_id, r.endpoint, s.last_id, s.first_id
from request_log_span s
join request_log r on r.request_log_id between s.first_id and s.last_id
group by s.account_id, s.last_id, r.endpoint;

drop index request_log_by_account;
drop index request_log_by_key;
drop index request_log_by_endpoint;
