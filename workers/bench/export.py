"""`bench export`: label-dataset export throughput (JSONL, Parquet) and peak memory at 100k and
1M rows, each measured in a fresh process streaming the whole export through the real view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from browser.accounts.services import user_create
from browser.catalog.models import Model, Source, Unit
from browser.catalog.services import model_create, source_get_or_create, units_ensure
from browser.core.copy import copy_rows
from browser.labels.models import Label

HELP = "label export rows/s (JSONL, Parquet) and peak RSS of a fresh process exporting 100k and 1M labels"
MODEL = "bench-export"
UNITS = 100_000


def add_arguments(parser: Any) -> None:
    parser.add_argument("--small", type=int, default=100_000, help="rows of the first measured export")
    parser.add_argument("--large", type=int, default=1_000_000, help="rows of the second measured export")
    parser.add_argument("--keep", action="store_true", help="keep the bench labels afterwards")


def main(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    if not 1000 <= opts["small"] <= opts["large"] <= 5_000_000:
        raise ValueError("need 1000 <= --small <= --large <= 5,000,000")
    return run(small=opts["small"], large=opts["large"], keep=opts["keep"], log=log)


def _authors(n: int) -> list[int]:
    User = get_user_model()
    ids = []
    for i in range(n):
        user = (User.objects.filter(username=f"bench-export-{i}").first()
                or user_create(username=f"bench-export-{i}", password=None, role="annotator"))
        ids.append(user.pk)
    return ids


def fill(rows: int, log: Any) -> None:
    """Exactly ``rows`` labels over 100k units, one more author per 100k rows (COPY; reused when the
    count is right, made again otherwise)."""
    model = Model.objects.filter(name=MODEL).first() or model_create(
        name=MODEL, kind="encoder", architecture="bench", location="-", n_layers=1, d_model=1, d_mlp=UNITS,
        vocab_size=0, tokenizer=None)
    source = source_get_or_create(model=model, name="blocks.0.mlp.hook_post", hook_point="blocks.0.mlp.hook_post",
                                  layer=0, kind=Source.Kind.NEURONS, n_units=UNITS)
    units_ensure(source=source)
    have = Label.objects.filter(unit__source=source).count()
    if have == rows:
        return
    unit_ids = list(Unit.objects.filter(source=source).order_by("index").values_list("id", flat=True))
    authors = _authors(-(-rows // UNITS))
    now = timezone.now()
    start = time.perf_counter()
    with transaction.atomic():
        Label.objects.filter(unit__source=source).delete()
        pairs = ((a, u) for a in authors for u in unit_ids)
        copy_rows("labels_label", ["unit_id", "author_id", "text", "tags", "confidence", "machine", "revision",
                                   "created", "updated"],
                  ["int8", "int4", "text", "jsonb", "float8", "bool", "int4", "timestamptz", "timestamptz"],
                  ((u, a, f"fires on token {u % 997} in lists of {a}", Jsonb(["bench"]), 0.5, False, 1,
                    now, now) for n, (a, u) in zip(range(rows), pairs, strict=False)))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE labels_label")
    log.write(f"filled {rows:,} labels in {time.perf_counter() - start:.1f} s\n")


# Streams the export to a file (JSONL: counting its lines on the way), then reads the Parquet
# file's row count from its footer: rows/s comes from the rows the export wrote. CPU seconds, which
# the other work on a shared machine does not change the way it changes wall time: this process's
# (rusage: Arrow's threads too) and its PostgreSQL backend's, read from /proc where the server runs on
# this machine (a fresh connection, so its whole life is this export's), else null.
MEASURE = """
import django, json, os, resource, sys, tempfile, time
django.setup()
from django.db import connection
from rest_framework.test import APIClient
fmt, model = sys.argv[1], sys.argv[2]
vm_hwm_mb = lambda: int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) / 1024
def cpu(pid=None):
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    try:
        if b'postgres' not in open(f'/proc/{pid}/cmdline', 'rb').read():
            return None  # the server runs elsewhere (another machine, a container)
        fields = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
with tempfile.NamedTemporaryFile(suffix='.' + fmt) as out:
    t, c = time.perf_counter(), cpu()
    r = APIClient().get(f'/api/v1/exports/labels.{fmt}?model={model}')
    n = lines = 0
    backend = None
    for part in r.streaming_content:
        backend = backend or connection.connection.info.backend_pid
        n += len(part)
        lines += part.count(b'\\n')
        out.write(part)
    out.flush()
    seconds, client, rss = time.perf_counter() - t, cpu() - c, vm_hwm_mb()
    server = cpu(backend) if backend else None
    r.close()
    if fmt == 'parquet':
        import pyarrow.parquet
        rows = pyarrow.parquet.read_metadata(out.name).num_rows
    else:
        rows = lines
print(json.dumps({'seconds': seconds, 'bytes': n, 'rows': rows, 'rss': rss, 'status': r.status_code,
                  'client_cpu_s': client, 'server_cpu_s': server}))
"""


def measure(fmt: str, expected_rows: int) -> dict[str, float]:
    """Stream one export in a fresh process; the rows it wrote, rows/s and that process's peak RSS.
    Raises if the export holds another number of rows than the labels filled."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "browser.settings", "BROWSER_API_ANON_RATE": "100000/min"}
    out = subprocess.run([sys.executable, "-c", MEASURE, fmt, MODEL], capture_output=True, text=True,
                         cwd=settings.BASE_DIR, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["status"] != 200:
        raise RuntimeError(f"export answered {result['status']}")
    if result["rows"] != expected_rows:
        raise RuntimeError(f"the {fmt} export wrote {result['rows']:,} rows; {expected_rows:,} labels were filled")
    per_100k = 100_000 / max(result["rows"], 1)
    server = result["server_cpu_s"]
    return {"rows": result["rows"], "seconds": result["seconds"], "rows_per_s": result["rows"] / result["seconds"],
            "rss_mb": result["rss"], "mb": result["bytes"] / 2**20, "client_cpu_s_per_100k": result["client_cpu_s"] * per_100k,
            "server_cpu_s_per_100k": None if server is None else server * per_100k}


def _cpu(m: dict[str, Any]) -> float | None:
    if m["server_cpu_s_per_100k"] is None:
        return None
    return round(m["client_cpu_s_per_100k"] + m["server_cpu_s_per_100k"], 3)


def run(*, small: int, large: int, keep: bool, log: Any = sys.stderr) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for rows in (small, large):
        fill(rows, log)
        for fmt in ("jsonl", "parquet"):
            m = measure(fmt, rows)
            server = "?" if m["server_cpu_s_per_100k"] is None else f"{m['server_cpu_s_per_100k']:.2f}"
            log.write(f"{m['rows']:,} rows {fmt}: {m['rows_per_s']:,.0f} rows/s, peak RSS {m['rss_mb']:.0f} MB, "
                      f"{m['mb']:.1f} MB out; CPU s per 100k rows: client {m['client_cpu_s_per_100k']:.2f}, "
                      f"server {server}\n")
            result[f"{fmt}_{rows}"] = m
    small_jsonl, small_pq = result[f"jsonl_{small}"], result[f"parquet_{small}"]
    large_jsonl, large_pq = result[f"jsonl_{large}"], result[f"parquet_{large}"]
    if not keep:
        Model.objects.filter(name=MODEL).delete()
        get_user_model().objects.filter(username__startswith="bench-export-").delete()
    return {
        "jsonl_rows_per_s": round(large_jsonl["rows_per_s"]),
        "parquet_rows_per_s": round(large_pq["rows_per_s"]),
        "peak_rss_mb_100k": round(max(small_jsonl["rss_mb"], small_pq["rss_mb"]), 1),
        "peak_rss_mb_1m": round(max(large_jsonl["rss_mb"], large_pq["rss_mb"]), 1),
        "rows_small": small_jsonl["rows"], "rows_large": large_jsonl["rows"],  # counted in the exports
        # client + server CPU seconds per 100k rows at the large size: what load on the machine leaves alone
        "jsonl_cpu_s_per_100k": _cpu(large_jsonl), "parquet_cpu_s_per_100k": _cpu(large_pq),
        "detail": {k: {kk: None if vv is None else round(vv, 3) for kk, vv in v.items()} for k, v in result.items()},
    }
