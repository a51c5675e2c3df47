#!/usr/bin/env python3
"""Reads a Delta table with the `deltalake` Python package and prints a one-line summary.

Used by an integration test to check that the tables Strata writes are readable by another
Delta implementation (delta-rs' Python bindings, reading through pyarrow).

Usage:
    delta_read_check.py TABLE_URI [--storage-option KEY=VALUE ...]

Prints one line of JSON on stdout:
    {"rows": N, "distinct_event_ids": M, "version": V, "files": F}
`distinct_event_ids` is null when the table has no `event_id` column. Any failure exits
non-zero with a message on stderr.
"""

import argparse
import json
import os
import sys


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table_uri", metavar="TABLE_URI")
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="storage option passed to DeltaTable (repeatable)",
    )
    args = parser.parse_args(argv)
    options = {}
    for item in args.storage_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--storage-option expects KEY=VALUE, got {item!r}")
        options[key] = value
    return args.table_uri, options


def read_table(dt):
    """The whole current snapshot as a pyarrow Table."""
    to_table = getattr(dt, "to_pyarrow_table", None)
    if callable(to_table):
        return to_table()
    return dt.to_pyarrow_dataset().to_table()


def count_files(dt):
    """Number of data files in the current snapshot."""
    files = getattr(dt, "files", None)
    if callable(files):
        return len(files())
    file_uris = getattr(dt, "file_uris", None)
    if callable(file_uris):
        return len(file_uris())
    actions = dt.get_add_actions(flatten=True)
    return actions.num_rows if hasattr(actions, "num_rows") else len(actions)


def main(argv):
    uri, options = parse_args(argv)

    import pyarrow.compute as pc
    from deltalake import DeltaTable

    dt = DeltaTable(uri, storage_options=options or None)
    table = read_table(dt)

    distinct = None
    if "event_id" in table.column_names:
        distinct = pc.count_distinct(table.column("event_id")).as_py()

    summary = {
        "rows": table.num_rows,
        "distinct_event_ids": distinct,
        "version": dt.version(),
        "files": count_files(dt),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - report anything, then fail
        print(f"delta_read_check: {type(e).__name__}: {e}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # No interpreter teardown: the native thread pools of deltalake/pyarrow can abort the
    # process while they are destroyed ("terminate called without an active exception"),
    # after the summary is out, which turned a good read into a failed one under load.
    os._exit(code)
