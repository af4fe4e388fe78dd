"""ASR benchmark: accuracy, speed, streaming latency and capacity of the embedded engine kinds.

Per kind (``pocketsphinx`` is the baseline, ``whisper`` the default; ``marker`` is not ASR and is
left out), on a small speech set this script builds with espeak-ng (two voices):

* files: WER (synthetic, and on the built-in real speech of ``streamproxy.eval.corpus.real``) and
  real-time factor (wall and CPU seconds per audio second, one decode thread);
* streaming: the sentences as one track with pauses, sent in real time (100 ms frames) to a
  ``streamproxy engine`` subprocess; WER of the finals, and final latency = arrival of the final
  covering a sentence's end - the moment its last voiced sample was sent;
* capacity (whisper): N concurrent real-time streams against one engine process (default
  settings: 2 concurrent decodes, 1 thread each) until finals fall behind (p95 latency > 3 s, or an
  overload error).

WER is computed after the one normaliser, ``streamproxy.eval.text`` (case, punctuation, numbers:
tiny.en writes "730" for "seven thirty" and "1-2-3" for "one two three": both sides become digit
strings).

    python benchmarks/asr.py --quick        # ~2 min: 6 sentences, N = 1, 2, 4, 6, 8
    python benchmarks/asr.py                # 12 sentences, N up to 12

Writes benchmarks/results/asr.json; prints tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamproxy.eval import corpus  # noqa: E402
from streamproxy.eval import text as text_eval  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SR = 16000
FRAME_MS = 100
PAUSE_S = 1.0  # silence between sentences in the streamed track

SENTENCES = list(corpus.SENTENCES)
VOICES = corpus.VOICES


def wer(ref_text: str, hyp_text: str) -> tuple[int, int]:
    """(errors, reference words) after the one normaliser (streamproxy.eval.text)."""
    s = text_eval.score(ref_text, hyp_text)
    return s.errors, s.ref_words


# --------------------------------------------------------------------------- speech set


@dataclass
class Clip:
    text: str
    voice: str
    pcm: np.ndarray  # int16, 16 kHz mono

    @property
    def seconds(self) -> float:
        return self.pcm.size / SR

    def voiced_end(self) -> int:
        """Index one past the last sample above -40 dBFS (espeak pads with silence)."""
        idx = np.nonzero(np.abs(self.pcm.astype(np.int32)) > 328)[0]
        return int(idx[-1]) + 1 if idx.size else 0


def synthesize(text: str, voice: str, directory: Path, speed: int = 150) -> np.ndarray:
    """espeak-ng -> sox 16 kHz mono int16 (streamproxy.eval.corpus.synthesize)."""
    wav = corpus.read_wav(corpus.synthesize(text, directory / "out.wav", voice, speed))
    return np.frombuffer(wav.pcm, dtype="<i2").copy()


def real_clips() -> list[Clip]:
    """The built-in real-speech set (streamproxy.eval.corpus.real), as clips."""
    out = []
    for u in corpus.real():
        wav = u.read()
        out.append(Clip(u.text, u.id, np.frombuffer(wav.pcm, dtype="<i2").copy()))
    return out


def speech_set(n: int, directory: Path) -> list[Clip]:
    return [
        Clip(text, VOICES[i % len(VOICES)], synthesize(text, VOICES[i % len(VOICES)], directory))
        for i, text in enumerate(SENTENCES[:n])
    ]


@dataclass
class Track:
    pcm: bytes
    texts: list[str]
    ends: list[int]  # sample index of each sentence's last voiced sample


def build_track(clips: Sequence[Clip], rotate: int = 0) -> Track:
    order = list(clips[rotate:]) + list(clips[:rotate])
    parts = [np.zeros(int(0.5 * SR), dtype="<i2")]
    pos = parts[0].size
    ends = []
    for c in order:
        parts.append(c.pcm)
        ends.append(pos + c.voiced_end())
        pos += c.pcm.size
        parts.append(np.zeros(int(PAUSE_S * SR), dtype="<i2"))
        pos += parts[-1].size
    return Track(np.concatenate(parts).tobytes(), [c.text for c in order], ends)


# --------------------------------------------------------------------------- files


def bench_files(kind: str, clips: Sequence[Clip]) -> dict[str, Any]:
    from streamproxy.engine.kinds import transcribe
    from streamproxy.engine.options import LiveOptions

    pool = None
    if kind == "whisper":
        from streamproxy.engine.whisper.pool import WhisperOptions, load_pool

        pool = load_pool(WhisperOptions(max_concurrent_decodes=1, cpu_threads=1))
        transcribe(kind, LiveOptions(), clips[0].pcm.tobytes(), pool)  # warm up
    errors = words = 0
    wall = cpu = audio = 0.0
    rows = []
    for c in clips:
        t0, c0 = time.perf_counter(), time.process_time()
        finals, _ = transcribe(kind, LiveOptions(), c.pcm.tobytes(), pool)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        hyp = " ".join(r.transcript for r in finals)
        e, n = wer(c.text, hyp)
        errors, words, wall, cpu, audio = errors + e, words + n, wall + dt, cpu + dc, audio + c.seconds
        rows.append({"ref": c.text, "hyp": hyp, "errors": e, "words": n, "voice": c.voice})
    return {
        "wer": errors / words,
        "rtf_wall": wall / audio,
        "rtf_cpu": cpu / audio,
        "audio_s": audio,
        "words": words,
        "clips": rows,
    }


# --------------------------------------------------------------------------- streaming


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_ENGINE_PIDS: dict[int, int] = {}  # port -> pid of the engine subprocess


@contextlib.contextmanager
def engine_process(kind: str, *extra: str) -> Iterator[int]:
    port = free_port()
    cmd = [sys.executable, "-m", "streamproxy", "engine", "--kind", kind, "--port", str(port), "--idle-timeout", "30"]
    proc = subprocess.Popen([*cmd, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"engine {kind} did not start")
            time.sleep(0.1)
        _ENGINE_PIDS[port] = proc.pid
        yield port
    finally:
        _ENGINE_PIDS.pop(port, None)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def stream_track(port: int, track: Track, *, start_delay: float = 0.0, query: str = "") -> dict[str, Any]:
    """One real-time stream; returns finals' text, per-sentence latencies and any error."""
    import aiohttp

    await asyncio.sleep(start_delay)
    url = f"ws://127.0.0.1:{port}/v1/listen?encoding=linear16&sample_rate={SR}&endpointing=300{query}"
    frame = SR * 2 * FRAME_MS // 1000
    finals: list[tuple[float, float, str]] = []  # (arrival, end_s, transcript)
    interims = 0
    errors: list[str] = []
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url)
        except aiohttp.WSServerHandshakeError as exc:
            return {"finals": [], "latencies": [], "errors": [f"handshake {exc.status}"], "t0": 0.0}
        loop = asyncio.get_running_loop()

        async def reader() -> None:
            nonlocal interims
            async for m in ws:
                if m.type != aiohttp.WSMsgType.TEXT:
                    continue
                msg = json.loads(m.data)
                if msg.get("type") == "Results" and not msg.get("is_final"):
                    interims += 1
                if msg.get("type") == "Results" and msg.get("is_final"):
                    end = msg["start"] + msg["duration"]
                    finals.append((loop.time(), end, msg["channel"]["alternatives"][0]["transcript"]))
                elif msg.get("type") == "Error":
                    errors.append(f"{msg.get('err_code')}: {msg.get('description')}")

        task = asyncio.create_task(reader())
        t0 = loop.time()
        for k, i in enumerate(range(0, len(track.pcm), frame)):
            delay = t0 + k * FRAME_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if ws.closed:
                break
            await ws.send_bytes(track.pcm[i : i + frame])
        if not ws.closed:
            await ws.send_str('{"type":"CloseStream"}')
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(task, 60)
        if ws.close_code not in (1000, None):
            errors.append(f"close {ws.close_code}")
        await ws.close()
    latencies = []
    for end in track.ends:
        end_s = end / SR
        arrival = next((a for a, e, _ in finals if e >= end_s - 1e-6), None)
        if arrival is not None:
            latencies.append(arrival - (t0 + end_s))
    return {"finals": finals, "latencies": latencies, "errors": errors, "t0": t0, "interims": interims}


def pct(xs: Sequence[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def summarise(track_texts: list[list[str]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    errors = words = 0
    lats: list[float] = []
    errs: list[str] = []
    for texts, r in zip(track_texts, runs, strict=True):
        e, n = wer(" ".join(texts), " ".join(t for _, _, t in r["finals"]))
        errors, words = errors + e, words + n
        lats += r["latencies"]
        errs += r["errors"]
    return {
        "wer": errors / words if words else None,
        "latency_p50_s": pct(lats, 50),
        "latency_p95_s": pct(lats, 95),
        "latency_max_s": max(lats) if lats else None,
        "sentences": len(lats),
        "errors": errs,
    }


def engine_stats(port: int) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return dict(json.loads(r.read()))


def bench_streaming(kind: str, clips: Sequence[Clip], *extra: str, query: str = "") -> dict[str, Any]:
    """One real-time stream of the whole track; ``extra`` are engine flags (e.g. --interim-every 1)."""
    track = build_track(clips)
    with engine_process(kind, *extra) as port:
        t0 = time.perf_counter()
        run = asyncio.run(stream_track(port, track, query=query))
        wall = time.perf_counter() - t0
        out = summarise([track.texts], [run])
        out["engine"] = engine_stats(port)
    out["audio_s"] = len(track.pcm) / 2 / SR
    out["interims"] = run["interims"]
    dec = out["engine"].get("decoder") or {}
    out["decode_cpu_per_audio_s"] = dec.get("decode_s", 0.0) / max(wall, 1e-9) if dec else None
    return out


def bench_capacity(clips: Sequence[Clip], levels: Sequence[int]) -> list[dict[str, Any]]:
    """N concurrent real-time whisper streams on one engine process, until finals fall behind."""
    rows = []
    with engine_process("whisper") as port:
        for n in levels:
            tracks = [build_track(clips, rotate=i % len(clips)) for i in range(n)]

            async def run_all(tracks: list[Track] = tracks, n: int = n) -> list[dict[str, Any]]:
                # Staggered starts so utterance ends do not all coincide.
                return await asyncio.gather(
                    *(stream_track(port, t, start_delay=i * PAUSE_S / max(n, 1)) for i, t in enumerate(tracks))
                )

            before = engine_stats(port).get("decoder", {})
            cpu0 = proc_cpu_s(_ENGINE_PIDS[port])
            c0 = time.perf_counter()
            runs = asyncio.run(run_all())
            wall = time.perf_counter() - c0
            cpu = proc_cpu_s(_ENGINE_PIDS[port]) - cpu0
            after = engine_stats(port).get("decoder", {})
            row = {"streams": n, **summarise([t.texts for t in tracks], runs), "wall_s": wall}
            # Engine CPU per stream-second of audio: what bounds capacity on an idle machine.
            audio = sum(len(t.pcm) for t in tracks) / 2 / SR
            row["engine_cpu_s"] = cpu
            row["engine_cpu_per_stream_s"] = cpu / audio
            row["cpu_bound_streams"] = (os.cpu_count() or 1) / (cpu / audio) if cpu else None
            row["decode_s"] = after.get("decode_s", 0) - before.get("decode_s", 0)
            row["decodes"] = after.get("decodes", 0) - before.get("decodes", 0)
            row["decode_wait_s"] = after.get("waited_s", 0) - before.get("waited_s", 0)
            row["keeps_up"] = bool(
                not row["errors"] and row["latency_p95_s"] is not None and row["latency_p95_s"] <= 3.0
            )
            rows.append(row)
            print(
                f"  N={n:>2}  p50={row['latency_p50_s']:.2f}s  p95={row['latency_p95_s']:.2f}s  "
                f"WER={row['wer']:.1%}  errors={len(row['errors'])}  engine CPU/stream-s="
                f"{row['engine_cpu_per_stream_s']:.3f}  load={os.getloadavg()[0]:.1f}  keeps_up={row['keeps_up']}",
                flush=True,
            )
            if not row["keeps_up"]:
                break
    return rows


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 sentences, N = 1, 2, 4, 6, 8")
    ap.add_argument("--levels", default="", help="comma-separated stream counts for the capacity sweep")
    ap.add_argument("--out", default=str(RESULTS / "asr.json"))
    args = ap.parse_args(argv)
    n = 6 if args.quick else len(SENTENCES)
    levels = [int(x) for x in args.levels.split(",") if x] or (
        [1, 2, 4, 6, 8] if args.quick else [1, 2, 4, 6, 8, 10, 12]
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as d:
        clips = speech_set(n, Path(d))
    audio_s = sum(c.seconds for c in clips)
    print(f"speech set: {len(clips)} espeak-ng sentences, {audio_s:.1f} s, voices {', '.join(VOICES)}", flush=True)

    kinds = ("pocketsphinx", "whisper")
    load_before = os.getloadavg()
    files = {}
    files_real = {}
    streaming = {}
    real = real_clips()
    for kind in kinds:
        print(f"files: {kind} ...", flush=True)
        files[kind] = bench_files(kind, clips)
        files_real[kind] = bench_files(kind, real)
    for kind in kinds:
        print(f"streaming: {kind} ...", flush=True)
        streaming[kind] = bench_streaming(kind, clips)
    print("streaming: whisper with interim results every 1 s ...", flush=True)
    streaming["whisper+interims"] = bench_streaming(
        "whisper", clips, "--interim-every", "1.0", query="&interim_results=true"
    )
    print("capacity: whisper, concurrent real-time streams on one engine process ...", flush=True)
    capacity = bench_capacity(clips, levels)
    load_after = os.getloadavg()

    base_f, base_s = files["pocketsphinx"], streaming["pocketsphinx"]
    print()
    print(
        "| kind | file WER synthetic / real | file RTF (wall / CPU) | stream WER | final latency p50 / p95 "
        "| vs pocketsphinx |"
    )
    print("|---|---|---|---|---|---|")
    for kind in kinds:
        f, st = files[kind], streaming[kind]
        ratios = (
            f"WER {f['wer'] / base_f['wer']:.2f}x, RTF {f['rtf_wall'] / base_f['rtf_wall']:.2f}x, "
            f"latency {st['latency_p50_s'] / base_s['latency_p50_s']:.2f}x"
        )
        print(
            f"| {kind} | {f['wer']:.1%} / {files_real[kind]['wer']:.1%} | {f['rtf_wall']:.3f} / {f['rtf_cpu']:.3f} | "
            f"{st['wer']:.1%} | "
            f"{st['latency_p50_s']:.2f} / {st['latency_p95_s']:.2f} s | {ratios} |"
        )
    wi, w0 = streaming["whisper+interims"], streaming["whisper"]
    print(
        f"\nwhisper interims every 1 s: {wi['interims']} interims, decode CPU {wi['decode_cpu_per_audio_s']:.2f} "
        f"s per audio s (finals only: {w0['decode_cpu_per_audio_s']:.2f}), final latency p50 "
        f"{wi['latency_p50_s']:.2f} s, WER {wi['wer']:.1%}"
    )
    print()
    print("| whisper streams (1 engine) | final latency p50 / p95 / max | WER | engine CPU per stream-s | errors |")
    print("|---|---|---|---|---|")
    for r in capacity:
        lat = f"{r['latency_p50_s']:.2f} / {r['latency_p95_s']:.2f} / {r['latency_max_s']:.2f} s"
        cpu = r["engine_cpu_per_stream_s"]
        print(f"| {r['streams']} | {lat} | {r['wer']:.1%} | {cpu:.3f} | {len(r['errors'])} |")
    ok = [r["streams"] for r in capacity if r["keeps_up"]]
    cpu_per = min(r["engine_cpu_per_stream_s"] for r in capacity)
    bound = (os.cpu_count() or 1) / cpu_per
    print(f"\ncapacity: {max(ok) if ok else 0} real-time streams keep finals within 3 s (p95) on this machine;")
    print(f"CPU bound on {os.cpu_count()} idle cores at {cpu_per:.3f} engine CPU-s per stream-s: ~{bound:.0f} streams")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} (machine shared)")

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "speech_set": {"sentences": len(clips), "audio_s": audio_s, "voices": VOICES, "source": "espeak-ng"},
        "baseline": "pocketsphinx",
        "files": {
            k: {kk: vv for kk, vv in v.items() if kk != "clips"} | {"clips": v["clips"]} for k, v in files.items()
        },
        "files_real_speech": files_real,
        "streaming": streaming,
        "capacity": {
            "rows": capacity,
            "streams_keeping_up": max(ok) if ok else 0,
            "engine_cpu_per_stream_s": cpu_per,
            "cpu_bound_streams_idle_machine": bound,
            "criterion": "p95 <= 3 s, no errors",
        },
        "command": "python benchmarks/asr.py" + (" --quick" if args.quick else ""),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
