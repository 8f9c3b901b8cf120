-- Why: after migration 3 the metering writer still inserted one request_log row per
-- request, ten bound values each, and binding them cost sqlx and SQLite more than the
-- insert itself: the writer thread was about 40 % of the CPU keyward spends per request
-- beyond a bare HTTP server. A run (one account's rows of one flush, at most 256) is now
-- stored as one row: its history rows encoded as a JSON array, oldest first, each
-- [id, time, method, endpoint, status, user_agent, key_id, request_id, latency_ms].
-- The run tables of migration 3 still find an account's runs, or the runs with a key's or
-- an endpoint's rows; a run's row here has the same last_id. first_time, last_time and
-- row_count let retention decide without decoding: a run that ends before the cutoff is
-- deleted whole, and one that straddles it is rewritten without its old rows.
create table request_log_run (
    last_id integer primary key,
    first_time integer not null,
    last_time integer not null,
    row_count integer not null,
    -- Last, so that reading the columns above never reads its overflow pages.
    rows text not null
) strict;

-- The rows written so far, one run per run of migration 3 (each a range of one account's
-- consecutive ids).
insert into request_log_run (last_id, first_time, last_time, row_count, rows)
select s.last_id, min(r.time), max(r.time), count(*),
    json_group_array(json_array(r.request_log_id, r.time, r.method, r.endpoint, r.status,
        r.user_agent, r.key_id, r.request_id, r.latency_ms) order by r.request_log_id)
from request_log_span s
join request_log r on r.request_log_id between s.first_id and s.last_id
group by s.last_id;

-- Ids are never reused, even after retention has emptied the history (a client may
-- still hold a cursor): the next id carries on from request_log's AUTOINCREMENT counter.
create table request_log_next_id (
    next_id integer not null
) strict;

insert into request_log_next_id (next_id)
select coalesce((select seq from sqlite_sequence where name = 'request_log'), 0) + 1;

drop table request_log;
