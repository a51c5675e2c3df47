"""Real Postgres clients against `strata serve --pg-listen`, for the analysts' tests.

Usage: python pg_clients.py CHECK HOST PORT USER TOKEN ROOT

CHECK is one of:
  types     psycopg: every column of link_clicks and ai_usage_daily arrives with the Postgres
            type its Delta column has (read independently with the `deltalake` package), and
            values equal what that reader sees (row counts, an exact decimal sum, a
            parameterised count, dates and timestamps).
  grafana   the statements Grafana's PostgreSQL data source sends, in order (connect, health
            check, version detection, table and column lists, a time series with its macros
            expanded as Grafana expands them), each checked against the data.
  cancel    a long query cancelled by a Postgres cancel request stops with SQLSTATE 57014.
  timeout   a query past the server's time limit fails with SQLSTATE 57014.

Exits non-zero with the reason when a check fails; prints a JSON summary otherwise.
"""
import datetime
import decimal
import json
import sys
import threading
import time

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from client_checks import LONG_QUERY, check, fail

# Postgres type OIDs (pg_type.dat) and the Python class psycopg gives a value of each.
BOOL, BYTEA, INT8, INT2, INT4, TEXT, FLOAT4, FLOAT8 = 16, 17, 20, 21, 23, 25, 700, 701
DATE, TIMESTAMP, TIMESTAMPTZ, NUMERIC = 1082, 1114, 1184, 1700


def expected_type(t):
    """(OID, Python class) a column of Arrow type `t` must arrive as."""
    if pa.types.is_boolean(t):
        return BOOL, bool
    if pa.types.is_int64(t) or pa.types.is_uint32(t):
        return INT8, int
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return INT4, int
    if pa.types.is_int16(t) or pa.types.is_int8(t) or pa.types.is_uint8(t):
        return INT2, int
    if pa.types.is_float64(t):
        return FLOAT8, float
    if pa.types.is_float32(t):
        return FLOAT4, float
    if pa.types.is_decimal(t):
        return NUMERIC, decimal.Decimal
    if pa.types.is_timestamp(t):
        return (TIMESTAMPTZ if t.tz else TIMESTAMP), datetime.datetime
    if pa.types.is_date(t):
        return DATE, datetime.date
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return TEXT, str
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return BYTEA, bytes
    if pa.types.is_dictionary(t):
        return expected_type(t.value_type)
    raise SystemExit(f"no expected Postgres type for Arrow type {t}")




def connect(host, port, user, token, **kw):
    return psycopg.connect(
        host=host, port=port, user=user, password=token, dbname="strata",
        sslmode="disable", connect_timeout=10, autocommit=True, **kw)


def delta(root, table):
    return DeltaTable(f"{root}/tables/{table}").to_pyarrow_table()


def check_types(conn, root):
    summary = {}
    for table in ["link_clicks", "ai_usage_daily"]:
        arrow = delta(root, table)
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {table} LIMIT 50")
            rows = cur.fetchall()
            check(rows, f"{table}: no rows over Postgres")
            names = [d.name for d in cur.description]
            check(sorted(names) == sorted(arrow.schema.names),
                  f"{table}: columns {names} != the Delta table's {arrow.schema.names}")
            for i, d in enumerate(cur.description):
                oid, cls = expected_type(arrow.schema.field(d.name).type)
                check(d.type_code == oid,
                      f"{table}.{d.name}: type OID {d.type_code}, expected {oid} for {arrow.schema.field(d.name).type}")
                values = [r[i] for r in rows if r[i] is not None]
                check(all(isinstance(v, cls) for v in values),
                      f"{table}.{d.name}: values {values[:3]!r} are not all {cls.__name__}")
                if cls is datetime.datetime and oid == TIMESTAMPTZ:
                    check(all(v.tzinfo is not None for v in values), f"{table}.{d.name}: naive timestamp")
            cur.execute(f"SELECT count(*) FROM {table}")
            (n,) = cur.fetchone()
            check(n == arrow.num_rows, f"{table}: {n} rows over Postgres, {arrow.num_rows} in Delta")
            summary[table] = {"rows": n, "columns": len(names)}

    # Exact money: the decimal sum over Postgres equals the sum of the Delta table's decimals.
    usage = delta(root, "ai_usage")
    cost = [f for f in usage.schema.names if f.startswith("cost")][0]
    want = pc.sum(usage[cost]).as_py()
    with conn.cursor() as cur:
        cur.execute(f"SELECT sum({cost}) FROM ai_usage")
        (got,) = cur.fetchone()
    check(isinstance(got, decimal.Decimal) and got == want, f"sum({cost}): {got!r} != {want!r}")

    # A parameterised query (server-side binding: the extended protocol with $1, $2).
    clicks = delta(root, "link_clicks")
    country = clicks["country"][0].as_py()
    since = clicks["event_date"][len(clicks) // 2].as_py()
    mask = pc.and_(pc.equal(clicks["country"], country), pc.greater_equal(clicks["event_date"], since))
    want_n = pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM link_clicks WHERE country = %s AND event_date >= %s",
                    (country, since))
        (got_n,) = cur.fetchone()
        check(got_n == want_n, f"parameterised count {got_n} != {want_n}")
        # The same statement again, now prepared on the server (psycopg prepares on reuse).
        cur.execute("SELECT count(*) FROM link_clicks WHERE country = %s AND event_date >= %s",
                    (country, since), prepare=True)
        (again,) = cur.fetchone()
        check(again == want_n, f"prepared count {again} != {want_n}")
        # A null parameter and a typed one.
        cur.execute("SELECT %s::text IS NULL, %s::bigint + 1", (None, 41))
        check(cur.fetchone() == (True, 42), "null and bigint parameters")
        # Dates and timestamps round-trip.
        cur.execute("SELECT min(event_date), max(ingested_at) FROM link_clicks")
        lo, hi = cur.fetchone()
        check(lo == pc.min(clicks["event_date"]).as_py(), f"min(event_date) {lo}")
        want_hi = pc.max(clicks["ingested_at"]).as_py()
        check(hi == want_hi, f"max(ingested_at) {hi} != {want_hi}")
        # Settings clients read.
        cur.execute("SELECT current_setting('server_version_num'), current_setting('search_path'), version()")
        num, path, ver = cur.fetchone()
        check(num == "160006" and path == "public" and ver.startswith("PostgreSQL 16"), f"settings {num} {path} {ver}")
        cur.execute("SHOW server_version")
        check(cur.fetchone()[0].startswith("16"), "SHOW server_version")
        check(conn.info.server_version >= 160000, f"server_version {conn.info.server_version}")
    summary["parameterised_count"] = got_n
    summary["cost_sum"] = str(got)
    return summary


def check_cancel(conn):
    started = time.monotonic()
    timer = threading.Timer(1.0, conn.cancel)
    timer.start()
    try:
        with conn.cursor() as cur:
            cur.execute(LONG_QUERY)
            cur.fetchall()
        fail("the long query was not cancelled")
    except psycopg.errors.QueryCanceled as e:
        took = time.monotonic() - started
        check(took < 20, f"cancel took {took:.1f} s")
        return {"sqlstate": e.sqlstate, "seconds": round(took, 2)}
    finally:
        timer.cancel()


def check_timeout(conn):
    try:
        with conn.cursor() as cur:
            cur.execute(LONG_QUERY)
            cur.fetchall()
        fail("the long query did not time out")
    except psycopg.errors.QueryCanceled as e:
        check("timeout" in str(e), f"timeout message: {e}")
        return {"sqlstate": e.sqlstate}


def main():
    what, host, port, user, token, root = sys.argv[1:7]
    conn = connect(host, int(port), user, token)
    if what == "types":
        out = check_types(conn, root)
    elif what == "grafana":
        import grafana_replay
        out = grafana_replay.replay(conn, root, check)
    elif what == "cancel":
        out = check_cancel(conn)
    elif what == "timeout":
        out = check_timeout(conn)
    else:
        fail(f"unknown check {what}")
    # The connection is still usable after the check.
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        check(cur.fetchone() == (1,), "the connection answers after the check")
    conn.close()
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
