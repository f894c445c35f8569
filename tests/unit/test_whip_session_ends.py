"""A WHIP session's end, reported twice or late, must not end the session that followed it
on the same ingress (a CI failure: a proxied session's DELETE and livekit-server's
"connection closed" notify both ended it; the second end's INACTIVE, reported while the next
client's session was live, ended that one's state and left its resource behind, so the
client after it was refused with 409 "already being published to")."""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from livekit.protocol import ingress as lk

from lkmedia.ingress import state as states
from lkmedia.ingress.whip import WhipSessions, _Resource
from lkmedia.service.ingress_config import IngressConfig
from lkmedia.service.ingress_whip import WhipFrontDoor

S = lk.IngressState.Status


class _IO:
    def __init__(self) -> None:
        self.stored: list[tuple[str, str, int]] = []

    async def update_ingress_state(self, ingress_id: str, state: lk.IngressState) -> None:
        self.stored.append((ingress_id, state.resource_id, state.status))


def _front_door(io: _IO) -> WhipFrontDoor:
    conf = IngressConfig(api_key="key", api_secret="secret", ws_url="ws://127.0.0.1:1")
    return WhipFrontDoor(conf, bus=None, io=io, admit=lambda _s: None, available=lambda: True,  # type: ignore[arg-type]
                         started=lambda _i: None, ended=lambda _i: None)


async def test_a_late_end_of_the_previous_session_leaves_the_current_one_live() -> None:
    io = _IO()
    fd = _front_door(io)
    info = lk.IngressInfo(ingress_id="IN_a", stream_key="k", room_name="r", participant_identity="p")
    fd.live["IN_a"] = states.set_status(states.buffering("WH_new"), S.ENDPOINT_PUBLISHING)
    fd._on_state(info, lk.IngressState(status=S.ENDPOINT_INACTIVE, resource_id="WH_old"))
    await asyncio.sleep(0.05)
    assert "IN_a" in fd.live and fd.live["IN_a"].status == S.ENDPOINT_PUBLISHING
    assert io.stored == []
    fd._on_state(info, lk.IngressState(status=S.ENDPOINT_INACTIVE, resource_id="WH_new"))
    await asyncio.sleep(0.05)
    assert "IN_a" not in fd.live and io.stored == [("IN_a", "WH_new", S.ENDPOINT_INACTIVE)]


async def test_ending_a_proxied_session_twice_deletes_and_reports_once() -> None:
    deletes: list[str] = []

    async def delete(request: web.Request) -> web.Response:
        deletes.append(request.path)
        await asyncio.sleep(0.2)  # livekit-server takes its time; the second end comes meanwhile
        return web.Response(status=200)

    app = web.Application()
    app.router.add_delete("/whip/v1/{rid}", delete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    reported: list[tuple[str, int]] = []

    async def lookup(_key: str) -> Any:
        raise AssertionError("not called")

    sessions = WhipSessions(f"ws://127.0.0.1:{port}", "key", "a-secret-of-at-least-32-bytes-long!", lookup,
                            on_state=lambda _i, st: reported.append((st.resource_id, st.status)))
    res = _Resource(lk.IngressInfo(ingress_id="IN_a", stream_key="k", room_name="r", participant_identity="p"), "WH_1", sfu_location="/whip/v1/PA_x")
    sessions.resources["WH_1"] = res
    try:
        await asyncio.gather(sessions.end(res), sessions.end(res))
        assert deletes == ["/whip/v1/PA_x"]
        assert reported == [("WH_1", S.ENDPOINT_INACTIVE)]
        assert res.ended.is_set() and "WH_1" not in sessions.resources
        await sessions.end(res)  # once ended, ending again does nothing
        assert deletes == ["/whip/v1/PA_x"] and len(reported) == 1
    finally:
        await sessions.close()
        await runner.cleanup()
