"""Stored transcripts: what the session path pays per final, and how fast the writer empties a backlog.

1. Session path: the cost of ``TranscriptWriter.final`` (build the record, append to the backlog)
   per Live final of 10 words, against ``orjson.dumps`` of the same message (what the core already
   does for every final it numbers for ``proxy_events``), timed in the same run.
2. Background: a backlog of ``--sessions`` sessions x ``--finals`` finals (plus each session's
   begin and end) accepted at once, e.g. after an outage, and the time until it is all written,
   for the embedded SQLite file and for PostgreSQL (127.0.0.1:5432, database ``test``, a private
   schema dropped afterwards; skipped with a note if it does not answer).

    python benchmarks/storage.py [--sessions 200] [--finals 100]

Prints a table and writes ``benchmarks/results/storage.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from streamproxy.storage.postgres import PostgresStore
from streamproxy.storage.sqlite import SqliteStore
from streamproxy.storage.store import Store
from streamproxy.storage.writer import TranscriptWriter

ROOT = Path(__file__).resolve().parent.parent


def live_final(i: int) -> dict[str, Any]:
    t = i * 2.0
    words = [
        {"word": f"w{k}", "start": t + k * 0.2, "end": t + k * 0.2 + 0.15, "confidence": 0.98,
         "punctuated_word": f"W{k}."}
        for k in range(10)
    ]  # fmt: skip
    return {
        "type": "Results", "channel_index": [0, 1], "duration": 2.0, "start": t, "is_final": True,
        "speech_final": True, "from_finalize": False,
        "channel": {"alternatives": [{"transcript": " ".join(w["punctuated_word"] for w in words),
                                      "confidence": 0.98, "words": words}]},
        "metadata": {"request_id": "r", "model_info": {"name": "x", "version": "1", "arch": "y"}, "model_uuid": "u"},
    }  # fmt: skip


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def session_path(n: int) -> dict[str, Any]:
    msgs = [live_final(i) for i in range(n)]
    w = TranscriptWriter(SqliteStore(Path(tempfile.mkdtemp()) / "unused.db"), max_backlog=n + 10)
    w.begin("s", owner="", source="v1", query="model=nova-3")
    enqueue, baseline = [], []
    for m in msgs:  # interleaved, so noise from the shared machine hits both alike
        t0 = time.perf_counter_ns()
        w.final("s", m)
        t1 = time.perf_counter_ns()
        orjson.dumps(m)
        t2 = time.perf_counter_ns()
        enqueue.append((t1 - t0) / 1000)
        baseline.append((t2 - t1) / 1000)
    assert w.backlog == n + 1
    return {
        "finals": n,
        "enqueue_us_p50": round(pct(enqueue, 0.5), 2),
        "enqueue_us_p99": round(pct(enqueue, 0.99), 2),
        "dumps_us_p50": round(pct(baseline, 0.5), 2),
        "dumps_us_p99": round(pct(baseline, 0.99), 2),
        "ratio_p50": round(statistics.median(enqueue) / statistics.median(baseline), 2),
    }


async def drain(store: Store, sessions: int, finals: int) -> dict[str, Any]:
    w = TranscriptWriter(store, max_backlog=sessions * (finals + 2) + 10, flush_interval_s=0.05)
    await w.start()
    try:
        n = 0
        for _ in range(sessions):
            sid = str(uuid.uuid4())
            w.begin(sid, owner="", source="v1", query="model=nova-3")
            for i in range(finals):
                w.final(sid, live_final(i))
            w.end(sid, owner="", source="v1", query="model=nova-3", outcome="ok", summary={"audio_s": finals * 2.0})
            n += finals + 2
        t0 = time.perf_counter()
        assert await w.flushed(600), "backlog not written"
        took = time.perf_counter() - t0
    finally:
        await w.close()
    return {"records": n, "seconds": round(took, 2), "records_per_s": round(n / took)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"session_path": session_path(args.path_finals)}
    out["sqlite"] = await drain(SqliteStore(Path(tempfile.mkdtemp()) / "bench.db"), args.sessions, args.finals)
    try:
        import asyncpg

        con = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="test", timeout=3)
    except Exception as e:  # no PostgreSQL here: say so, measure the rest
        out["postgresql"] = {"skipped": f"{type(e).__name__}: {e}"}
        return out
    schema = "sp_bench_" + uuid.uuid4().hex[:8]
    await con.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = f"postgresql://postgres@127.0.0.1:5432/test?search_path={schema}"
        out["postgresql"] = await drain(PostgresStore(url), args.sessions, args.finals)
    finally:
        await con.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await con.close()
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--finals", type=int, default=100, help="finals per session")
    p.add_argument("--path-finals", type=int, default=20000, help="finals timed on the session path")
    res = asyncio.run(main(p.parse_args()))
    sp = res["session_path"]
    print(f"session path, per final: enqueue p50 {sp['enqueue_us_p50']} us p99 {sp['enqueue_us_p99']} us;"
          f" orjson.dumps of it p50 {sp['dumps_us_p50']} us (ratio {sp['ratio_p50']})")  # fmt: skip
    for name in ("sqlite", "postgresql"):
        r = res[name]
        if "skipped" in r:
            print(f"{name}: skipped ({r['skipped']})")
        else:
            print(f"{name}: {r['records']} records written in {r['seconds']} s = {r['records_per_s']}/s")
    out = ROOT / "benchmarks" / "results" / "storage.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
