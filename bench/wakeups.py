"""What a wake-up from sleep costs on this machine: an idle asyncio loop woken ``hz``
times a second, and a plain ``time.sleep`` loop, for ``--seconds`` each; CPU seconds
per second (``time.process_time``).

    python3 -m bench.wakeups [--seconds 10] [--hz 4 10 50 200]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time


async def _asyncio_loop(hz: float, seconds: float) -> float:
    c0, end = time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(1 / hz)
    return (time.process_time() - c0) / seconds


def _sleep_loop(hz: float, seconds: float) -> float:
    c0, end = time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(1 / hz)
    return (time.process_time() - c0) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--hz", type=float, nargs="+", default=[4.0, 10.0, 50.0, 200.0])
    a = ap.parse_args()
    for hz in a.hz:
        loop_rate = asyncio.run(_asyncio_loop(hz, a.seconds))
        sleep_rate = _sleep_loop(hz, a.seconds)
        print(json.dumps({"hz": hz, "asyncio_cpu_per_s": round(loop_rate, 5),
                          "asyncio_us_per_wakeup": round(loop_rate / hz * 1e6),
                          "time_sleep_cpu_per_s": round(sleep_rate, 5),
                          "time_sleep_us_per_wakeup": round(sleep_rate / hz * 1e6)}))


if __name__ == "__main__":
    main()
