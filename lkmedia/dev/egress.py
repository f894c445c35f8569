"""Driving an egress service through livekit-server's public API (the demo, tests, bench)."""
from __future__ import annotations

import asyncio
import time

from livekit import api
from livekit.protocol import egress as lk

S = lk.EgressStatus
TERMINAL = {S.EGRESS_COMPLETE, S.EGRESS_FAILED, S.EGRESS_ABORTED, S.EGRESS_LIMIT_REACHED}


class EgressEnded(RuntimeError):
    """The egress reached a final status other than the ones waited for."""


def service_config_body(stack: object, extra: str = "") -> str:
    """Egress config YAML (Go keys) pointing at a DevStack's livekit-server and Redis."""
    return (f"api_key: {stack.api_key}\napi_secret: {stack.api_secret}\n"  # type: ignore[attr-defined]
            f"ws_url: {stack.url}\nredis:\n  address: {stack.redis_address}\n" + extra)  # type: ignore[attr-defined]


async def wait_egress(lkapi: api.LiveKitAPI, egress_id: str, want: set[int], timeout: float = 20) -> lk.EgressInfo:
    """Poll ListEgress until the egress reaches one of ``want``. A final status not in
    ``want`` raises EgressEnded at once (with its error); TimeoutError names the last one."""
    deadline = time.monotonic() + timeout
    while True:
        res = await lkapi.egress.list_egress(lk.ListEgressRequest(egress_id=egress_id))
        if res.items and res.items[0].status in want:
            return res.items[0]
        if res.items and res.items[0].status in TERMINAL:
            info = res.items[0]
            raise EgressEnded(f"egress {egress_id} ended {S.Name(info.status)}, waited for "
                              f"{sorted(S.Name(w) for w in want)}: {info.error}")
        if time.monotonic() > deadline:
            seen = S.Name(res.items[0].status) if res.items else "nothing"
            raise TimeoutError(f"egress {egress_id} did not reach {sorted(S.Name(w) for w in want)} "
                               f"in {timeout:g} s (last: {seen})")
        await asyncio.sleep(0.1)
