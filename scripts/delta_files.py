"""The live data files of a Delta table, read from its log (adds minus removes), for the peer
engines of `strata bench query` (scripts/bench_duckdb.py, scripts/bench_polars.py): each reads
exactly the files Strata's rollups read.
"""
import json
import os


def live_files(root, table):
    log = os.path.join(root, "tables", table, "_delta_log")
    files = {}
    for name in sorted(os.listdir(log)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(log, name)) as f:
            for line in f:
                a = json.loads(line)
                if "add" in a:
                    files[a["add"]["path"]] = True
                elif "remove" in a:
                    files.pop(a["remove"]["path"], None)
    return [os.path.join(root, "tables", table, p) for p in files]
