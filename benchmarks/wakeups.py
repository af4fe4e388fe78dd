"""CPU a process is charged per wake-up from an otherwise idle event loop, at several rates.

On the 2-core VMs streamproxy is measured on, a wake-up costs far more CPU than the work done in
it (the vCPU's return from idle is charged to the task woken), and the less often a process wakes
the more each wake-up costs. That is why the gateway's background work is shaped to wake as
rarely as possible (``gateway/shared.py``), and why CPU per unit of work rises as load falls.

    python3 benchmarks/wakeups.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(period: float, seconds: float) -> tuple[float, float]:
    n = 0

    async def tick() -> None:
        nonlocal n
        while True:
            await asyncio.sleep(period)
            n += 1

    task = asyncio.get_running_loop().create_task(tick())
    await asyncio.sleep(0.5)
    c0, t0, n0 = _cpu(), time.monotonic(), n
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    task.cancel()
    wakeups = (n - n0) / elapsed
    return wakeups, (_cpu() - c0) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(f"{'wake-ups/s':>11}{'CPU ms/s':>10}{'us per wake-up':>16}")
    for period in (1.0, 0.1, 0.01, 0.001):
        rate, cpu = asyncio.run(_measure(period, args.seconds))
        print(f"{rate:>11.0f}{cpu * 1e3:>10.2f}{cpu / max(rate, 1e-9) * 1e6:>16.0f}")


if __name__ == "__main__":
    main()
