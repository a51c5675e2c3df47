"""DuckDB on the same Parquet files as Strata's rollups, for `strata bench query --duckdb-python`.

Usage: python bench_duckdb.py ROOT  -> prints {"click_stats_daily": seconds, ...}
(and per rollup "<rollup>:rows" and "<rollup>:check", sums of its counts, to compare engines)

It also checks Strata's answers, not only its times: each rollup table Strata wrote under ROOT is
compared row by row with DuckDB's on every user-visible column ("<rollup>:strata_diff", the rows
in one answer and not the other, EXCEPT ALL both ways; 0 is equal). p95_latency_ms comes from
Strata's latency sketch (1% relative error by design), so it is compared apart, as the rows whose
p95 is off DuckDB's exact quantile_cont by more than 2% ("ai_usage_daily:p95_off").

Reads the live files of each Delta table from its log (adds minus removes), materialises the
same three rollups (exact distinct counts; no sketches, which DuckDB does not have in the same
form) into memory, and reports the wall time of each. Then it runs each again writing the result
as zstd Parquet partitioned by event_date into a temporary directory (what Strata's rollups
also do, less the Delta commit), reported as "<rollup>:parquet".
"""
import json
import os
import shutil
import sys
import tempfile
import time

import duckdb

from delta_files import live_files


def main():
    root = sys.argv[1]
    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count()}")
    clicks = live_files(root, "link_clicks")
    ai = live_files(root, "ai_usage")
    def files(paths):
        return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"

    con.execute(f"CREATE VIEW link_clicks AS SELECT * FROM read_parquet({files(clicks)}, hive_partitioning = true)")
    con.execute(f"CREATE VIEW ai_usage AS SELECT * FROM read_parquet({files(ai)}, hive_partitioning = true)")
    queries = {
        "click_stats_daily": """
            CREATE OR REPLACE TEMP TABLE r1 AS
            SELECT event_date, coalesce(category, '(none)') AS category, item_type, source,
                   count(*) AS clicks, count(*) FILTER (WHERE NOT coalesce(is_bot, false)) AS human_clicks,
                   count(DISTINCT coalesce(user_id, 'anon:' || anonymous_id)) AS unique_users,
                   count(DISTINCT session_id) AS unique_sessions
            FROM link_clicks GROUP BY ALL""",
        "click_stats_daily_items": """
            CREATE OR REPLACE TEMP TABLE r2 AS
            SELECT event_date, item_id, item_type, coalesce(category, '(none)') AS category,
                   count(*) AS clicks, count(*) FILTER (WHERE NOT coalesce(is_bot, false)) AS human_clicks,
                   count(DISTINCT coalesce(user_id, 'anon:' || anonymous_id)) AS unique_users
            FROM link_clicks GROUP BY ALL""",
        "ai_usage_daily": """
            CREATE OR REPLACE TEMP TABLE r3 AS
            SELECT event_date, feature, provider, model, count(*) AS calls,
                   count(*) FILTER (WHERE status <> 'ok') AS errors,
                   sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
                   sum(cost_usd) AS cost_usd, quantile_cont(latency_ms, 0.95) AS p95_latency_ms
            FROM ai_usage GROUP BY ALL""",
    }
    checks = {
        "click_stats_daily": ("r1", ["clicks", "human_clicks", "unique_users", "unique_sessions"]),
        "click_stats_daily_items": ("r2", ["clicks", "human_clicks", "unique_users"]),
        "ai_usage_daily": ("r3", ["calls", "errors", "input_tokens", "output_tokens"]),
    }
    out = {}
    for name, sql in queries.items():
        started = time.perf_counter()
        con.execute(sql)
        out[name] = time.perf_counter() - started
        table, columns = checks[name]
        sums = con.execute(
            f"SELECT count(*), {', '.join(f'sum({c})' for c in columns)} FROM {table}"
        ).fetchone()
        out[name + ":rows"] = int(sums[0])
        out[name + ":check"] = {c: int(v or 0) for c, v in zip(columns, sums[1:])}
    compare_with_strata(con, root, out, files)
    tmp = tempfile.mkdtemp(prefix="strata-duckdb-")
    try:
        for name, sql in queries.items():
            select = sql[sql.index("SELECT"):]
            target = os.path.join(tmp, name)
            started = time.perf_counter()
            con.execute(
                f"COPY ({select}) TO '{target}' "
                "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (event_date))"
            )
            out[name + ":parquet"] = time.perf_counter() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


# The columns a user reads from each rollup, compared exactly (the sketches are not user values).
EXACT_COLUMNS = {
    "click_stats_daily": ("r1", "event_date, category, item_type, source, clicks, human_clicks, "
                                "unique_users, unique_sessions"),
    "click_stats_daily_items": ("r2", "event_date, item_id, item_type, category, clicks, "
                                      "human_clicks, unique_users"),
    "ai_usage_daily": ("r3", "event_date, feature, provider, model, calls, errors, input_tokens, "
                             "output_tokens, cost_usd"),
}


def compare_with_strata(con, root, out, files):
    """Strata's rollup tables (their live files) against DuckDB's answers r1, r2, r3."""
    for name, (table, columns) in EXACT_COLUMNS.items():
        strata = live_files(root, name)
        if not strata:
            out[name + ":strata_diff"] = None
            continue
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW s_{table} AS "
            f"SELECT * FROM read_parquet({files(strata)}, hive_partitioning = true)"
        )
        diff = con.execute(
            f"SELECT count(*) FROM ("
            f"(SELECT {columns} FROM {table} EXCEPT ALL SELECT {columns} FROM s_{table}) "
            f"UNION ALL "
            f"(SELECT {columns} FROM s_{table} EXCEPT ALL SELECT {columns} FROM {table}))"
        ).fetchone()[0]
        out[name + ":strata_diff"] = int(diff)
    if out.get("ai_usage_daily:strata_diff") is not None:
        keys = "event_date, feature, provider, model"
        out["ai_usage_daily:p95_off"] = int(con.execute(
            f"SELECT count(*) FROM r3 JOIN s_r3 USING ({keys}) "
            f"WHERE abs(s_r3.p95_latency_ms - r3.p95_latency_ms) > 0.02 * r3.p95_latency_ms"
        ).fetchone()[0])


if __name__ == "__main__":
    main()
