"""Looks for a data subject's id in every byte a reader can reach under a storage root, outside
Strata: every Parquet file is read with pyarrow (all string and binary cells, compared and
searched), every other file (Delta logs, checkpoints' JSON, manifests, exports) is searched as
bytes. Prints {"files": N, "parquet_files": M, "hits": [...]}.

Usage: python gdpr_scan.py ROOT ID [ID ...]
"""
import json
import os
import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def cells(table):
    for col in table.columns:
        t = col.type
        if pa.types.is_dictionary(t):
            col = col.cast(t.value_type)
            t = t.value_type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string_view(t):
            for v in col.to_pylist():
                if v is not None:
                    yield v if isinstance(v, str) else bytes(v).decode("utf-8", "replace")


def main():
    root, ids = sys.argv[1], sys.argv[2:]
    # An id counts as found only as a whole token: `u-0` is not in `u-012`.
    pats = {i: re.compile(r"(?<![A-Za-z0-9_-])" + re.escape(i) + r"(?![A-Za-z0-9_-])") for i in ids}
    bpats = {i: re.compile(rb"(?<![A-Za-z0-9_-])" + re.escape(i.encode()) + rb"(?![A-Za-z0-9_-])") for i in ids}
    hits, files, parquets = [], 0, 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            files += 1
            with open(path, "rb") as f:
                raw = f.read()
            for i in ids:
                if bpats[i].search(raw):
                    hits.append({"file": path, "kind": "bytes", "id": i})
            if name.endswith(".parquet"):
                parquets += 1
                for v in cells(pq.read_table(path)):
                    for i in ids:
                        if pats[i].search(v):
                            hits.append({"file": path, "kind": "cell", "id": i})
                            break
    print(json.dumps({"files": files, "parquet_files": parquets, "hits": hits}))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    # No interpreter teardown: pyarrow's native thread pools can abort the process while
    # they are destroyed, after the result is out (see delta_read_check.py).
    os._exit(0)
