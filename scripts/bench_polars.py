"""Polars on the same Parquet files as Strata's rollups, for `strata bench query --polars-python`.

Usage: python bench_polars.py ROOT  -> prints {"click_stats_daily": seconds, ...}

The same three rollups as scripts/bench_duckdb.py (the user-visible columns with exact daily
distinct counts; no sketches), from the live files of each Delta table (adds minus removes),
with as many threads as DuckDB gets (POLARS_MAX_THREADS = the cores). Each is timed in memory,
then again written as zstd Parquet partitioned by event_date ("<rollup>:parquet"). Its answers
are summed per rollup ("<rollup>:check") so the harness can compare them with DuckDB's.
"""
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("POLARS_MAX_THREADS", str(os.cpu_count()))

import polars as pl  # noqa: E402  (the thread count is read at import)

from delta_files import live_files  # noqa: E402


def rollups(root):
    clicks = pl.scan_parquet(live_files(root, "link_clicks"), hive_partitioning=True)
    ai = pl.scan_parquet(live_files(root, "ai_usage"), hive_partitioning=True)
    human = (~pl.col("is_bot").fill_null(False)).sum().alias("human_clicks")
    user = pl.coalesce(pl.col("user_id"), pl.lit("anon:") + pl.col("anonymous_id"))
    category = pl.col("category").fill_null("(none)").alias("category")
    return {
        "click_stats_daily": clicks.group_by(
            "event_date", category, "item_type", "source"
        ).agg(
            pl.len().alias("clicks"),
            human,
            user.drop_nulls().n_unique().alias("unique_users"),
            pl.col("session_id").drop_nulls().n_unique().alias("unique_sessions"),
        ),
        "click_stats_daily_items": clicks.group_by(
            "event_date", "item_id", "item_type", category
        ).agg(
            pl.len().alias("clicks"),
            human,
            user.drop_nulls().n_unique().alias("unique_users"),
        ),
        "ai_usage_daily": ai.group_by("event_date", "feature", "provider", "model").agg(
            pl.len().alias("calls"),
            (pl.col("status") != "ok").sum().alias("errors"),
            pl.col("input_tokens").sum(),
            pl.col("output_tokens").sum(),
            pl.col("cost_usd").sum(),
            pl.col("latency_ms").quantile(0.95, interpolation="linear").alias("p95_latency_ms"),
        ),
    }


CHECK = {
    "click_stats_daily": ["clicks", "human_clicks", "unique_users", "unique_sessions"],
    "click_stats_daily_items": ["clicks", "human_clicks", "unique_users"],
    "ai_usage_daily": ["calls", "errors", "input_tokens", "output_tokens"],
}


def main():
    root = sys.argv[1]
    out = {}
    for name, plan in rollups(root).items():
        started = time.perf_counter()
        frame = plan.collect()
        out[name] = time.perf_counter() - started
        out[name + ":rows"] = frame.height
        out[name + ":check"] = {c: int(frame[c].sum()) for c in CHECK[name]}
    tmp = tempfile.mkdtemp(prefix="strata-polars-")
    try:
        for name, plan in rollups(root).items():
            target = os.path.join(tmp, name)
            started = time.perf_counter()
            plan.collect().write_parquet(target, compression="zstd", partition_by="event_date")
            out[name + ":parquet"] = time.perf_counter() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
