"""Interleaved A/B of ``benchmarks/jobs.py``: the same harness on an older checkout (``--before``)
and on this one, alternating (A B, then B A, ...) so that what other processes do to a shared
machine lands on both sides; medians per side, every round kept.

    git worktree add /tmp/jobs-before 827275b
    python3 benchmarks/jobs_ab.py --before /tmp/jobs-before --rounds 3 -- --jobs 300 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"


def _one(code: Path, extra: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    try:
        cmd = [sys.executable, str(HERE / "jobs.py"), "--code", str(code), "--out", str(out), *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(code)})
        doc: dict[str, Any] = json.loads(out.read_text())
        return doc
    finally:
        out.unlink(missing_ok=True)


def _summary(doc: dict[str, Any]) -> dict[str, float]:
    r = doc["rows"]
    return {
        "sync_jobs_per_s": r["sync"]["jobs_per_s"],
        "queued_jobs_per_s": r["queued"]["jobs_per_s"],
        "queued_vs_sync": doc["ratio_queued_vs_sync"],
        "queued_p50_ms": r["queued"]["latency"]["p50_ms"],
        "queued_cpu_us_per_job": r["queued"]["cpu_us_per_job"]["total"],
        "sync_cpu_us_per_job": r["sync"]["cpu_us_per_job"]["total"],
        "short_file_p50_ms": r["latency"]["latency"]["p50_ms"],
        "short_file_client_p50_ms": r["latency"]["client_latency"]["p50_ms"],
        "machine_busy_cores": r["queued"]["machine_busy_cores"],
        "queued_gets_per_job": r["queued"]["gets_per_job"],
        **{f"queued_cpu_us_{k}": v for k, v in _by_process(r["queued"]["cpu_us_per_job"]).items()},
    }


def _by_process(cpu: dict[str, int]) -> dict[str, int]:
    """CPU per queued job by process (workers summed): where a change moved the cost."""
    out = {"client_gateway": cpu["client+gateway"], "redis": cpu["redis"], "engine": cpu["engine"]}
    out["workers"] = sum(v for k, v in cpu.items() if k.startswith("worker"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="checkout of the baseline revision")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "jobs-ab.json"))
    p.add_argument("extra", nargs="*", help="arguments for jobs.py (after --)")
    args = p.parse_args()
    sides = {"before": Path(args.before).resolve(), "after": REPO}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for rnd in range(args.rounds):
        order = ["before", "after"] if rnd % 2 == 0 else ["after", "before"]
        for side in order:
            s = _summary(_one(sides[side], args.extra))
            runs[side].append(s)
            print(
                f"round {rnd + 1} {side:<6} queued {s['queued_jobs_per_s']:6.0f}/s "
                f"({s['queued_vs_sync']:.2f}x sync {s['sync_jobs_per_s']:.0f}/s), burst p50 "
                f"{s['queued_p50_ms']:5.0f} ms, CPU {s['queued_cpu_us_per_job']} us/job, short file p50 "
                f"{s['short_file_p50_ms']:.1f} ms (client {s['short_file_client_p50_ms']:.1f} ms), "
                f"machine {s['machine_busy_cores']:.2f} cores busy",
                flush=True,
            )
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()}
    print(f"\n{'median of ' + str(args.rounds) + ' rounds':<26} {'before':>10} {'after':>10} {'after/before':>13}")
    for k in med["after"]:
        b, a = med["before"][k], med["after"][k]
        print(f"{k:<26} {b:10.1f} {a:10.1f} {a / b if b else float('nan'):13.2f}")
    doc = {"benchmark": "jobs-ab", "before": str(sides["before"]), "args": args.extra, "runs": runs, "median": med}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
