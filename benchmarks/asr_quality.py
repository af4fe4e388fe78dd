"""Hallucination benchmark: WER and inserted words of the streaming whisper recognizer, per gate.

Each variant runs the same audio through :class:`WhisperRecognizer` (100 ms chunks, exactly what
``serve`` feeds it, without the wall-clock wait) and counts, after normalisation:

* ``real``: the package's real read speech (``streamproxy.eval.corpus.real``) as one stream with
  pauses; ``real-clips``: each utterance its own stream, closed right after it;
* ``synthetic``: espeak-ng sentences, two voices, one stream;
* ``short``: short espeak-ng utterances each followed by 2 s of silence, and all in one stream;
* ``noisy``: ``real`` and the short stream under white and brown noise at 15 dB SNR;
* ``nonspeech``: silence, white/brown noise, tones, breaths (shaped noise bursts), clicks: any
  word is an insertion.

    python benchmarks/asr_quality.py                  # every variant, ~10 min on 2 cores
    python benchmarks/asr_quality.py --variants main,no-prompt,vad-words   # README run A
    python benchmarks/asr_quality.py --variants no-prompt,default          # README run B

Writes benchmarks/results/asr_quality.json; prints one table row per variant and set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.asr import synthesize  # noqa: E402
from streamproxy.deepgram.types import Result  # noqa: E402
from streamproxy.engine.dsp import downmix, resample  # noqa: E402
from streamproxy.engine.whisper.gates import Gates  # noqa: E402
from streamproxy.engine.whisper.pool import DecodePool, WhisperOptions, load_pool  # noqa: E402
from streamproxy.engine.whisper.recognizer import WhisperRecognizer  # noqa: E402
from streamproxy.eval import corpus, text  # noqa: E402

SR = 16000
RESULTS = ROOT / "benchmarks" / "results"

SYNTHETIC = [
    ("Please send the report to my office before noon.", "en-us"),
    ("The meeting has been moved to the large room on the second floor.", "en-gb"),
    ("Our train leaves from platform nine in twenty minutes.", "en-us"),
    ("He forgot his umbrella and walked home in the rain.", "en-gb"),
    ("She bought three apples and a loaf of bread at the market.", "en-us"),
    ("Turn left at the next corner and then go straight ahead.", "en-gb"),
]
SHORT = [
    ("Try again.", "en-us"),
    ("Fail better.", "en-gb"),
    ("No matter.", "en-us"),
    ("Ever tried.", "en-gb"),
    ("Yes.", "en-us"),
    ("Stop here.", "en-gb"),
    ("Go on.", "en-us"),
    ("Call me.", "en-gb"),
]


@dataclass
class Item:
    name: str
    audio: np.ndarray  # int16, 16 kHz, the whole stream
    ref: str  # "" for non-speech


# --------------------------------------------------------------------------- audio sets


def silence(s: float) -> np.ndarray:
    return np.zeros(int(s * SR), dtype="<i2")


def to_i16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype("<i2")


def nonspeech_set(seed: int = 7) -> list[Item]:
    """Signals that contain no word: each a few seconds, framed by silence like a real stream."""
    rng = np.random.default_rng(seed)
    n = 4 * SR
    t = np.arange(n) / SR
    white = rng.normal(0, 0.1 * 32768 / 3, n)
    brown = np.cumsum(rng.normal(0, 1, n))
    brown = (brown - np.convolve(brown, np.ones(801) / 801, mode="same")) / 80 * 0.2 * 32768 / 3
    tone = 0.3 * 32768 * np.sin(2 * np.pi * 440 * t)
    chord = 0.15 * 32768 * (np.sin(2 * np.pi * 300 * t) + np.sin(2 * np.pi * 1000 * t))
    # breaths: band-limited noise bursts (0.4-0.7 s) with a raised-cosine envelope, 0.6 s apart
    breaths = np.zeros(n)
    pos = int(0.3 * SR)
    while pos < n - SR:
        d = int(rng.uniform(0.4, 0.7) * SR)
        burst = np.convolve(rng.normal(0, 1, d), np.hanning(9), mode="same")
        breaths[pos : pos + d] = burst * np.hanning(d) * 0.08 * 32768
        pos += d + int(0.6 * SR)
    clicks = np.zeros(n)
    for p in rng.integers(0, n - 40, 12):
        clicks[p : p + 40] = rng.choice([-1, 1]) * 0.6 * 32768 * np.exp(-np.arange(40) / 6)
    lead = silence(0.5)
    items = [Item("silence", silence(6.0), "")]
    for name, x in [
        ("white", white),
        ("brown", brown),
        ("tone440", tone),
        ("chord", chord),
        ("breaths", breaths),
        ("clicks", clicks),
    ]:
        items.append(Item(name, np.concatenate([lead, to_i16(x), silence(2.0)]), ""))
    return items


def speech_track(name: str, clips: Sequence[tuple[np.ndarray, str]], pause_s: float = 1.2) -> Item:
    parts = [silence(0.5)]
    for x, _ in clips:
        parts += [x, silence(pause_s)]
    return Item(name, np.concatenate(parts), " ".join(t for _, t in clips))


def synthetic_set(directory: Path) -> Item:
    return speech_track("synthetic", [(synthesize(t, v, directory), t) for t, v in SYNTHETIC])


def short_set(directory: Path) -> list[Item]:
    """Each short utterance in its own stream, then 2 s of silence: the classic "thank you" spot."""
    return [
        Item(f"short:{t}", np.concatenate([silence(0.4), synthesize(t, v, directory), silence(2.0)]), t)
        for t, v in SHORT
    ]


def noisy(item: Item, kind: str, snr_db: float, seed: int = 3) -> Item:
    """``item`` with white or brown noise under it (and in its pauses) at ``snr_db`` below the speech."""
    rng = np.random.default_rng(seed)
    x = item.audio.astype(np.float64)
    n = rng.normal(0, 1, x.size)
    if kind == "brown":
        n = np.cumsum(n)
        n -= np.convolve(n, np.ones(801) / 801, mode="same")
    speech_rms = np.sqrt(np.mean(x[np.abs(x) > 300] ** 2))
    n *= speech_rms / np.sqrt(np.mean(n**2)) / 10 ** (snr_db / 20)
    return Item(f"{item.name}+{kind}{snr_db:g}dB", to_i16(x + n), item.ref)


def real_set() -> list[tuple[np.ndarray, str]]:
    """The real read speech shipped with the package (``streamproxy.eval.corpus.real``), 16 kHz."""
    clips = []
    for u in corpus.real():
        w = u.read()
        x = downmix(np.frombuffer(w.pcm, dtype="<i2"), w.channels).astype("<i2")
        clips.append((resample(x, w.sample_rate, SR), u.text))
    return clips


# --------------------------------------------------------------------------- running a variant


def stream(pool: DecodePool, audio: np.ndarray, gates: Gates) -> list[Result]:
    rec = WhisperRecognizer(SR, pool=pool, gates=gates)
    pcm = audio.astype("<i2").tobytes()
    out: list[Any] = []
    step = SR * 2 // 10
    try:
        for i in range(0, len(pcm), step):
            out += rec.feed(pcm[i : i + step])
        out += rec.close()
    finally:
        rec.release()
    return [e for e in out if isinstance(e, Result) and e.is_final]


def counts(ref: str, hyp: str) -> dict[str, int]:
    if not ref:
        return {"ref": 0, "sub": 0, "del": 0, "ins": len(text.words(hyp))}
    sc = text.score(ref, hyp)
    return {"ref": sc.ref_words, "sub": sc.substitutions, "del": sc.deletions, "ins": sc.insertions}


def run_variant(pool: DecodePool, gates: Gates, sets: dict[str, list[Item]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for set_name, items in sets.items():
        tot = {"ref": 0, "sub": 0, "del": 0, "ins": 0}
        hyps = []
        t0 = time.perf_counter()
        for it in items:
            hyp = " ".join(r.transcript for r in stream(pool, it.audio, gates))
            c = counts(it.ref, hyp)
            for k in tot:
                tot[k] += c[k]
            hyps.append({"item": it.name, "hyp": hyp, **c})
        errs = tot["sub"] + tot["del"] + tot["ins"]
        out[set_name] = {
            **tot,
            "wer": round(errs / tot["ref"], 4) if tot["ref"] else None,
            "cpu_s": round(time.perf_counter() - t0, 1),
            "hyps": hyps,
        }
    return out


MAIN = Gates(prompt=True, vad_words=False)  # what the recognizer did before these gates
VARIANTS: dict[str, Gates] = {  # each measured against the one before it, on the same audio
    "main": MAIN,
    "vad-words": dataclasses.replace(MAIN, vad_words=True),
    "no-prompt": dataclasses.replace(MAIN, prompt=False),
    "default": Gates(),  # no prompt + VAD word gate
    "default+halluc-0.5": dataclasses.replace(Gates(), hallucination_silence_s=0.5),
    "default+tail-0.1": dataclasses.replace(Gates(), tail_pad_s=0.1),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--sets", default="real,synthetic,short,noisy,nonspeech")
    ap.add_argument("--json", default=str(RESULTS / "asr_quality.json"))
    args = ap.parse_args()
    pool = load_pool(WhisperOptions())
    wanted = args.sets.split(",")
    sets: dict[str, list[Item]] = {}
    with tempfile.TemporaryDirectory() as d:
        if "real" in wanted:
            real = real_set()
            sets["real"] = [speech_track("real", real)]
            # each clip its own stream, closed right after its last sample (no trailing silence)
            sets["real-clips"] = [
                Item(f"clip{i}", np.concatenate([silence(0.3), x]), t) for i, (x, t) in enumerate(real)
            ]
        if "synthetic" in wanted:
            sets["synthetic"] = [synthetic_set(Path(d))]
        if "short" in wanted:
            sets["short"] = short_set(Path(d))
            sets["short-track"] = [speech_track("short-track", [(synthesize(t, v, Path(d)), t) for t, v in SHORT], 1.5)]
        if "noisy" in wanted:
            base = [*sets.get("real", []), *sets.get("short-track", [])]
            sets["noisy"] = [noisy(it, k, 15) for it in base for k in ("white", "brown")]
        if "nonspeech" in wanted:
            sets["nonspeech"] = nonspeech_set()
    results: dict[str, Any] = {}
    print(f"{'variant':16} {'set':10} {'words':>5} {'WER':>6} {'sub':>4} {'del':>4} {'ins':>4}")
    for name in args.variants.split(","):
        res = results[name] = {"gates": dataclasses.asdict(VARIANTS[name]), **run_variant(pool, VARIANTS[name], sets)}
        for s in sets:
            r = res[s]
            wer = f"{100 * r['wer']:.1f}%" if r["wer"] is not None else "-"
            print(f"{name:16} {s:10} {r['ref']:5} {wer:>6} {r['sub']:4} {r['del']:4} {r['ins']:4}", flush=True)
            for h in r["hyps"]:
                if h["ins"] or h["sub"] or h["del"]:
                    print(f"{'':28} {h['item']}: {h['hyp']!r}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
