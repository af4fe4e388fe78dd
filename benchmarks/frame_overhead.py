"""Time a frame spends inside the proxy: client -> streamproxy -> sink, against client -> sink directly.

The sink is a bare WebSocket server that timestamps each frame's arrival; the client and the sink
share one process (one clock), the gateway runs as its own process (optionally pinned to a core).
Per frame: one-way time through the gateway minus the one-way time of the direct path, measured in
the same run, so the difference is what streamproxy adds (its processing plus one loopback hop).

    python benchmarks/frame_overhead.py [--frames 3000] [--streams 20] [--cpu 1]
    python benchmarks/frame_overhead.py --ab /path/to/other/checkout --rounds 3   # A/B, interleaved

With ``--ab`` the gateway of another checkout (``git worktree add /tmp/before <commit>``) and this
one run alternately, ``--rounds`` times each, in one invocation, so machine noise hits both alike.

    python benchmarks/frame_overhead.py --shared-ab redis://127.0.0.1:6379 --rounds 3
    python benchmarks/frame_overhead.py --shared-ab redis://127.0.0.1:6379 --together [--ab CHECKOUT] --cpu 1

runs this checkout with and without shared session state (``session.shared_state``, resumable
sessions kept in that Redis) alternately, with ``proxy_events`` (resumable sessions) and a sink that
answers a final every ``--finals-every`` frames (default 10: one final per second), so the cost of
a checkpoint per final, the session's record and the heartbeat are all in the figure. With
``--together`` the two gateways run at the same time, pinned to the same core, each fed
``--streams`` streams: what else the machine does lands on both alike, and the ratio is taken per
round (the steadier figure on a shared machine); ``--ab`` adds a third gateway, another checkout's
with shared state, to the same rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve

ROOT = Path(__file__).resolve().parent.parent
FRAME = 3200  # 100 ms of 16 kHz linear16
WARMUP_FRAMES = 5  # per stream, not timed


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _final(index: int, every: int) -> str:
    """A Deepgram final covering frames ``[index - every, index)`` (100 ms each), one word."""
    start, duration = round((index - every) * 0.1, 3), round(every * 0.1, 3)
    word = {"word": "w", "start": start, "end": round(start + duration, 3), "confidence": 1.0}
    alt = {"transcript": "w", "confidence": 1.0, "words": [word]}
    return json.dumps(
        {
            "type": "Results", "channel_index": [0, 1], "duration": duration, "start": start, "is_final": True,
            "speech_final": True, "channel": {"alternatives": [alt]},
        }
    )  # fmt: skip


def _sink(arrivals: dict[tuple[int, int], float], every: int) -> Callable[[ServerConnection], Awaitable[None]]:
    """The upstream stand-in: timestamps each frame's arrival, answers a final every ``every`` frames."""

    async def sink(ws: ServerConnection) -> None:
        frames = 0
        try:
            async for msg in ws:
                if isinstance(msg, bytes) and len(msg) >= 8:
                    stream, seq = struct.unpack_from("<II", msg)
                    arrivals[(stream, seq)] = time.perf_counter()
                    frames += 1
                    if every and frames % every == 0:
                        await ws.send(_final(frames, every))
        except websockets.ConnectionClosed:
            pass  # the gateway aborts its upstream sockets at shutdown

    return sink


async def run(args: argparse.Namespace, tree: Path = ROOT, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    arrivals: dict[tuple[int, int], float] = {}
    sink = _sink(arrivals, args.finals_every)

    async with serve(sink, "127.0.0.1", 0, compression=None, max_size=None) as server:
        sink_port = server.sockets[0].getsockname()[1]
        gw_port = int(os.environ.get("BENCH_GW_PORT", "0")) or _free_port()
        proc = _spawn_gateway(args, tree, gw_port, sink_port, extra_env or {})
        try:
            await _wait_port(gw_port)
            results = {}
            pe = "&proxy_events=true" if args.proxy_events else ""
            for name, url in [
                ("direct", f"ws://127.0.0.1:{sink_port}/v1/listen"),
                ("streamproxy", f"ws://127.0.0.1:{gw_port}/v1/listen?encoding=linear16&sample_rate=16000{pe}"),
                ("direct_again", f"ws://127.0.0.1:{sink_port}/v1/listen"),
            ]:
                arrivals.clear()
                cpu0 = _cpu_seconds(proc.pid)
                t0 = time.perf_counter()
                sent = await _drive(url, args.streams, args.frames)
                gw_cpu = _cpu_seconds(proc.pid) - cpu0
                session_s = args.streams * (time.perf_counter() - t0)
                await asyncio.sleep(0.5)
                # Steady state: a stream's first frames also wait for its upstream connection to open.
                steady = {k: t for k, t in sent.items() if k[1] >= WARMUP_FRAMES}
                lat = [(arrivals[k] - t) * 1e3 for k, t in steady.items() if k in arrivals]
                lost = len(steady) - len(lat)
                results[name] = {
                    "frames": len(lat),
                    "lost": lost,
                    "p50_ms": pct(lat, 0.5),
                    "p95_ms": pct(lat, 0.95),
                    "p99_ms": pct(lat, 0.99),
                    "mean_ms": statistics.fmean(lat),
                }
                if name == "streamproxy":
                    results[name]["gateway_cpu_ms_per_session_s"] = 1e3 * gw_cpu / session_s
        finally:
            proc.terminate()
            proc.wait(20)
    base = {q: (results["direct"][q] + results["direct_again"][q]) / 2 for q in ("p50_ms", "p95_ms", "p99_ms")}
    added = {q: results["streamproxy"][q] - base[q] for q in base}
    return {"args": vars(args), "paths": results, "baseline_ms": base, "added_ms": added}


def _spawn_gateway(
    args: argparse.Namespace, tree: Path, port: int, sink_port: int, extra_env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``streamproxy serve`` of checkout ``tree`` on ``port``, its upstream the sink (pinned with ``--cpu``)."""
    env = {
        **os.environ,
        "STREAMPROXY_UPSTREAM_SINK_URL": f"ws://127.0.0.1:{sink_port}",
        "STREAMPROXY_SESSION_STALL_TIMEOUT_S": "3600",
        "STREAMPROXY_LOG_LEVEL": "warning",
        "PYTHONPATH": str(tree),
        **extra_env,
    }
    cmd = [sys.executable, "-m", "streamproxy", "serve", "--port", str(port)]
    if args.cpu is not None:
        cmd = ["taskset", "-c", str(args.cpu), *cmd]
    return subprocess.Popen(cmd, env=env, cwd=tree)  # started before measuring


async def _drive(url: str, streams: int, frames: int, first: int = 0) -> dict[tuple[int, int], float]:
    sent: dict[tuple[int, int], float] = {}
    period = 0.1

    async def one(i: int) -> None:
        async with websockets.connect(url, compression=None, max_size=None) as ws:
            payload = bytearray(FRAME)
            t0 = time.perf_counter() + (i % 10) * 0.01  # spread streams over the frame period
            for seq in range(frames // streams):
                await asyncio.sleep(max(0.0, t0 + seq * period - time.perf_counter()))
                struct.pack_into("<II", payload, 0, i, seq)
                sent[(i, seq)] = time.perf_counter()
                await ws.send(bytes(payload))
            await asyncio.sleep(0.3)

    await asyncio.gather(*(one(i) for i in range(first, first + streams)))
    return sent


async def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("gateway did not start")


def _free_port() -> int:
    from streamproxy.engine.supervisor import free_port

    return free_port()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=3000, help="frames per path (all streams)")
    p.add_argument("--streams", type=int, default=20, help="concurrent real-time streams")
    p.add_argument("--cpu", type=int, default=None, help="pin the gateway to this core (taskset)")
    p.add_argument("--ab", type=Path, default=None, help="another checkout to compare against (A/B)")
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds (each runs both gateways)")
    p.add_argument("--finals-every", type=int, default=0, help="the sink answers a final every N frames (0: never)")
    p.add_argument("--proxy-events", action="store_true", help="clients ask for proxy_events (resumable sessions)")
    p.add_argument("--shared-ab", default=None, metavar="REDIS_URL", help="A/B: shared session state off vs on")
    p.add_argument("--together", action="store_true", help="with --shared-ab: both gateways at once, same core")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.shared_ab is not None:
        shared_ab(args)
        return
    if args.ab is not None:
        ab(args)
        return
    res = asyncio.run(run(args))
    print(f"{'path':<14}{'frames':>8}{'lost':>6}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for name, r in res["paths"].items():
        print(f"{name:<14}{r['frames']:>8}{r['lost']:>6}{r['p50_ms']:>10.3f}{r['p95_ms']:>10.3f}{r['p99_ms']:>10.3f}")
    print(f"gateway CPU: {res['paths']['streamproxy']['gateway_cpu_ms_per_session_s']:.3f} ms per session-second")
    a = res["added_ms"]
    print(f"added by streamproxy: p50 {a['p50_ms']:.3f} ms, p95 {a['p95_ms']:.3f} ms, p99 {a['p99_ms']:.3f} ms")
    out = ROOT / "benchmarks" / "results" / "frame_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


def ab(args: argparse.Namespace) -> None:
    """Before (``--ab`` checkout) and after (this one), interleaved; medians over the rounds."""
    rows: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for label, tree in (("before", args.ab.resolve()), ("after", ROOT)):
            res = asyncio.run(run(args, tree))
            row = {**{f"added_{k}": v for k, v in res["added_ms"].items()}}
            row["cpu_ms_per_session_s"] = res["paths"]["streamproxy"]["gateway_cpu_ms_per_session_s"]
            row["lost"] = res["paths"]["streamproxy"]["lost"]
            rows[label].append(row)
            print(label, {k: round(v, 4) for k, v in row.items()}, flush=True)
    med = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in rows.items()}
    print(f"{'':<8}{'added p50':>11}{'added p99':>11}{'CPU ms/sess-s':>15}")
    for label, m in med.items():
        print(f"{label:<8}{m['added_p50_ms']:>11.3f}{m['added_p99_ms']:>11.3f}{m['cpu_ms_per_session_s']:>15.3f}")
    ratio = med["after"]["cpu_ms_per_session_s"] / med["before"]["cpu_ms_per_session_s"]
    print(f"after/before gateway CPU per session-second: {ratio:.3f}")
    out = ROOT / "benchmarks" / "results" / "frame_overhead_ab.json"
    out.write_text(json.dumps({"args": {**vars(args), "ab": str(args.ab)}, "rounds": rows, "median": med}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


def _shared_env(redis_url: str, shared: bool) -> dict[str, str]:
    import uuid

    return {
        "STREAMPROXY_QUEUE_REDIS_URL": redis_url,
        "STREAMPROXY_QUEUE_PREFIX": "{bench" + uuid.uuid4().hex[:8] + "}",
        "STREAMPROXY_QUEUE_SERVE_WORKER": "false",
        "STREAMPROXY_SESSION_SHARED_STATE": "true" if shared else "false",
        # Clients drop without CloseStream (the sink would not answer it): their sessions wait
        # for a resume; short windows let the gateway stop promptly after each run.
        "STREAMPROXY_SESSION_RESUME_GRACE_S": "2",
        "STREAMPROXY_SESSION_CLOSE_TIMEOUT_S": "1",
        "STREAMPROXY_SESSION_DRAIN_TIMEOUT_S": "1",
    }


def shared_ab(args: argparse.Namespace) -> None:
    """This checkout without and with shared session state; medians over the rounds. With
    ``--together`` both gateways run at once, pinned to the same core and fed by the same clients,
    so whatever else the machine does in a round lands on both alike (the ratio is per round)."""
    args.proxy_events = True
    args.finals_every = args.finals_every or 10
    if args.together:
        shared_together(args)
        return
    rows: dict[str, list[dict[str, float]]] = {"local": [], "shared": []}
    for _ in range(args.rounds):
        for label in ("local", "shared"):
            env = _shared_env(args.shared_ab, label == "shared")
            res = asyncio.run(run(args, ROOT, env))
            row = {**{f"added_{k}": v for k, v in res["added_ms"].items()}}
            row["cpu_ms_per_session_s"] = res["paths"]["streamproxy"]["gateway_cpu_ms_per_session_s"]
            row["lost"] = res["paths"]["streamproxy"]["lost"]
            rows[label].append(row)
            print(label, {k: round(v, 4) for k, v in row.items()}, flush=True)
    med = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in rows.items()}
    print(f"{'':<8}{'added p50':>11}{'added p99':>11}{'CPU ms/sess-s':>15}")
    for label, m in med.items():
        print(f"{label:<8}{m['added_p50_ms']:>11.3f}{m['added_p99_ms']:>11.3f}{m['cpu_ms_per_session_s']:>15.3f}")
    ratio = med["shared"]["cpu_ms_per_session_s"] / med["local"]["cpu_ms_per_session_s"]
    print(f"shared/local gateway CPU per session-second: {ratio:.3f}")
    out = ROOT / "benchmarks" / "results" / f"shared_state_ab_finals{args.finals_every}.json"
    out.write_text(json.dumps({"args": vars(args), "rounds": rows, "median": med, "ratio": ratio}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


def shared_together(args: argparse.Namespace) -> None:
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        gateways = {
            "local": (ROOT, _shared_env(args.shared_ab, False)),
            "shared": (ROOT, _shared_env(args.shared_ab, True)),
        }
        if args.ab is not None:  # the same shared state in another checkout, beside these two
            gateways["shared_before"] = (args.ab.resolve(), _shared_env(args.shared_ab, True))
        res = asyncio.run(run_together(args, gateways))
        row = {f"{k}_cpu_ms_per_session_s": v["gateway_cpu_ms_per_session_s"] for k, v in res.items()}
        row.update({f"{k}_lost": v["lost"] for k, v in res.items()})
        row.update({f"{k}_p50_ms": v["p50_ms"] for k, v in res.items()})
        row["ratio"] = row["shared_cpu_ms_per_session_s"] / row["local_cpu_ms_per_session_s"]
        if "shared_before" in res:
            row["ratio_before"] = row["shared_before_cpu_ms_per_session_s"] / row["local_cpu_ms_per_session_s"]
        rounds.append(row)
        print({k: round(v, 4) for k, v in row.items()}, flush=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    per_round = ", ".join(f"{r['ratio']:.3f}" for r in rounds)
    if "ratio_before" in med:
        before = ", ".join(f"{r['ratio_before']:.3f}" for r in rounds)
        print(f"the --ab checkout's shared state, same runs: shared/local {med['ratio_before']:.3f} ({before})")
    print(
        f"medians of {args.rounds} rounds: local {med['local_cpu_ms_per_session_s']:.3f}, shared "
        f"{med['shared_cpu_ms_per_session_s']:.3f} ms CPU per session-second; shared/local {med['ratio']:.3f} "
        f"(per-round ratios {per_round})"
    )
    out = ROOT / "benchmarks" / "results" / f"shared_state_together_finals{args.finals_every}.json"
    out.write_text(json.dumps({"args": vars(args), "rounds": rounds, "median": med}, indent=2, default=str))
    print(f"wrote {out.relative_to(ROOT)}")


async def run_together(
    args: argparse.Namespace, gateways: dict[str, tuple[Path, dict[str, str]]]
) -> dict[str, dict[str, Any]]:
    """Several gateways (label: checkout, environment) at once, one sink, ``--streams`` real-time
    streams each, all driven concurrently; CPU per session-second and the one-way frame time for each."""
    arrivals: dict[tuple[int, int], float] = {}
    sink = _sink(arrivals, args.finals_every)

    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    async with serve(sink, "127.0.0.1", 0, compression=None, max_size=None) as server:
        sink_port = server.sockets[0].getsockname()[1]
        try:
            for label, (tree, extra) in gateways.items():
                port = _free_port()
                procs[label] = (_spawn_gateway(args, tree, port, sink_port, extra), port)
            for _, port in procs.values():
                await _wait_port(port)
            q = "/v1/listen?encoding=linear16&sample_rate=16000&proxy_events=true"
            cpu0 = {label: _cpu_seconds(p.pid) for label, (p, _) in procs.items()}
            t0 = time.perf_counter()
            # Stream ids are disjoint per gateway: one arrivals table.
            sents = await asyncio.gather(*(
                _drive(f"ws://127.0.0.1:{port}{q}", args.streams, args.frames, first=k * args.streams)
                for k, (_, port) in enumerate(procs.values())
            ))  # fmt: skip
            elapsed = time.perf_counter() - t0
            cpu = {label: _cpu_seconds(p.pid) - cpu0[label] for label, (p, _) in procs.items()}
            await asyncio.sleep(0.5)
        finally:
            for p, _ in procs.values():
                p.terminate()
            for p, _ in procs.values():
                p.wait(20)
    out: dict[str, dict[str, Any]] = {}
    for label, sent in zip(procs, sents, strict=True):
        steady = {k: t for k, t in sent.items() if k[1] >= WARMUP_FRAMES}
        lat = [(arrivals[k] - t) * 1e3 for k, t in steady.items() if k in arrivals]
        out[label] = {
            "gateway_cpu_ms_per_session_s": 1e3 * cpu[label] / (args.streams * elapsed),
            "lost": len(steady) - len(lat),
            "p50_ms": pct(lat, 0.5),
            "p99_ms": pct(lat, 0.99),
        }
    return out


if __name__ == "__main__":
    main()
