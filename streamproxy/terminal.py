"""Terminal output of the CLI clients: a ``rich`` progress bar for ``transcribe`` and live captions
for ``stream`` on a terminal; plain, line-by-line text when the output is a pipe or a file, so
logs and scripts never see cursor movements or colour codes."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

__all__ = ["Captions", "ProgressDisplay"]


def _is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressDisplay:
    """``show(fraction, label)`` as often as you like; ``fraction`` None = unknown (spinner).

    On a terminal: one rich progress bar, redrawn in place (width follows the terminal). Otherwise:
    one line per change of label or whole percent, e.g. ``[  1.2s]  42.0% active (attempt 1/3)``.
    """

    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = _is_tty(self.out) if tty is None else tty
        self.started = time.monotonic()
        self._last: tuple[str, int | None] | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def show(self, fraction: float | None, label: str) -> None:
        f = None if fraction is None else min(max(fraction, 0.0), 1.0)
        if self.tty:
            self._draw(f, label)
            return
        key = (label, None if f is None else int(f * 1000))
        if key == self._last:
            return
        self._last = key
        pct = "      " if f is None else f"{f * 100:5.1f}%"
        self.out.write(f"[{time.monotonic() - self.started:5.1f}s] {pct} {label}\n")
        self.out.flush()

    def _draw(self, f: float | None, label: str) -> None:
        if self._progress is None:
            console = Console(file=self.out, force_terminal=True)
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(label, total=None)
        assert self._task is not None
        if f is None:
            self._progress.update(self._task, description=label, total=None)
        else:
            self._progress.update(self._task, description=label, total=1.0, completed=f)

    def done(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class Captions:
    """Finals scroll as ``[  12.34] text`` lines; on a terminal the current interim is shown, dim,
    on a live line below them and replaced in place. Use as a (sync or async) context manager."""

    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = _is_tty(self.out) if tty is None else tty
        self._live: Live | None = None

    def __enter__(self) -> Captions:
        if self.tty:
            console = Console(file=self.out, force_terminal=True)
            self._live = Live(Text(""), console=console, transient=True, auto_refresh=False)
            self._live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    async def __aenter__(self) -> Captions:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def interim(self, text: str) -> None:
        if self._live is not None and text:
            self._live.update(Text(text, style="dim"), refresh=True)

    def final(self, start: float, text: str) -> None:
        line = f"[{start:7.2f}] {text}"
        if self._live is not None:
            # Clear the interim first: Live re-draws its last *refreshed* renderable after a print.
            self._live.update(Text(""), refresh=True)
            if text:
                self._live.console.print(Text(line), soft_wrap=True)
        elif text:
            self.out.write(line + "\n")
            self.out.flush()
