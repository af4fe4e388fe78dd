"""Load benchmark: added latency, CPU and memory of streamproxy against a direct connection and nginx.

For each N (concurrent real-time sessions), the same load runs three times in one go, against:

* ``direct``: the marker engine itself (``python -m streamproxy engine --kind marker``);
* ``nginx``: a plain WebSocket relay (Debian's nginx, ``proxy_pass`` + Upgrade headers) to it;
* ``streamproxy``: ``streamproxy serve`` with the engine as its only upstream.

Each session streams 100 ms frames of 16 kHz linear16 marker audio on an absolute real-time
schedule; each ``Results`` message is timed from the send of the frame that holds its last audio
byte (``start + duration``) to its arrival. Added latency = path percentile - direct percentile.

Pinning (2-core machine): the relay under test (streamproxy or nginx, one worker) runs alone on
``--proxy-cpu`` (default 1); the engine and the client processes share ``--client-cpu`` (default
0). The engine and client load is identical for the three paths, so it cancels out in the
differences; the client's own send lag is reported so a saturated client core is visible.

Also measured: proxy CPU seconds per session-second (utime+stime from /proc over the steady
window), RSS per active session at each N, and RSS per *idle* session on a fresh proxy.

    python benchmarks/load.py --quick          # smoke run: N = 1, 50
    python benchmarks/load.py                  # full sweep: 1, 100, 500, 1000 ... until it breaks

Writes benchmarks/results/load.json and load.png; prints a table.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import FRAME_MS, worker_main  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PATHS = ("direct", "nginx", "streamproxy")
QUERY = "encoding=linear16&sample_rate=16000&endpointing=300"

NGINX_CONF = """\
{user}worker_processes 1;
worker_rlimit_nofile 65536;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 32768; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{engine_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within {timeout} s")


def taskset(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []


class Services:
    """The engine, streamproxy and nginx processes of one run, stopped by pid on exit."""

    def __init__(self, tmp: Path, proxy_cpu: int | None, client_cpu: int | None, variant: str = "") -> None:
        self.tmp = tmp
        self.variant = variant
        self.proxy_cpu = proxy_cpu
        self.client_cpu = client_cpu
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # lives as long as the process
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.procs[name] = p
        return p

    def start_engine(self) -> None:
        port = self.ports["engine"] = free_port()
        cmd = [*taskset(self.client_cpu), sys.executable, "-m", "streamproxy", "engine", "--kind", "marker"]
        p = self._spawn("engine", [*cmd, "--port", str(port), "--idle-timeout", "600"])
        wait_port(port, p, "engine")

    def start_proxy(self) -> None:
        port = self.ports["streamproxy"] = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROXY_") and k != "DEEPGRAM_API_KEY"}
        env["STREAMPROXY_UPSTREAM_ENGINE_URL"] = f"ws://127.0.0.1:{self.ports['engine']}"
        env["STREAMPROXY_LIMITS_MAX_SESSIONS"] = "100000"
        if self.variant.startswith("pyrelay-"):  # not streamproxy: the floor of a Python relay (pyrelay.py)
            lib = self.variant.removeprefix("pyrelay-")
            target = f"ws://127.0.0.1:{self.ports['engine']}"
            args = ["-m", "benchmarks.pyrelay", "--port", str(port), "--target", target, "--upstream-lib", lib]
            cmd = [*taskset(self.proxy_cpu), sys.executable, *args]
        else:
            main = ["-m", "benchmarks.variants", self.variant, "--"] if self.variant else ["-m", "streamproxy"]
            cmd = [*taskset(self.proxy_cpu), sys.executable, *main, "serve", "--port", str(port)]
        p = self._spawn("streamproxy", cmd, env)
        wait_port(port, p, "streamproxy")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            assert r.status == 200, "streamproxy not ready"

    def start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise SystemExit("nginx not found: apt-get install -y nginx")
        port = self.ports["nginx"] = free_port()
        user = f"user {psutil.Process().username()};\n" if os.geteuid() == 0 else ""
        conf = NGINX_CONF.format(user=user, tmp=self.tmp, port=port, engine_port=self.ports["engine"])
        (self.tmp / "nginx.conf").write_text(conf)
        cmd = [*taskset(self.proxy_cpu), nginx, "-p", str(self.tmp), "-c", str(self.tmp / "nginx.conf")]
        p = self._spawn("nginx", [*cmd, "-e", str(self.tmp / "nginx-error.log"), "-g", "daemon off;"])
        wait_port(port, p, "nginx")

    def restart_proxy(self) -> None:
        p = self.procs.pop("streamproxy")
        p.send_signal(signal.SIGTERM)
        p.wait(30)
        self.start_proxy()

    def url(self, path: str) -> str:
        port = self.ports["engine" if path == "direct" else path]
        return f"ws://127.0.0.1:{port}/v1/listen?{QUERY}"

    def measured(self, path: str) -> list[psutil.Process]:
        """The relay's processes (nginx: master and worker; direct: the engine, for context)."""
        p = psutil.Process(self.procs["engine" if path == "direct" else path].pid)
        return [p, *p.children(recursive=True)]

    def stop(self) -> None:
        for name in ("nginx", "streamproxy", "engine"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def core_busy(cpu: int | None) -> float:
    """Busy CPU seconds of one core (all processes), to tell how much of it others took."""
    if cpu is None:
        return 0.0
    t = psutil.cpu_times(percpu=True)[cpu]
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def cpu_rss(procs: list[psutil.Process]) -> tuple[float, int]:
    cpu = rss = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss
    return cpu, rss


# ----------------------------------------------------------------------------- phases
class Clients:
    """Client worker processes, pinned, driven over pipes."""

    def __init__(self, n: int, cpu: int | None) -> None:
        ctx = mp.get_context("fork")
        self.conns = []
        self.procs = []
        for _ in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(b, [cpu] if cpu is not None else None), daemon=True)
            p.start()
            self.conns.append(a)
            self.procs.append(p)

    def run(self, spec: dict[str, Any], n: int, on_ready: Any = None, timeout: float = 120.0) -> dict[str, Any]:
        """Split ``n`` sessions over the workers, wait until all are connected, call ``on_ready``."""
        w = min(len(self.conns), max(1, n))
        shares = [n // w + (1 if i < n % w else 0) for i in range(w)]
        active = self.conns[:w]
        for i, (c, k) in enumerate(zip(active, shares, strict=True)):
            c.send(("run", {**spec, "n": k, "seed": spec.get("seed", 0) * 1000 + i}))
        for c in active:
            self._expect(c, "ready", timeout)
        extra = on_ready(active) if on_ready else None
        reports = [self._expect(c, "done", timeout) for c in active]
        return merge(reports) | {"measured": extra}

    @staticmethod
    def _expect(c: Any, what: str, timeout: float) -> Any:
        if not c.poll(timeout):
            raise SystemExit(f"client worker did not answer {what!r} within {timeout} s")
        msg = c.recv()
        assert msg[0] == what, msg
        return msg[1]

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send(("exit",))
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = collections.defaultdict(int)
    lists = ("interim_ms", "final_ms", "send_lag_ms", "connect_s", "errors")
    for r in reports:
        for k, v in r.items():
            if k in lists:
                out[k] = out.get(k, []) + v if k in out else list(v)
            elif isinstance(v, (int, float)):
                out[k] += v
    return dict(out)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def saturated(direct: dict[str, Any]) -> bool:
    """The engine+client core cannot keep up: latencies then measure the engine's queue, not the relay."""
    return bool(direct["engine_client_core_busy"] >= 0.95 or direct["send_lag_p99_ms"] > 5.0 or direct["errors"])


def stream_phase(
    clients: Clients,
    svc: Services,
    path: str,
    n: int,
    duration: float,
    warmup: float,
    seed: int,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    frames = int(duration * 1000 / FRAME_MS)
    spec = {
        "mode": "stream",
        "url": svc.url(path),
        "frames": frames,
        "warmup_frames": int(warmup * 1000 / FRAME_MS),
        "seed": seed,
        "connect_concurrency": 64,
    }
    procs = svc.measured(path)
    _, rss_before = cpu_rss(procs)

    def go(conns: list[Any]) -> dict[str, Any]:
        start_at = time.time() + 0.5
        for c in conns:
            c.send(("go", start_at))
        time.sleep(max(0.0, start_at + warmup - time.time()))
        spy = profile(svc, duration - warmup - 0.5, profile_to) if profile_to else None
        cpu0, _ = cpu_rss(procs)
        busy0 = core_busy(svc.proxy_cpu)
        cbusy0 = core_busy(svc.client_cpu)
        t0 = time.monotonic()
        time.sleep(max(0.0, start_at + duration - 0.2 - time.time()))
        cpu1, rss = cpu_rss(procs)
        busy1 = core_busy(svc.proxy_cpu)
        cbusy1 = core_busy(svc.client_cpu)
        window = time.monotonic() - t0
        if spy is not None:
            spy.wait(30)
        relay_cpu = cpu1 - cpu0 if path != "direct" else 0.0
        return {
            "cpu_s": cpu1 - cpu0,
            "window_s": window,
            "rss": rss,
            "rss_before": rss_before,
            "foreign": max(0.0, busy1 - busy0 - relay_cpu) / window,
            "client_core_busy": (cbusy1 - cbusy0) / window,
        }

    r = clients.run(spec, n, go, timeout=120 + n / 20 + duration)
    m = r.pop("measured")
    lat = r["interim_ms"] + r["final_ms"]
    return {
        "path": path,
        "n": n,
        "results": len(lat),
        "finals": len(r["final_ms"]),
        "p50": pct(lat, 0.5),
        "p95": pct(lat, 0.95),
        "p99": pct(lat, 0.99),
        "max": max(lat) if lat else None,
        "final_p99": pct(r["final_ms"], 0.99),
        "send_lag_p99_ms": pct(r["send_lag_ms"], 0.99) or 0.0,
        "late_frames": len(r["send_lag_ms"]),
        "connect_p99_ms": (pct(r["connect_s"], 0.99) or 0.0) * 1000,
        "close_results": r.get("close_results", 0),
        "errors": r.get("n_errors", 0) + r.get("no_results", 0),
        "error_samples": r.get("errors", [])[:5],
        "unmatched": r.get("unmatched", 0),
        "cpu_util": m["cpu_s"] / m["window_s"],
        "foreign_load_relay_core": m["foreign"],
        "engine_client_core_busy": m["client_core_busy"],
        "cpu_ms_per_session_s": 1000 * m["cpu_s"] / (n * m["window_s"]),
        "rss_mib": m["rss"] / 2**20,
        "rss_before_mib": m["rss_before"] / 2**20,
    }


def idle_phase(clients: Clients, svc: Services, n: int) -> dict[str, Any]:
    """RSS delta per idle session (client socket + session + upstream socket) on the proxy."""
    procs = svc.measured("streamproxy")
    _, rss0 = cpu_rss(procs)

    def hold(conns: list[Any]) -> dict[str, Any]:
        time.sleep(2.0)  # let every upstream connection open and settle
        _, rss1 = cpu_rss(procs)
        for c in conns:
            c.send(("release",))
        return {"rss1": rss1}

    r = clients.run({"mode": "idle", "url": svc.url("streamproxy")}, n, hold, timeout=120 + n / 20)
    rss1 = r["measured"]["rss1"]
    return {
        "n": n,
        "connected": r["connected"],
        "rss_before_mib": rss0 / 2**20,
        "rss_after_mib": rss1 / 2**20,
        "kib_per_session": (rss1 - rss0) / 1024 / max(1, r["connected"]),
        "errors": r.get("n_errors", 0),
    }


def profile(svc: Services, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy")
    if not spy:
        print("py-spy not installed (pip install py-spy): no profile", file=sys.stderr)
        return None
    pid = str(svc.procs["streamproxy"].pid)
    secs = str(max(1, int(seconds)))
    cmd = [spy, "record", "-p", pid, "-d", secs, "-r", "250", "-f", "raw", "-o", str(out), "--native"]
    return subprocess.Popen([*taskset(svc.client_cpu), *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(raw: Path, top: int = 30) -> dict[str, Any]:
    """Self and inclusive shares per function of the event-loop thread's busy samples (py-spy raw stacks).

    Idle samples (the loop waiting in epoll) and other threads (an idle executor pool) are left out.
    """
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    busy = idle = other = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if not any(f.startswith("Runner.run (asyncio/runners.py") for f in frames) or any(
            f.startswith("Thread.run (threading.py") for f in frames
        ):
            other += n
            continue
        if frames[-1].startswith("epoll_pwait") or frames[-1].startswith("epoll_wait"):
            idle += n
            continue
        busy += n
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not busy:
        return {"self": [], "inclusive": [], "busy_samples": 0}
    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "other_thread_samples": other,
        "self": [(f, round(100 * c / busy, 1)) for f, c in self_t.most_common(top)],
        "inclusive": [(f, round(100 * c / busy, 1)) for f, c in incl.most_common(3 * top)],
    }


# ----------------------------------------------------------------------------- report
def row_for(n: int, by_path: dict[str, dict[str, Any]]) -> dict[str, Any]:
    d, x, p = by_path["direct"], by_path["nginx"], by_path["streamproxy"]
    row: dict[str, Any] = {"n": n, "paths": by_path}
    for q in ("p50", "p95", "p99"):
        if None in (d[q], x[q], p[q]):
            continue
        row[f"proxy_added_{q}"] = p[q] - d[q]
        row[f"nginx_added_{q}"] = x[q] - d[q]
        row[f"ratio_proxy_direct_{q}"] = p[q] / d[q] if d[q] else None
        row[f"ratio_proxy_nginx_{q}"] = p[q] / x[q] if x[q] else None
        na = x[q] - d[q]
        row[f"ratio_added_proxy_nginx_{q}"] = (p[q] - d[q]) / na if na > 0.01 else None
    return row


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def print_table(rows: list[dict[str, Any]], idle: dict[str, Any] | None) -> str:
    lines = [
        "Latency per result, ms (p50/p95/p99); added = path - direct at the same N",
        "",
        "| N | direct | nginx | streamproxy | added p50/p99 streamproxy | added p50/p99 nginx "
        "| streamproxy/direct p99 | streamproxy/nginx p99 | results timed per path | errors d/n/p "
        "| client send lag p99 d/n/p ms | baseline |",
        "|" + "|".join("---" for _ in range(12)) + "|",
    ]
    for r in rows:
        d, x, p = (r["paths"][k] for k in PATHS)
        lines.append(
            f"| {r['n']} | {fmt(d['p50'])}/{fmt(d['p95'])}/{fmt(d['p99'])} "
            f"| {fmt(x['p50'])}/{fmt(x['p95'])}/{fmt(x['p99'])} "
            f"| {fmt(p['p50'])}/{fmt(p['p95'])}/{fmt(p['p99'])} "
            f"| {fmt(r.get('proxy_added_p50'))}/{fmt(r.get('proxy_added_p99'))} "
            f"| {fmt(r.get('nginx_added_p50'))}/{fmt(r.get('nginx_added_p99'))} "
            f"| {fmt(r.get('ratio_proxy_direct_p99'))} | {fmt(r.get('ratio_proxy_nginx_p99'))} "
            f"| {p['results']} | {d['errors']}/{x['errors']}/{p['errors']} "
            f"| {'/'.join(fmt(q['send_lag_p99_ms'], 0) for q in (d, x, p))} "
            f"| {'SATURATED (engine/client core)' if r.get('baseline_saturated') else 'valid'} |"
        )
    lines += [
        "",
        "Resources (CPU: /proc utime+stime over the steady window; relay on one core, engine + clients on the other)",
        "",
        "| N | streamproxy CPU ms per session-s | streamproxy core % | nginx CPU ms per session-s "
        "| engine CPU ms per session-s | streamproxy RSS MiB (KiB per session) | engine+client core busy % "
        "| other processes on relay core % | client send lag p99 ms |",
        "|" + "|".join("---" for _ in range(9)) + "|",
    ]
    for r in rows:
        d, x, p = (r["paths"][k] for k in PATHS)
        lines.append(
            f"| {r['n']} | {fmt(p['cpu_ms_per_session_s'], 3)} | {fmt(100 * p['cpu_util'], 0)} "
            f"| {fmt(x['cpu_ms_per_session_s'], 3)} | {fmt(d['cpu_ms_per_session_s'], 3)} "
            f"| {fmt(p['rss_mib'], 0)} ({fmt(r['proxy_rss_kib_per_session'], 0)}) "
            f"| {fmt(100 * p['engine_client_core_busy'], 0)} | {fmt(100 * p['foreign_load_relay_core'], 0)} "
            f"| {fmt(max(q['send_lag_p99_ms'] for q in (d, x, p)), 1)} |"
        )
    text = "\n".join(lines)
    if idle:
        text += (
            f"\n\nIdle sessions: {idle['connected']} held open on a fresh proxy: RSS {idle['rss_before_mib']:.1f} -> "
            f"{idle['rss_after_mib']:.1f} MiB = {idle['kib_per_session']:.1f} KiB per idle session "
            "(client socket + session + upstream socket)."
        )
    print(text, flush=True)
    return text


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    sat = [r["n"] for r in rows if r.get("baseline_saturated")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax in (a, b):
        for i, n in enumerate(sat):
            label = "direct baseline saturated" if i == 0 else None
            ax.axvspan(n * 0.85, n * 1.15, color="tab:red", alpha=0.12, label=label)
    styles = {"direct": "tab:gray", "nginx": "tab:green", "streamproxy": "tab:blue"}
    for path, color in styles.items():
        a.plot(ns, [r["paths"][path]["p99"] for r in rows], "o-", color=color, label=f"{path} p99")
        a.plot(ns, [r["paths"][path]["p50"] for r in rows], "o--", color=color, alpha=0.6, label=f"{path} p50")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("concurrent sessions (N)")
    a.set_ylabel("result latency (ms)")
    a.set_title("Per-result latency by path")
    a.legend(fontsize=8)
    a.grid(True, which="both", alpha=0.3)
    for who, color in (("proxy", "tab:blue"), ("nginx", "tab:green")):
        b.plot(ns, [r.get(f"{who}_added_p99") for r in rows], "o-", color=color, label=f"{who} added p99")
        b.plot(ns, [r.get(f"{who}_added_p50") for r in rows], "o--", color=color, alpha=0.6, label=f"{who} added p50")
    b.axhline(2.0, color="tab:orange", ls=":", label="target p99 2 ms")
    b.axhline(10.0, color="tab:red", ls=":", label="limit p99 10 ms")
    b.set_xscale("log")
    b.set_yscale("symlog", linthresh=1.0)
    b.set_xlabel("concurrent sessions (N)")
    b.set_ylabel("added latency vs direct (ms)")
    b.set_title("Added latency (relay on one core)")
    b.legend(fontsize=8)
    b.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def ab(args: argparse.Namespace, n: int, duration: float, proxy_cpu: int | None, client_cpu: int | None) -> int:
    """Same load, proxy restarted with each variant in turn; CPU per session-second is the robust figure."""
    variants = args.ab.split("/") if "/" in args.ab else args.ab.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="streamproxy-ab-"))
    svc = Services(tmp, proxy_cpu, client_cpu)
    clients: Clients | None = None
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    try:
        svc.start_engine()
        svc.start_proxy()
        clients = Clients(args.workers, client_cpu)
        for rnd in range(args.rounds):
            for v in variants:
                svc.variant = "" if v in ("none", "baseline") else v
                svc.restart_proxy()
                stream_phase(clients, svc, "streamproxy", 10, 2.0, 0.5, seed=99)
                r = stream_phase(clients, svc, "streamproxy", n, duration, args.warmup, seed=rnd)
                runs[v].append(r)
                print(
                    f"{v:>24} round {rnd}: cpu {r['cpu_ms_per_session_s']:.3f} ms/session-s, "
                    f"p50/p99 {fmt(r['p50'])}/{fmt(r['p99'])} ms, "
                    f"others on core {100 * r['foreign_load_relay_core']:.0f}%",
                    flush=True,
                )
    finally:
        if clients is not None:
            clients.close()
        svc.stop()
    base = min(x["cpu_ms_per_session_s"] for x in runs[variants[0]])
    print(
        f"\n| variant (N={n}) | CPU ms per session-s (best of {args.rounds}) | vs {variants[0]} | p50 / p99 ms (best) |"
    )
    print("|---|---|---|---|")
    summary = {}
    for v in variants:
        cpu = min(x["cpu_ms_per_session_s"] for x in runs[v])
        p50 = min(x["p50"] for x in runs[v])
        p99 = min(x["p99"] for x in runs[v])
        summary[v] = {"cpu_ms_per_session_s": cpu, "vs_first": cpu / base, "p50": p50, "p99": p99}
        print(f"| {v} | {cpu:.3f} | {cpu / base:.2f} | {p50:.2f} / {p99:.2f} |")
    doc = {"n": n, "duration_s": duration, "variants": variants, "summary": summary, "runs": runs}
    (args.out / "load-ab.json").write_text(json.dumps(doc, indent=1, default=str))
    return 0


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: N = 1, 50, short phases, 50 idle sessions")
    ap.add_argument("--n", type=int, nargs="*", help="session counts (default 1 100 200 300 500 1000 1500 ... 4000)")
    ap.add_argument("--duration", type=float, help="seconds of audio per session per phase (default 10, quick 4)")
    ap.add_argument(
        "--repeat", type=int, help="runs per N and path, interleaved; the best p99 is kept (default 2, quick 1)"
    )
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds excluded at the start of each phase")
    ap.add_argument("--idle", type=int, help="idle sessions for the memory figure (default 1000, quick 50)")
    ap.add_argument("--workers", type=int, default=4, help="client processes")
    ap.add_argument("--proxy-cpu", type=int, default=1, help="core for the relay under test (-1: no pinning)")
    ap.add_argument("--client-cpu", type=int, default=0, help="core for engine and clients (-1: no pinning)")
    ap.add_argument("--limit-ms", type=float, default=10.0, help="stop once proxy p99 added latency exceeds this")
    ap.add_argument(
        "--always-upto",
        type=int,
        default=1000,
        help="the limit stops the sweep only beyond this N (the targets are stated at 1000)",
    )
    ap.add_argument("--profile-n", type=int, help="record a py-spy profile of the proxy in an extra phase at this N")
    ap.add_argument("--profile", action="store_true", help="profile at the largest N whose baseline is valid")
    ap.add_argument("--variant", default="", help="run the proxy with benchmarks/variants.py tweaks, e.g. fastmask,gc")
    ap.add_argument(
        "--ab",
        help="A/B mode: compare proxy variants ('/'-separated, each a comma list; 'none' = as shipped) "
        "on the streamproxy path only (pyrelay-websockets / pyrelay-aiohttp: benchmarks/pyrelay.py instead), "
        "at the first --n, interleaved --rounds times; writes load-ab.json",
    )
    ap.add_argument("--replot", action="store_true", help="redraw load.png and the table from load.json")
    ap.add_argument("--rounds", type=int, default=2, help="A/B rounds")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = ap.parse_args(argv)

    ns = args.n or ([1, 50] if args.quick else [1, 100, 200, 300, 500, 1000, 1500, 2000, 3000, 4000])
    duration = args.duration or (4.0 if args.quick else 10.0)
    repeat = args.repeat or (1 if args.quick else 2)
    n_idle = args.idle if args.idle is not None else (50 if args.quick else 1000)
    proxy_cpu = None if args.proxy_cpu < 0 else args.proxy_cpu
    client_cpu = None if args.client_cpu < 0 else args.client_cpu
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.out.mkdir(parents=True, exist_ok=True)
    if client_cpu is not None:
        os.sched_setaffinity(0, [client_cpu])

    if args.replot:
        doc = json.loads((args.out / "load.json").read_text())
        doc["table"] = print_table(doc["rows"], doc["summary"]["idle"])
        (args.out / "load.json").write_text(json.dumps(doc, indent=1, default=str))
        plot(doc["rows"], args.out / "load.png")
        return 0
    if args.ab:
        return ab(args, ns[0], duration, proxy_cpu, client_cpu)
    tmp = Path(tempfile.mkdtemp(prefix="streamproxy-bench-"))
    svc = Services(tmp, proxy_cpu, client_cpu, args.variant)
    clients: Clients | None = None
    rows: list[dict[str, Any]] = []
    idle: dict[str, Any] | None = None
    profile_summary: dict[str, Any] | None = None
    stopped = ""
    try:
        svc.start_engine()
        svc.start_proxy()
        svc.start_nginx()
        clients = Clients(args.workers, client_cpu)
        # Warm everything (imports, first-use allocations); the proxy's RSS after this is the baseline.
        for path in PATHS:
            warm = stream_phase(clients, svc, path, 10, 2.0, 0.5, seed=99)
        base_rss = warm["rss_mib"]
        for i, n in enumerate(ns):
            runs: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
            for rep in range(repeat):  # interleaved, so a stall of the shared machine hits one run, not a path
                for path in PATHS:
                    r = stream_phase(clients, svc, path, n, duration, args.warmup, seed=i)
                    runs[path].append(r)
                    line = ", ".join(f"{k}={fmt(v)}" for k, v in r.items() if k != "error_samples")
                    print(f"N={n} {path} run {rep}: {line}", flush=True)
            by_path = {path: min(rs, key=lambda r: (r["errors"], r["p99"] or 1e9)) for path, rs in runs.items()}
            row = row_for(n, by_path)
            row["runs"] = runs
            row["proxy_rss_kib_per_session"] = (by_path["streamproxy"]["rss_mib"] - base_rss) * 1024 / n
            row["baseline_saturated"] = saturated(by_path["direct"])
            rows.append(row)
            p = by_path["streamproxy"]
            added = row.get("proxy_added_p99")
            if p["errors"] > n // 20:
                stopped = f"stopped after N={n}: {p['errors']} streamproxy session errors"
                break
            if n < args.always_upto:
                continue
            if row["baseline_saturated"]:
                stopped = f"stopped after N={n}: the engine+client core is saturated, the direct baseline is invalid"
                break
            if p["errors"] or (added is not None and added > args.limit_ms):
                stopped = f"stopped after N={n}: proxy p99 added {fmt(added)} ms, errors {p['errors']}"
                break
        valid = [r for r in rows if not r["baseline_saturated"]]
        if args.profile and valid and not args.profile_n:
            args.profile_n = valid[-1]["n"]
        if args.profile_n:
            # A separate phase: the sampler's own cost does not touch the table's figures.
            raw = args.out / f"profile-{args.profile_n}.txt"
            prof = stream_phase(clients, svc, "streamproxy", args.profile_n, duration, args.warmup, 7, raw)
            if raw.exists():
                profile_summary = {"n": args.profile_n, "phase": prof, **summarize_profile(raw)}
        if n_idle:
            # Idle memory on a fresh proxy: freed memory from the sweep would otherwise be reused.
            svc.restart_proxy()
            stream_phase(clients, svc, "streamproxy", 10, 2.0, 0.5, seed=98)
            idle = idle_phase(clients, svc, n_idle)
    finally:
        if clients is not None:
            clients.close()
        svc.stop()
    if stopped:
        print(stopped)
    table = print_table(rows, idle)
    valid = [r for r in rows if not r["baseline_saturated"]]
    ok = [
        r["n"]
        for r in valid
        if (r.get("proxy_added_p99") or 1e9) <= args.limit_ms and not r["paths"]["streamproxy"]["errors"]
    ]
    top = valid[-1] if valid else None
    cpu_per = top["paths"]["streamproxy"]["cpu_ms_per_session_s"] if top else None
    summary = {
        "max_valid_n_p99_added_under_limit": max(ok) if ok else None,
        "largest_valid_n": top["n"] if top else None,
        "baseline_saturated_from_n": next((r["n"] for r in rows if r["baseline_saturated"]), None),
        "proxy_cpu_ms_per_session_s_at_largest_valid_n": cpu_per,
        "proxy_sessions_per_core_at_100pct_cpu_extrapolated": round(1000 / cpu_per) if cpu_per else None,
        "limit_ms": args.limit_ms,
        "stopped": stopped,
        "idle": idle,
        "profile": profile_summary,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "profile"}, indent=1))
    doc = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_at_end": os.getloadavg(),
        },
        "proxy_variant": args.variant or "none",
        "pinning": {"relay_cpu": proxy_cpu, "engine_and_clients_cpu": client_cpu, "client_workers": args.workers},
        "method": {
            "frame_ms": FRAME_MS,
            "sample_rate": 16000,
            "duration_s": duration,
            "warmup_s": args.warmup,
            "query": QUERY,
            "latency": "result arrival - send time of the frame holding the result's last byte (start+duration)",
            "added": "path percentile - direct percentile, same N, same run",
            "repeat": f"{repeat} interleaved runs per N and path; the table keeps each path's run with the lowest p99 "
            "(all runs are in rows[].runs): other processes on this shared machine stall it for tens of ms at times",
            "baseline_saturated": "direct phase: engine+client core >= 95% busy or client send lag p99 > 5 ms; "
            "such rows measure the engine's queueing, not the relay",
        },
        "rows": rows,
        "summary": summary,
        "table": table,
    }
    stem = "load-quick" if args.quick else "load"  # a smoke run never overwrites the full sweep
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str))
    if rows:
        plot(rows, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png; process logs in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
