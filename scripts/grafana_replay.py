"""The statements Grafana's PostgreSQL data source sends, replayed over psycopg (pg_clients.py).

Grafana (pgx) sends every statement over the simple query protocol with no session setup:
`-- ping` as its health check (pgx's Ping), the version detection of the data source's
configuration page, the schema, table and column lists of the query builder (table names
inlined between quotes), and panel queries with the macros expanded as Grafana's macros.go
expands them. The texts are Grafana's own (public/app/plugins/datasource/
grafana-postgresql-datasource/postgresMetaQuery.ts and sqlUtil), with its demo table `metrics`
and column `ts` replaced by `link_clicks` and `occurred_at`.
"""
import datetime

import pyarrow.compute as pc
from deltalake import DeltaTable

FROM, TO = "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"

SEARCH_PATH_MEMBERS = """
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          """

PING = "-- ping"
VERSION = "SELECT current_setting('server_version_num')::int/100 as version"
TIMESCALE = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
SCHEMAS = """SELECT schema_name AS "name"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name"""
TABLES_IN_PUBLIC = """SELECT quote_ident(table_name) AS "table"
      FROM information_schema.tables
      WHERE quote_ident(table_schema) = 'public'
      ORDER BY 1"""
TABLES = f"""SELECT
    CASE WHEN 
          quote_ident(table_schema) IN ({SEARCH_PATH_MEMBERS})
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN 
          quote_ident(table_schema) IN ({SEARCH_PATH_MEMBERS}) THEN 0 ELSE 1 END, 1"""


def columns_of(table):
    t = table.replace("'", "''")
    return f"""SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('{t}'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('{t}'))[1]
          AND quote_ident(table_name) = (parse_ident('{t}'))[2]
        ELSE quote_ident(table_name) = '{t}'
          AND 
          quote_ident(table_schema) IN ({SEARCH_PATH_MEMBERS})
      END"""


# SELECT $__timeGroupAlias(occurred_at,'1h'), count(*) AS "clicks" FROM link_clicks
#   WHERE $__timeFilter(occurred_at) GROUP BY 1 ORDER BY 1
SERIES = (
    'SELECT floor(extract(epoch from occurred_at)/3600)*3600 AS "time", count(*) AS "clicks" '
    f"FROM link_clicks WHERE occurred_at BETWEEN '{FROM}' AND '{TO}' GROUP BY 1 ORDER BY 1"
)
# SELECT $__timeGroup(occurred_at,'1d') AS "time", count(*) FROM link_clicks
#   WHERE occurred_at >= $__timeFrom() AND occurred_at < $__timeTo() GROUP BY 1 ORDER BY 1
DAILY = (
    'SELECT floor(extract(epoch from occurred_at)/86400)*86400 AS "time", count(*) FROM link_clicks '
    f"WHERE occurred_at >= '{FROM}' AND occurred_at < '{TO}' GROUP BY 1 ORDER BY 1"
)


def run(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql, prepare=False)
        return cur.fetchall() if cur.description is not None else None


def buckets(root, seconds, inclusive_end):
    clicks = DeltaTable(f"{root}/tables/link_clicks").to_pyarrow_table(columns=["occurred_at"])
    lo = datetime.datetime(2026, 10, 1, tzinfo=datetime.timezone.utc)
    hi = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)
    counts = {}
    for ts in clicks["occurred_at"].to_pylist():
        if ts is None or ts < lo or ts > hi or (ts == hi and not inclusive_end):
            continue
        b = int(ts.timestamp()) // seconds * seconds
        counts[b] = counts.get(b, 0) + 1
    return sorted(counts.items())


def replay(conn, root, check):
    statements = 0

    check(run(conn, PING) is None, "-- ping: an empty query answers no rows")
    statements += 1

    rows = run(conn, VERSION)
    check(rows == [(1600,)], f"version detection: {rows}")
    statements += 1

    rows = run(conn, TIMESCALE)
    check(rows == [], f"timescaledb detection: {rows}")
    statements += 1

    rows = run(conn, SCHEMAS)
    check(("public",) in rows, f"schemas: {rows}")
    statements += 1

    rows = run(conn, TABLES_IN_PUBLIC)
    names = [r[0] for r in rows]
    for t in ["link_clicks", "ai_usage", "ai_usage_daily"]:
        check(t in names, f"tables of public: {names}")
    statements += 1

    rows = run(conn, TABLES)
    listed = [r[0] for r in rows]
    entry = next((t for t in listed if t.split(".")[-1] == "link_clicks"), None)
    check(entry is not None, f"the table list lacks link_clicks: {listed}")
    statements += 1

    # The builder asks for the columns of the table as the list spelled it.
    rows = run(conn, columns_of(entry))
    want = [f.name for f in DeltaTable(f"{root}/tables/link_clicks").schema().fields]
    check(sorted(r[0] for r in rows) == sorted(want), f"columns of {entry}: {rows}")
    types = dict(rows)
    check(types["event_date"] in ("date", "Date32"), f"event_date's type: {types['event_date']}")
    statements += 1

    rows = run(conn, SERIES)
    got = [(int(t), n) for t, n in rows]
    check(got == buckets(root, 3600, True), f"hourly series: {got[:5]}...")
    check(got, "the hourly series is empty: the fixture's events are outside the range")
    statements += 1

    rows = run(conn, DAILY)
    got = [(int(t), n) for t, n in rows]
    check(got == buckets(root, 86400, False), f"daily series: {got}")
    statements += 1

    return {"statements": statements, "hourly_buckets": len(got)}
