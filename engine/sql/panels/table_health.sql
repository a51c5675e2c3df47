-- title: Job health: table health
-- description: Per table, as of its last health check: data files and bytes, small files (under 32 MiB), the partition with the most files, commits since the last checkpoint and bytes waiting for vacuum.
-- params:
-- reads: *
-- cache: no
SELECT table_name, files, bytes, small_files, largest_partition, largest_partition_files,
       commits_since_checkpoint, vacuum_bytes, health_at
FROM strata_tables
ORDER BY table_name
