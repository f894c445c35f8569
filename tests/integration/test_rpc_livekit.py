"""An unmodified livekit-server v1.13.5 drives our psrpc egress endpoints over Redis.

API (livekit-api, Twirp) → livekit-server → Redis → EgressInternal.StartEgress (our
affinity claim) → IOInfo.CreateEgress / UpdateEgress back to livekit-server → ListEgress
through the API; StopEgress / UpdateStream reach our EgressHandler on the egress-ID topic.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from livekit import api
from livekit.protocol import egress as lk_egress

from lkmedia.dev.stack import DEV_KEY, DEV_SECRET, DevStack
from lkmedia.rpc import RedisBus, RequestContext, RpcError
from lkmedia.rpc.egress import EgressHandlerServer, EgressInternalServer, IOInfoClient
from lkmedia.rpc.messages import StartEgressRequest, unpack_start_egress

pytestmark = pytest.mark.integration
KEY, SECRET = DEV_KEY, DEV_SECRET
S = lk_egress.EgressStatus


@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    """redis-server + livekit-server v1.13.5 (installed by scripts/install_livekit.sh)."""
    with DevStack(config={"logging": {"level": "debug"}}) as st:
        yield st


class FakeEgress:
    """Just enough of an egress service to answer livekit-server the way Go egress does."""

    def __init__(self, bus: RedisBus, io: IOInfoClient, affinity: float) -> None:
        self.bus, self.io, self.affinity = bus, io, affinity
        self.handlers: dict[str, EgressHandlerServer] = {}
        self.infos: dict[str, lk_egress.EgressInfo] = {}
        self.seen: list[tuple[str, RequestContext, float]] = []  # (method, ctx, monotonic)
        self.claims: list[float] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server = EgressInternalServer(bus, start_egress=self.start_egress, affinity=self.get_affinity,
                                           list_active=lambda: list(self.handlers))

    def get_affinity(self, _req: StartEgressRequest) -> float:
        self.claims.append(time.monotonic())
        return self.affinity

    async def start_egress(self, req: StartEgressRequest, ctx: RequestContext) -> lk_egress.EgressInfo:
        self.seen.append(("StartEgress", ctx, time.monotonic()))
        kind, track = unpack_start_egress(req)
        if kind != "track" or not isinstance(track, lk_egress.TrackEgressRequest):
            raise RpcError("invalid_argument", f"unexpected request {kind}")
        if track.track_id == "TR_invalid":
            raise RpcError("invalid_argument", "track TR_invalid does not exist")
        now = time.time_ns()
        info = lk_egress.EgressInfo(egress_id=req.egress_id, room_id=req.room_id, room_name=track.room_name,
                                    status=S.EGRESS_STARTING, started_at=now, updated_at=now, track=track,
                                    source_type=lk_egress.EgressSourceType.EGRESS_SOURCE_TYPE_SDK)
        await self.io.create_egress(info)
        handler = EgressHandlerServer(self.bus, req.egress_id, stop_egress=self.stop_egress,
                                      update_stream=self.update_stream)
        await handler.start()
        self.handlers[req.egress_id] = handler
        self.infos[req.egress_id] = info
        self._spawn(self._update(req.egress_id, S.EGRESS_ACTIVE))
        return info

    async def stop_egress(self, req: lk_egress.StopEgressRequest, ctx: RequestContext) -> lk_egress.EgressInfo:
        self.seen.append(("StopEgress", ctx, time.monotonic()))
        info = await self._update(req.egress_id, S.EGRESS_ENDING)
        self._spawn(self._finish(req.egress_id))
        return info

    async def update_stream(self, req: lk_egress.UpdateStreamRequest, ctx: RequestContext) -> lk_egress.EgressInfo:
        self.seen.append(("UpdateStream", ctx, time.monotonic()))
        raise RpcError("invalid_argument", "egress has no stream output")

    async def _update(self, egress_id: str, status: int) -> lk_egress.EgressInfo:
        info = self.infos[egress_id]
        info.status = status  # type: ignore[assignment]
        info.updated_at = time.time_ns()
        if status >= S.EGRESS_COMPLETE:
            info.ended_at = info.updated_at
        await self.io.update_egress(info, give_up_after=10)
        return lk_egress.EgressInfo.FromString(info.SerializeToString())

    async def _finish(self, egress_id: str) -> None:
        # The handler goes before the final update: livekit-server shows COMPLETE as soon as
        # it has it, before our update call returns (the test saw the handler still there).
        await self.handlers.pop(egress_id).close()
        await self._update(egress_id, S.EGRESS_COMPLETE)

    def _spawn(self, coro) -> None:  # noqa: ANN001
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks)
        for h in self.handlers.values():
            await h.close()
        await self.server.close()


@pytest.fixture
async def lk(stack: DevStack) -> AsyncIterator[api.LiveKitAPI]:
    async with api.LiveKitAPI(stack.http_url, KEY, SECRET) as client:
        yield client


@pytest.fixture
async def io_bus(stack: DevStack) -> AsyncIterator[tuple[RedisBus, IOInfoClient]]:
    async with RedisBus(stack.redis_address) as bus:
        io = IOInfoClient(bus)
        await io.start()
        yield bus, io
        await io.close()


async def _status(lk: api.LiveKitAPI, room: str, egress_id: str) -> int:
    res = await lk.egress.list_egress(api.ListEgressRequest(room_name=room))
    return next(i.status for i in res.items if i.egress_id == egress_id)


async def test_start_update_stop_through_real_server(lk: api.LiveKitAPI, io_bus: tuple[RedisBus, IOInfoClient]) -> None:
    bus, io = io_bus
    room = await lk.room.create_room(api.CreateRoomRequest(name="rpc-room"))
    egress = FakeEgress(bus, io, affinity=0.5)
    await egress.server.start()
    try:
        req = api.TrackEgressRequest(room_name="rpc-room", track_id="TR_x", websocket_url="ws://127.0.0.1:9/pcm")
        t0 = time.monotonic()
        info = await lk.egress.start_track_egress(req)
        assert info.status == S.EGRESS_STARTING and info.egress_id.startswith("EG_")
        assert info.room_id == room.sid and info.track.track_id == "TR_x"
        method, ctx, handled_at = egress.seen[0]
        # livekit-server's StartEgress: 10 s request timeout, one claim (ours, 0.5) picked
        # after the 500 ms short circuit, not the 1 s affinity timeout
        assert abs((ctx.expiry_ns - ctx.sent_at_ns) / 1e9 - 10) < 0.05
        assert 0.45 <= handled_at - egress.claims[0] < 0.9, handled_at - egress.claims[0]
        assert time.monotonic() - t0 < 3

        for _ in range(50):  # UpdateEgress ACTIVE goes out in the background
            if await _status(lk, "rpc-room", info.egress_id) == S.EGRESS_ACTIVE:
                break
            await asyncio.sleep(0.05)
        assert await _status(lk, "rpc-room", info.egress_id) == S.EGRESS_ACTIVE
        got = await io.get_egress(info.egress_id)  # IOInfo.GetEgress over the bus
        assert got.status == S.EGRESS_ACTIVE and got.room_id == room.sid
        listed = await io.list_egress(lk_egress.ListEgressRequest(room_name="rpc-room"))
        assert [i.egress_id for i in listed.items] == [info.egress_id]
        await io.update_metrics(got, avg_cpu=0.5, max_cpu=0.8)

        with pytest.raises(api.TwirpError) as e:  # our RpcError reaches the Twirp caller as is
            await lk.egress.update_stream(api.UpdateStreamRequest(egress_id=info.egress_id, add_output_urls=["x"]))
        # code kept; livekit-server v1.13.5 prefixes the message with "twirp error unknown: "
        assert e.value.code == "invalid_argument"
        assert e.value.message.endswith("egress has no stream output"), e.value.message

        stopped = await lk.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
        assert stopped.status == S.EGRESS_ENDING
        method, ctx, _ = egress.seen[-1]
        assert method == "StopEgress"
        for _ in range(50):
            if await _status(lk, "rpc-room", info.egress_id) == S.EGRESS_COMPLETE:
                break
            await asyncio.sleep(0.05)
        assert await _status(lk, "rpc-room", info.egress_id) == S.EGRESS_COMPLETE
        assert not egress.handlers  # EgressHandler topic deregistered when the egress ended
        with pytest.raises(api.TwirpError) as e:  # livekit-server checks the stored status
            await lk.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
        assert e.value.code == "failed_precondition"
        assert "EGRESS_COMPLETE cannot be stopped" in e.value.message

        with pytest.raises(api.TwirpError) as e:  # a handler error is not retried by the server
            await lk.egress.start_track_egress(api.TrackEgressRequest(room_name="rpc-room", track_id="TR_invalid",
                                                                      websocket_url="ws://127.0.0.1:9/x"))
        assert e.value.code == "invalid_argument"
        assert e.value.message.endswith("track TR_invalid does not exist"), e.value.message
        assert len([s for s in egress.seen if s[0] == "StartEgress"]) == 2  # no retry for invalid_argument
    finally:
        await egress.close()


async def test_busy_egress_wins_at_once(lk: api.LiveKitAPI, io_bus: tuple[RedisBus, IOInfoClient]) -> None:
    bus, io = io_bus
    await lk.room.create_room(api.CreateRoomRequest(name="rpc-room2"))
    idle, busy = FakeEgress(bus, io, affinity=0.5), FakeEgress(bus, io, affinity=1.0)
    await idle.server.start()
    await busy.server.start()
    try:
        t0 = time.monotonic()
        info = await lk.egress.start_track_egress(
            api.TrackEgressRequest(room_name="rpc-room2", track_id="TR_y", websocket_url="ws://127.0.0.1:9/y"))
        assert time.monotonic() - t0 < 0.5  # affinity 1 = MaximumAffinity: no short-circuit wait
        assert info.egress_id in busy.handlers and not idle.handlers
        await lk.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
    finally:
        await idle.close()
        await busy.close()
