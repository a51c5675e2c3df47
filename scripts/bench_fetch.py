"""Clients of `strata bench fetch`: the same rows fetched over each surface, timed.

Usage: python bench_fetch.py HTTP_BASE PG_PORT FLIGHT_URI USER TOKEN SQL REPEATS
  -> prints {"http_json": {"rows": N, "seconds": [..]}, "http_arrow": ..., "postgres": ...,
             "flight_sql": ...}

Each client is what an analyst would use, reading the whole answer into memory in its usual
form: HTTP JSON parsed with `json`, HTTP Arrow read into a pyarrow Table, Postgres rows through
psycopg (text format, Python objects), Flight SQL through ADBC into a pyarrow Table.
"""
import json
import sys
import time
import urllib.request

import adbc_driver_flightsql.dbapi as flightsql
import psycopg
import pyarrow.ipc as ipc
from adbc_driver_flightsql import DatabaseOptions


def http(base, token, sql, fmt):
    req = urllib.request.Request(
        f"{base}/v1/sql?format={fmt}", data=sql.encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        body = resp.read()
    if fmt == "json":
        return len(json.loads(body))
    return ipc.open_stream(body).read_all().num_rows


def postgres(port, user, token, sql):
    with psycopg.connect(host="127.0.0.1", port=port, user=user, password=token,
                         dbname="strata", sslmode="disable", autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(sql, prepare=False)
            return len(cur.fetchall())


def flight(uri, token, sql):
    with flightsql.connect(uri, db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"},
                           autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetch_arrow_table().num_rows


def main():
    base, pg_port, uri, user, token, sql, repeats = sys.argv[1:8]
    surfaces = {
        "http_json": lambda: http(base, token, sql, "json"),
        "http_arrow": lambda: http(base, token, sql, "arrow"),
        "postgres": lambda: postgres(int(pg_port), user, token, sql),
        "flight_sql": lambda: flight(uri, token, sql),
    }
    out = {}
    for name, fetch in surfaces.items():
        seconds, rows = [], None
        for _ in range(int(repeats)):
            started = time.perf_counter()
            n = fetch()
            seconds.append(time.perf_counter() - started)
            if rows is not None and n != rows:
                raise SystemExit(f"{name}: {n} rows, then {rows}")
            rows = n
        out[name] = {"rows": rows, "seconds": seconds}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
