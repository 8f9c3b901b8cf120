-- Requests per account and UTC day (`YYYY-MM-DD`): `GET /v1/usage`'s `by_day`. The
-- metering flush adds to them with the monthly counters.
create table usage_day (
    account_id text not null,
    day text not null,
    count integer not null,
    primary key (account_id, day)
) strict, without rowid;
