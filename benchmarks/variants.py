"""Run ``streamproxy`` with experimental tweaks applied in-process, to measure what a change would give
before anyone makes it in the product (``load.py --variant NAME``).

    python -m benchmarks.variants fastmask,gc -- serve --port 8080

Variants:

* ``fastmask``: the upstream client (websockets) draws each frame's 4-byte mask key from
  ``secrets.token_bytes`` - one ``getrandom`` syscall per frame sent. Masking only guards browser
  clients against proxy cache poisoning; a server-side client can use a fast PRNG (aiohttp's
  client does: ``random.getrandbits(32)``).
* ``gc``: fewer cyclic-GC passes: ``gc.freeze()`` after imports and a gen-0 threshold of 50 000.
* ``nohotmetrics``: the per-frame/per-message overhead histogram and buffered gauge become no-ops
  (what metrics cost on the hot path).
* ``nostorage``: ``[storage] url = "off"`` (what storing every session's finals costs).
"""

from __future__ import annotations

import gc
import random
import sys
import types
from collections.abc import Callable


def fastmask() -> None:
    import websockets.frames

    rnd = random.Random()
    fast = types.SimpleNamespace(token_bytes=lambda n: rnd.getrandbits(8 * n).to_bytes(n, "little"))
    setattr(websockets.frames, "secrets", fast)  # noqa: B010 - this module's name only, not the stdlib's


def gc_tune() -> None:
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def nohotmetrics() -> None:
    from streamproxy import metrics

    init = metrics.Metrics.__init__

    class _Null:
        def observe(self, *a: object) -> None: ...
        def inc(self, *a: object) -> None: ...
        def dec(self, *a: object) -> None: ...
        def labels(self, *a: object) -> _Null:
            return self

    def patched(self: metrics.Metrics, *a: object, **kw: object) -> None:
        init(self, *a, **kw)  # type: ignore[arg-type]
        self.overhead = _Null()  # type: ignore[assignment]
        self.audio_buffered = _Null()  # type: ignore[assignment]

    metrics.Metrics.__init__ = patched  # type: ignore[method-assign]


def nostorage() -> None:
    import os

    os.environ["STREAMPROXY_STORAGE_URL"] = "off"  # what storing every final costs the gateway


VARIANTS: dict[str, Callable[[], None]] = {
    "fastmask": fastmask,
    "gc": gc_tune,
    "nohotmetrics": nohotmetrics,
    "nostorage": nostorage,
}


def main(argv: list[str]) -> int:
    i = argv.index("--")
    for name in filter(None, ",".join(argv[:i]).split(",")):
        if name not in ("none", "baseline"):
            VARIANTS[name]()
    from streamproxy.cli import main as cli

    return cli(argv[i + 1 :])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
