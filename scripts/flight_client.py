"""ADBC's Flight SQL driver (adbc-driver-flightsql) against `strata serve --flight-listen`.

Usage: python flight_client.py CHECK URI TOKEN ROOT

CHECK is one of:
  read      a query read into a pyarrow Table equals what the `deltalake` package reads from
            the same Delta table (rows, an exact decimal sum, column types); a parameterised
            query (prepared statement with a bound $1); the catalog, schema and table lists.
  denied    prints the error of a statement the server must refuse (the statement is argv[5]).
  timeout   a query past the server's time limit fails, and the next query runs.

Exits non-zero with the reason when a check fails; prints a JSON summary otherwise.
"""
import json
import sys

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.compute as pc
from adbc_driver_flightsql import DatabaseOptions
from deltalake import DeltaTable

from client_checks import LONG_QUERY, check, fail




def connect(uri, token):
    return flightsql.connect(
        uri,
        db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"},
        autocommit=True,
    )


def same_type(a, b):
    """Arrow types equal up to the string and binary layouts (view or not)."""
    def norm(t):
        if pa.types.is_string_view(t) or pa.types.is_large_string(t):
            return pa.string()
        if pa.types.is_binary_view(t) or pa.types.is_large_binary(t):
            return pa.binary()
        if pa.types.is_dictionary(t):
            return norm(t.value_type)
        return t
    return norm(a) == norm(b)


def read(uri, token, root):
    out = {}
    with connect(uri, token) as conn, conn.cursor() as cur:
        for table in ["link_clicks", "ai_usage"]:
            want = DeltaTable(f"{root}/tables/{table}").to_pyarrow_table()
            cur.execute(f"SELECT * FROM {table}")
            got = cur.fetch_arrow_table()
            check(got.num_rows == want.num_rows, f"{table}: {got.num_rows} rows, Delta has {want.num_rows}")
            for name in want.schema.names:
                check(name in got.schema.names, f"{table}: column {name} missing")
                check(same_type(got.schema.field(name).type, want.schema.field(name).type),
                      f"{table}.{name}: {got.schema.field(name).type} != {want.schema.field(name).type}")
            out[table] = got.num_rows
        usage = DeltaTable(f"{root}/tables/ai_usage").to_pyarrow_table()
        cur.execute("SELECT sum(cost_usd) AS total FROM ai_usage")
        total = cur.fetch_arrow_table()["total"][0].as_py()
        check(total == pc.sum(usage["cost_usd"]).as_py(), f"sum(cost_usd) {total}")
        out["cost_sum"] = str(total)

        clicks = DeltaTable(f"{root}/tables/link_clicks").to_pyarrow_table()
        country = clicks["country"][0].as_py()
        want_n = pc.sum(pc.cast(pc.equal(clicks["country"], country), pa.int64())).as_py()
        cur.execute("SELECT count(*) AS n FROM link_clicks WHERE country = $1", parameters=[country])
        got_n = cur.fetch_arrow_table()["n"][0].as_py()
        check(got_n == want_n, f"parameterised count {got_n} != {want_n}")
        out["parameterised_count"] = got_n

        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        catalogs = [c["catalog_name"] for c in objects]
        check(catalogs == ["strata"], f"catalogs {catalogs}")
        schemas = [s["db_schema_name"] for s in objects[0]["catalog_db_schemas"]]
        check(schemas == ["public"], f"schemas {schemas}")
        tables = sorted(t["table_name"] for t in objects[0]["catalog_db_schemas"][0]["db_schema_tables"])
        for t in ["link_clicks", "ai_usage", "ai_usage_daily", "click_stats_daily"]:
            check(t in tables, f"table {t} not listed: {tables}")
        schema = conn.adbc_get_table_schema("link_clicks", catalog_filter="strata", db_schema_filter="public")
        check("event_date" in schema.names, f"link_clicks schema {schema.names}")
        out["tables"] = tables
    return out


def denied(uri, token, sql):
    try:
        with connect(uri, token) as conn, conn.cursor() as cur:
            cur.execute(sql)
            cur.fetch_arrow_table()
    except Exception as e:  # noqa: BLE001 - the error is what is checked
        return {"error": type(e).__name__, "message": str(e)}
    fail(f"`{sql}` was not refused")


def timeout(uri, token):
    with connect(uri, token) as conn, conn.cursor() as cur:
        try:
            cur.execute(LONG_QUERY)
            cur.fetch_arrow_table()
            fail("the long query did not time out")
        except Exception as e:  # noqa: BLE001
            message = str(e)
        cur.execute("SELECT 1 AS one")
        check(cur.fetch_arrow_table()["one"][0].as_py() == 1, "a query after the timeout")
    return {"message": message}


def main():
    what, uri, token = sys.argv[1:4]
    if what == "read":
        out = read(uri, token, sys.argv[4])
    elif what == "denied":
        out = denied(uri, token, sys.argv[4])
    elif what == "timeout":
        out = timeout(uri, token)
    else:
        fail(f"unknown check {what}")
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
