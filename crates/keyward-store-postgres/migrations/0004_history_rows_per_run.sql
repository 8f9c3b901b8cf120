-- Why: nothing changes here. The SQLite tree's migration of the same number stores each
-- run of an account's history rows as one row; PostgreSQL keeps a row per request with
-- its per-row indexes (runs need consecutive ids per account, which concurrent nodes
-- writing one table do not give). The two trees keep the same versions and names.
select 1;
