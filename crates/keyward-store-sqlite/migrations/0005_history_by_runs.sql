-- Why: nothing changes here. The PostgreSQL tree's migration of the same number stores its
-- history by runs, as this tree's migrations 3 and 4 did. The two trees keep the same
-- versions and names.
select 1;
