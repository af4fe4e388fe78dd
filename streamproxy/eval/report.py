"""Scores, latency percentiles, the table, the JSON report and the baseline gate of ``streamproxy eval``.

The JSON (``--json OUT``) is also what ``--baseline`` reads back: its ``overall.wer`` is compared
with the new run's, and a rise of ``max_rise_points`` (default 1.0) percentage points or more fails.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from rich.console import Console
from rich.table import Table

from . import text
from .runner import Stream

FORMAT = "streamproxy-eval/1"
PERCENTILES = (50, 95, 99)


class BaselineError(ValueError):
    """A ``--baseline`` file that is not a previous ``--json`` report."""


def percentiles(xs: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 (linear interpolation); None for no samples."""
    if not xs:
        return {f"p{q}": None for q in PERCENTILES}
    arr = np.asarray(xs, dtype=float)
    return {f"p{q}": float(np.percentile(arr, q)) for q in PERCENTILES}


def _score_dict(s: text.Score) -> dict[str, Any]:
    return {
        "wer": None if math.isinf(s.wer) else s.wer,
        "ser": s.ser,
        "ref_words": s.ref_words,
        "errors": s.errors,
        "hits": s.hits,
        "substitutions": s.substitutions,
        "deletions": s.deletions,
        "insertions": s.insertions,
        "sentences": s.sentences,
        "sentence_errors": s.sentence_errors,
    }


def build(streams: Sequence[Stream], meta: dict[str, Any]) -> dict[str, Any]:
    """The report: per file and overall scores and latencies (seconds), plus ``meta`` (url, params …)."""
    files = []
    total = text.Score()
    finals: list[float] = []
    firsts: list[float] = []
    for st in streams:
        s = text.score(st.reference, st.hypothesis)
        total = total + s
        finals += st.final_latencies
        if st.first_word_latency is not None:
            firsts.append(st.first_word_latency)
        files.append(
            {
                "id": st.id,
                "audio_s": st.audio_s,
                "reference": st.reference,
                "hypothesis": st.hypothesis,
                "alignment": text.render(text.alignment(st.reference, st.hypothesis)),
                **_score_dict(s),
                "first_word_latency_s": st.first_word_latency,
                "final_latency_s": percentiles(st.final_latencies),
                "final_latencies_s": st.final_latencies,
                "error": st.error,
            }
        )
    overall = {
        "files": len(streams),
        "failed": sum(st.error is not None for st in streams),
        "audio_s": sum(st.audio_s for st in streams),
        **_score_dict(total),
        "first_word_latency_s": percentiles(firsts),
        "final_latency_s": percentiles(finals),
        "finals": len(finals),
    }
    return {"format": FORMAT, **meta, "overall": overall, "files": files}


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"{path}: no such baseline file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaselineError(f"{path}: not a JSON report of streamproxy eval ({e})") from None
    wer = data.get("overall", {}).get("wer") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(wer, int | float):
        raise BaselineError(f"{path}: not a report written by streamproxy eval --json (format {FORMAT})")
    return data


@dataclass(frozen=True)
class Gate:
    baseline_wer: float
    wer: float
    max_rise_points: float

    @property
    def rise_points(self) -> float:
        return (self.wer - self.baseline_wer) * 100

    @property
    def failed(self) -> bool:
        # Rounded so that 0.1 + 0.01 style float noise cannot decide a gate at exactly the limit.
        return round(self.rise_points, 9) >= self.max_rise_points

    def as_dict(self) -> dict[str, Any]:
        return {
            "baseline_wer": self.baseline_wer,
            "rise_points": self.rise_points,
            "max_rise_points": self.max_rise_points,
            "failed": self.failed,
        }


def gate(report: dict[str, Any], baseline: dict[str, Any], max_rise_points: float = 1.0) -> Gate:
    wer = report["overall"]["wer"]
    return Gate(float(baseline["overall"]["wer"]), math.inf if wer is None else float(wer), max_rise_points)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f} %"


def _sec(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _lat(d: dict[str, float | None]) -> str:
    return " / ".join(_sec(d[f"p{q}"]) for q in PERCENTILES)


def print_table(report: dict[str, Any], out: TextIO, *, alignments: bool = False) -> None:
    """Per-file rows and an overall row; latencies in seconds (p50 / p95 / p99)."""
    console = Console(file=out, soft_wrap=False, width=max(100, Console(file=out).width))
    table = Table(title=f"streamproxy eval: {report.get('url', '')}", title_justify="left")
    table.add_column("file")
    table.add_column("words", justify="right")
    table.add_column("WER", justify="right")
    table.add_column("S/D/I", justify="right")
    table.add_column("first word s", justify="right")
    table.add_column("final s p50 / p95 / p99", justify="right")
    table.add_column("stream")
    for f in report["files"]:
        table.add_row(
            f["id"],
            str(f["ref_words"]),
            _pct(f["wer"]),
            f"{f['substitutions']}/{f['deletions']}/{f['insertions']}",
            _sec(f["first_word_latency_s"]),
            _lat(f["final_latency_s"]),
            "failed" if f["error"] else "",
        )
    o = report["overall"]
    table.add_section()
    table.add_row(
        f"all ({o['files']} files, {o['audio_s']:.1f} s)",
        str(o["ref_words"]),
        _pct(o["wer"]),
        f"{o['substitutions']}/{o['deletions']}/{o['insertions']}",
        _lat(o["first_word_latency_s"]),
        _lat(o["final_latency_s"]),
        f"{o['failed']} failed" if o["failed"] else "",
        style="bold",
    )
    console.print(table)
    console.print(f"SER {_pct(o['ser'])} ({o['sentence_errors']}/{o['sentences']} files with an error)")
    if alignments:
        for f in report["files"]:
            if f["errors"]:
                console.print(f"{f['id']}: {f['alignment']}", markup=False, highlight=False)
