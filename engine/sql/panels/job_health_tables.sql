-- title: Job health: tables
-- description: Each table's version and last commit; for the event tables, how long ago ingest last committed (data freshness).
-- params:
-- reads: *
-- cache: no
SELECT table_name, version, last_commit_at,
       CAST(date_part('epoch', now()) - date_part('epoch', last_commit_at) AS BIGINT) AS seconds_since_commit
FROM strata_tables
ORDER BY table_name
