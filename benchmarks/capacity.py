"""Capacity benchmark: how many real-time whisper streams one engine process carries.

N concurrent streams (``--levels``, default 2, 4, 6, 8) of espeak-ng speech (the sentences of
``benchmarks/asr.py`` as one track with 1 s pauses, each stream starting at a different sentence
and staggered so utterance ends do not coincide) are sent in real time (100 ms frames) to one
``streamproxy engine --kind whisper`` subprocess. Per N: final latency (arrival of the final
covering a sentence's end - the moment its last voiced sample was sent) p50/p95/max, WER of the
finals, errors (1013 overloads), engine CPU seconds per stream-second (utime+stime from /proc),
and whether finals fall behind (p95 > ``--p95-limit`` s, an error, or a sentence without a final).

Several source trees can be measured in the same run, alternating per level so load on a shared
machine hits them alike (``--tree NAME=PATH[,ENGINE FLAGS]``: the engine subprocess runs from that
tree, e.g. a ``git worktree add /tmp/cap-before <commit>`` of an older version, with those extra
``streamproxy engine`` flags)::

    python benchmarks/capacity.py                                   # this tree, N = 2,4,6,8
    python benchmarks/capacity.py --tree before=/tmp/cap-before --tree after=. --levels 2,4,6,8
    python benchmarks/capacity.py --tree tiny.en=. --tree "base=.,--model=base"   # two models

Writes benchmarks/results/capacity.json; prints a table per tree.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.asr import (  # noqa: E402  (needs the path above)
    PAUSE_S,
    SR,
    Clip,
    Track,
    build_track,
    engine_stats,
    free_port,
    proc_cpu_s,
    speech_set,
    summarise,
)

RESULTS = ROOT / "benchmarks" / "results"


@contextlib.contextmanager
def engine_at(tree: Path, extra: Sequence[str]) -> Iterator[tuple[int, int]]:
    """A whisper engine subprocess importing ``tree``'s streamproxy; yields (port, pid)."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamproxy", "engine", "--kind", "whisper", "--port", str(port)]
    cmd += ["--idle-timeout", "30", *extra]
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
                raise RuntimeError(f"engine from {tree} did not start: {err[-2000:]}")
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _stream(port: int, track: Track, start_delay: float) -> dict[str, Any]:
    from benchmarks.asr import stream_track

    return await stream_track(port, track, start_delay=start_delay)


def run_level(port: int, pid: int, tracks: list[Track], p95_limit: float) -> dict[str, Any]:
    n = len(tracks)

    async def run_all() -> list[dict[str, Any]]:
        return await asyncio.gather(*(_stream(port, t, i * PAUSE_S / max(n, 1)) for i, t in enumerate(tracks)))

    before = engine_stats(port).get("decoder", {})
    cpu0, t0, load0 = proc_cpu_s(pid), time.perf_counter(), os.getloadavg()[0]
    runs = asyncio.run(run_all())
    wall, cpu = time.perf_counter() - t0, proc_cpu_s(pid) - cpu0
    after = engine_stats(port).get("decoder", {})
    audio = sum(len(t.pcm) for t in tracks) / 2 / SR
    row: dict[str, Any] = {"streams": n, **summarise([t.texts for t in tracks], runs), "wall_s": wall}
    expected = sum(len(t.ends) for t in tracks)
    row["missing_finals"] = expected - row["sentences"]
    row["engine_cpu_per_stream_s"] = cpu / audio
    row["decodes"] = after.get("decodes", 0) - before.get("decodes", 0)
    row["decode_s"] = after.get("decode_s", 0) - before.get("decode_s", 0)
    row["batches"] = after.get("batches", 0) - before.get("batches", 0)
    row["loadavg_1m"] = [load0, os.getloadavg()[0]]
    p95 = row["latency_p95_s"]
    row["keeps_up"] = bool(not row["errors"] and not row["missing_finals"] and p95 is not None and p95 <= p95_limit)
    return row


def _post(port: int, pcm: bytes) -> str:
    import urllib.request

    url = f"http://127.0.0.1:{port}/v1/listen?encoding=linear16&sample_rate={SR}"
    with urllib.request.urlopen(urllib.request.Request(url, data=pcm), timeout=120) as r:
        return str(json.loads(r.read())["results"]["channels"][0]["alternatives"][0]["transcript"])


def bench_files(port: int, pid: int, clips: Sequence[Clip]) -> dict[str, Any]:
    """Each clip POSTed alone to the engine's prerecorded route: WER, SER, wall and engine-CPU RTF."""
    from streamproxy.eval import text

    _post(port, clips[0].pcm.tobytes())  # warm-up, not counted
    pairs = []
    wall = cpu = audio = 0.0
    for c in clips:
        c0, t0 = proc_cpu_s(pid), time.perf_counter()
        hyp = _post(port, c.pcm.tobytes())
        wall, cpu = wall + time.perf_counter() - t0, cpu + proc_cpu_s(pid) - c0
        pairs.append((c.text, hyp))
        audio += c.seconds
    score = text.total(pairs)
    return {"wer": score.wer, "ser": score.ser, "rtf_wall": wall / audio, "rtf_cpu": cpu / audio, "audio_s": audio}


def bench_stream(port: int, clips: Sequence[Clip]) -> dict[str, Any]:
    """One real-time stream of the clips as a track: WER, SER (finals assigned to the sentence whose
    pause they end in), final latency."""
    from benchmarks.asr import stream_track
    from streamproxy.eval import text

    track = build_track(clips)
    run = asyncio.run(stream_track(port, track))
    bounds = [(e + PAUSE_S / 2 * SR) / SR for e in track.ends]
    hyps: list[list[str]] = [[] for _ in clips]
    for _, end, transcript in run["finals"]:
        i = next((k for k, b in enumerate(bounds) if end <= b), len(bounds) - 1)
        hyps[i].append(transcript)
    score = text.total((ref, " ".join(h)) for ref, h in zip(track.texts, hyps, strict=True))
    out = summarise([track.texts], [run])
    return out | {"wer": score.wer, "ser": score.ser}


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="2,4,6,8", help="comma-separated stream counts")
    ap.add_argument("--sentences", type=int, default=8, help="sentences per track (1..12)")
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH of a source tree (repeatable)")
    ap.add_argument("--engine-args", default="", help="extra `streamproxy engine` flags, shell-quoted")
    ap.add_argument("--p95-limit", type=float, default=1.5, help="finals fall behind above this p95 (s)")
    ap.add_argument("--files", action="store_true", help="also each sentence as a file: WER and RTF")
    ap.add_argument("--real", action="store_true", help="also the built-in real speech: files and one stream")
    ap.add_argument("--out", default=str(RESULTS / "capacity.json"))
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x]
    extra = shlex.split(args.engine_args)
    trees: list[tuple[str, Path, list[str]]] = []
    for t in args.tree or [f"this={ROOT}"]:
        name, _, rest = t.partition("=")
        path, _, flags = rest.partition(",")
        trees.append((name, Path(path).resolve(), extra + shlex.split(flags)))

    with tempfile.TemporaryDirectory() as d:
        clips = speech_set(args.sentences, Path(d))
    print(f"speech: {len(clips)} espeak-ng sentences, {sum(c.seconds for c in clips):.1f} s per stream", flush=True)
    load_before = os.getloadavg()
    files: dict[str, dict[str, Any]] = {}
    if args.files:
        for name, tree, flags in trees:
            with engine_at(tree, flags) as (port, pid):
                files[name] = f = bench_files(port, pid, clips)
            print(
                f"  {name:>8} files: WER={f['wer']:.1%}  RTF wall={f['rtf_wall']:.3f} CPU={f['rtf_cpu']:.3f}",
                flush=True,
            )
    real: dict[str, dict[str, Any]] = {}
    if args.real:
        from benchmarks.asr import real_clips

        rclips = real_clips()
        for name, tree, flags in trees:
            with engine_at(tree, flags) as (port, pid):
                f = bench_files(port, pid, rclips)
                st = bench_stream(port, rclips)
            real[name] = {"files": f, "stream": st}
            print(
                f"  {name:>8} real speech: files WER={f['wer']:.1%} SER={f['ser']:.1%} RTF wall={f['rtf_wall']:.3f} "
                f"CPU={f['rtf_cpu']:.3f}; stream WER={st['wer']:.1%} SER={st['ser']:.1%} final p50="
                f"{_fmt(st['latency_p50_s'])}s p95={_fmt(st['latency_p95_s'])}s",
                flush=True,
            )
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in trees}
    for n in levels:
        tracks = [build_track(clips, rotate=i % len(clips)) for i in range(n)]
        for name, tree, flags in trees:  # alternate trees per level: shared-machine load hits both alike
            with engine_at(tree, flags) as (port, pid):
                row = run_level(port, pid, tracks, args.p95_limit)
            rows[name].append(row)
            print(
                f"  {name:>8} N={n:>2}  p50={_fmt(row['latency_p50_s'])}s  p95={_fmt(row['latency_p95_s'])}s  "
                f"max={_fmt(row['latency_max_s'])}s  WER={_fmt(row['wer'], '.1%')}  errors={len(row['errors'])}  "
                f"missing={row['missing_finals']}  CPU/stream-s={row['engine_cpu_per_stream_s']:.3f}  "
                f"load={row['loadavg_1m'][1]:.1f}  keeps_up={row['keeps_up']}",
                flush=True,
            )
    load_after = os.getloadavg()
    for name, _, _ in trees:
        print(f"\n{name}: | streams | final p50 / p95 / max | WER | engine CPU per stream-s | errors | keeps up |")
        print("|---|---|---|---|---|---|")
        for r in rows[name]:
            lat = f"{_fmt(r['latency_p50_s'])} / {_fmt(r['latency_p95_s'])} / {_fmt(r['latency_max_s'])} s"
            print(
                f"| {r['streams']} | {lat} | {_fmt(r['wer'], '.1%')} | {r['engine_cpu_per_stream_s']:.3f} | "
                f"{len(r['errors'])} | {r['keeps_up']} |"
            )
    if len(trees) == 2:
        (a, _, _), (b, _, _) = trees
        print(f"\nratios {b}/{a} per N (p95 latency, CPU per stream-s):")
        for ra, rb in zip(rows[a], rows[b], strict=True):
            pa, pb = ra["latency_p95_s"], rb["latency_p95_s"]
            lat = f"{pb / pa:.2f}x" if pa and pb else "-"
            cpu = rb["engine_cpu_per_stream_s"] / ra["engine_cpu_per_stream_s"]
            print(f"  N={ra['streams']}: p95 {lat}, CPU {cpu:.2f}x")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} (machine shared)")
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "speech": {
            "sentences": len(clips),
            "source": "espeak-ng",
            "seconds_per_stream": len(build_track(clips).pcm) / 2 / SR,
        },
        "criterion": f"p95 <= {args.p95_limit} s, no error, no missing final",
        "trees": {name: {"path": str(tree), "engine_args": flags} for name, tree, flags in trees},
        "rows": rows,
        "files": files,
        "real_speech": real,
        "command": "python benchmarks/capacity.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
