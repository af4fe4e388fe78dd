"""Per engine kind, through ``streamproxy serve`` as a user runs it, with ``streamproxy eval``:
WER and SER on real read speech (the built-in ``real`` set), on real telephone speech (the
built-in ``phone`` set, 8 kHz) and on synthetic speech (espeak-ng, two voices) separately, final
and first-word latency p50/p95, and the file real-time factor (wall and CPU seconds per audio
second, one decode thread, from ``benchmarks/asr.py``'s file benchmark).

    python benchmarks/eval_kinds.py                      # pocketsphinx and whisper, ~5 min
    python benchmarks/eval_kinds.py --kinds whisper --concurrency 2
    python benchmarks/eval_kinds.py --kinds whisper:base --no-files   # kind:model (engine.model)

Each kind: a ``streamproxy serve --engine KIND`` subprocess (private data dir, defaults otherwise),
then ``streamproxy eval real``, ``streamproxy eval phone`` (``--phone-concurrency`` files at once:
the set is 411 s long) and ``streamproxy eval SYNTHETIC/manifest.jsonl`` subprocesses with
``--json``. Writes benchmarks/results/eval-KIND-{real,phone,synthetic}.json and eval_kinds.json;
prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.asr import Clip, bench_files, real_clips  # noqa: E402
from streamproxy.eval import corpus  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(kind: str, data_dir: Path, model: str = "") -> Iterator[int]:
    """``streamproxy serve --engine KIND`` (``engine.model`` MODEL) on a free port until it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMPROXY_", "DEEPGRAM_"))}
    env |= {"STREAMPROXY_SERVER_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if model:
        env["STREAMPROXY_ENGINE_MODEL"] = model
    cmd = [sys.executable, "-m", "streamproxy", "serve", "--engine", kind, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve --engine {kind} did not start")
            time.sleep(0.2)
        time.sleep(2.0)  # the engine child answers a moment after the gateway listens
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_eval(source: str, port: int, out: Path, concurrency: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "streamproxy", "eval", source, "--url", f"ws://127.0.0.1:{port}"]
    cmd += ["--json", str(out), "--concurrency", str(concurrency), "--alignments"]
    done = subprocess.run(cmd, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    print(done.stdout, flush=True)
    if done.returncode not in (0, 1) or not out.exists():
        raise RuntimeError(f"eval failed ({done.returncode}): {done.stderr}")
    return dict(json.loads(out.read_text()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="pocketsphinx,whisper")
    ap.add_argument("--concurrency", type=int, default=1, help="files streamed at once (default 1)")
    ap.add_argument("--phone-concurrency", type=int, default=6, help="phone-set files streamed at once (default 6)")
    ap.add_argument("--no-files", action="store_true", help="skip the file RTF measurement")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        synth_dir = Path(tmp) / "synthetic"
        synth = corpus.synthetic(synth_dir)
        synth_clips = [Clip(u.text, u.id, np.frombuffer(u.read().pcm, dtype="<i2").copy()) for u in synth]
        for label in kinds:
            kind, _, model = label.partition(":")
            print(f"== {label}", flush=True)
            name = label.replace(":", "-")
            with serve(kind, Path(tmp) / f"data-{name}", model) as port:
                real = run_eval("real", port, RESULTS / f"eval-{name}-real.json", args.concurrency)
                phone = run_eval("phone", port, RESULTS / f"eval-{name}-phone.json", args.phone_concurrency)
                syn = run_eval(
                    str(synth_dir / "manifest.jsonl"), port, RESULTS / f"eval-{name}-synthetic.json", args.concurrency
                )
            row: dict[str, Any] = {"real": real["overall"], "phone": phone["overall"], "synthetic": syn["overall"]}
            if not args.no_files and not model:
                f_real, f_syn = bench_files(kind, real_clips()), bench_files(kind, synth_clips)
                audio = f_real["audio_s"] + f_syn["audio_s"]
                row["file_rtf_wall"] = (
                    f_real["rtf_wall"] * f_real["audio_s"] + f_syn["rtf_wall"] * f_syn["audio_s"]
                ) / audio
                row["file_rtf_cpu"] = (
                    f_real["rtf_cpu"] * f_real["audio_s"] + f_syn["rtf_cpu"] * f_syn["audio_s"]
                ) / audio
                row["file_wer_real"], row["file_wer_synthetic"] = f_real["wer"], f_syn["wer"]
            rows[label] = row
    load_after = os.getloadavg()

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.1%}"

    def lat(o: dict[str, Any]) -> str:
        d = o["final_latency_s"]
        return "—" if d["p50"] is None else f"{d['p50']:.2f} / {d['p95']:.2f} s"

    print(
        "| kind | WER real | WER phone | WER synthetic | SER real / phone / synthetic | file RTF wall / CPU "
        "| final latency p50 / p95 (real; phone) |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind, r in rows.items():
        rtf = f"{r['file_rtf_wall']:.3f} / {r['file_rtf_cpu']:.3f}" if "file_rtf_wall" in r else "—"
        print(
            f"| {kind} | {pct(r['real']['wer'])} ({r['real']['ref_words']} words) | {pct(r['phone']['wer'])} "
            f"({r['phone']['ref_words']} words) | {pct(r['synthetic']['wer'])} ({r['synthetic']['ref_words']} words) | "
            f"{pct(r['real']['ser'])} / {pct(r['phone']['ser'])} / {pct(r['synthetic']['ser'])} | {rtf} | "
            f"{lat(r['real'])}; {lat(r['phone'])} |"
        )
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} (machine shared)")
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "concurrency": args.concurrency,
        "kinds": rows,
        "command": "python benchmarks/eval_kinds.py"
        + ("" if args.concurrency == 1 else f" --concurrency {args.concurrency}"),
    }
    (RESULTS / "eval_kinds.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'eval_kinds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
