-- title: Job health: rollup runs
-- description: The latest runs of the rollups and other jobs, with status, rows and duration.
-- params: limit
-- reads: job_runs
SELECT job, started_at, status, rows,
       CAST((date_part('epoch', finished_at) - date_part('epoch', started_at)) * 1000 AS BIGINT) AS duration_ms
FROM job_runs
ORDER BY started_at DESC, job
LIMIT {limit}
