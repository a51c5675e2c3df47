"""What the analysts' client scripts (scripts/pg_clients.py, scripts/flight_client.py) share:
the statement that runs long enough to be cancelled or timed out, and failing a check with its
reason on stderr and a non-zero exit.
"""
import sys

# A scan of 20 billion generated rows: minutes on any machine, so it is cut by a cancel or a
# time limit long before it ends.
LONG_QUERY = "SELECT count(*) FROM generate_series(1, 20000000000) AS t(x) WHERE x % 7 = 3"


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
