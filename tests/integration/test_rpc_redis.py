"""psrpc over a real redis-server: Python client <-> Python servers, every routing mode."""
from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from lkmedia.rpc import RedisBus, RequestContext, Routing, RpcClient, RpcError, RpcServer, SelectionOpts, wire
from lkmedia.rpc.bus import lock_key
from lkmedia.rpc.channels import new_request_id, request_channel, response_channel
from lkmedia.rpc.client import START_EGRESS_SELECTION
from lkmedia.rpc.messages import GetEgressRequest, ListActiveEgressRequest, ListActiveEgressResponse
from lkmedia.rpc.wire import Request, encode

pytestmark = pytest.mark.integration
SVC = "TestSvc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A private redis-server (no persistence) that tests can stop and start again."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server not installed (scripts/install_livekit.sh installs it)")
        self.exe, self.dir, self.port = exe, workdir, _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=0.5).ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    r = Redis(tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
async def bus(redis_server: Redis) -> AsyncIterator[RedisBus]:
    async with RedisBus(redis_server.address) as b:
        yield b


@pytest.fixture
async def client(bus: RedisBus) -> AsyncIterator[RpcClient]:
    async with RpcClient(bus, SVC) as c:
        yield c


def echo(tag: str, calls: list[str] | None = None):  # noqa: ANN201
    async def handler(req: GetEgressRequest, ctx: RequestContext) -> GetEgressRequest:
        assert ctx.client_id.startswith("CLI_") and ctx.remaining() > 0
        if calls is not None:
            calls.append(tag)
        return GetEgressRequest(egress_id=f"{tag}:{req.egress_id}")
    return handler


async def test_affinity_best_claim_wins(bus: RedisBus, client: RpcClient) -> None:
    a, b = RpcServer(bus, SVC), RpcServer(bus, SVC)
    await a.register("Start", echo("busy"), GetEgressRequest, routing=Routing.AFFINITY, affinity=lambda r: 1.0)
    await b.register("Start", echo("idle"), GetEgressRequest, routing=Routing.AFFINITY, affinity=lambda r: 0.5)
    t0 = time.monotonic()
    res = await client.call("Start", GetEgressRequest(egress_id="x"), GetEgressRequest,
                            selection=START_EGRESS_SELECTION, timeout=10)
    assert res.egress_id == "busy:x"
    assert time.monotonic() - t0 < 0.4  # affinity 1 reaches MaximumAffinity: chosen at once
    await a.close()

    async def decline(_r: GetEgressRequest) -> float:
        return -1.0
    c = RpcServer(bus, SVC)
    await c.register("Start", echo("full"), GetEgressRequest, routing=Routing.AFFINITY, affinity=decline)
    t0 = time.monotonic()
    res = await client.call("Start", GetEgressRequest(egress_id="y"), GetEgressRequest,
                            selection=START_EGRESS_SELECTION, timeout=10)
    took = time.monotonic() - t0
    assert res.egress_id == "idle:y"
    assert 0.45 <= took < 0.9, took  # 0.5 is kept until the 500 ms short circuit fires
    await b.close()

    t0 = time.monotonic()
    with pytest.raises(RpcError) as e:  # only a declining server left: silence
        await client.call("Start", GetEgressRequest(), GetEgressRequest, selection=START_EGRESS_SELECTION)
    assert (e.value.code, e.value.message) == ("unavailable", "no response from servers")
    assert 0.95 <= time.monotonic() - t0 < 1.5  # AffinityTimeout 1 s
    await c.close()


async def test_min_affinity_rejects_claims(bus: RedisBus, client: RpcClient) -> None:
    s = RpcServer(bus, SVC)
    await s.register("Start", echo("low"), GetEgressRequest, routing=Routing.AFFINITY, affinity=lambda r: 0.2)
    with pytest.raises(RpcError, match=r"no servers available \(received 1 responses\)"):
        await client.call("Start", GetEgressRequest(), GetEgressRequest,
                          selection=SelectionOpts(minimum_affinity=0.5, affinity_timeout=0.3))
    await s.close()


async def test_queue_lock_one_handler_per_request(redis_server: Redis, bus: RedisBus, client: RpcClient) -> None:
    calls: list[str] = []
    async with RedisBus(redis_server.address) as bus2:
        s1, s2 = RpcServer(bus, SVC), RpcServer(bus2, SVC)
        await s1.register("Q", echo("s1", calls), GetEgressRequest, topic="EG_1")
        await s2.register("Q", echo("s2", calls), GetEgressRequest, topic="EG_1")
        results = await asyncio.gather(*(
            client.call("Q", GetEgressRequest(egress_id=str(i)), GetEgressRequest, topic="EG_1") for i in range(20)))
        assert sorted(int(r.egress_id.split(":")[1]) for r in results) == list(range(20))
        assert len(calls) == 20  # each request handled exactly once across both servers
        await s1.close()
        await s2.close()
    # the lock key psrpc uses exists, with a 5 s TTL
    raw = encode(Request(request_id="REQ_probe", client_id=client.client_id, expiry=time.time_ns() + 10**9))
    await bus.try_lock(raw)
    ttl = redis.Redis(port=redis_server.port).pttl(lock_key(raw))
    assert 4000 < ttl <= 5000


async def test_multi(bus: RedisBus, client: RpcClient) -> None:
    servers = []
    for ids in (["EG_a"], ["EG_b", "EG_c"]):
        s = RpcServer(bus, SVC)

        async def active(_r: ListActiveEgressRequest, _c: RequestContext, ids: list[str] = ids) -> ListActiveEgressResponse:
            return ListActiveEgressResponse(egress_ids=ids)
        await s.register("ListActive", active, ListActiveEgressRequest, topic="", routing=Routing.MULTI)
        servers.append(s)
    res = await client.call_multi("ListActive", ListActiveEgressRequest(), ListActiveEgressResponse, timeout=0.5)
    assert sorted(i for r in res if not isinstance(r, RpcError) for i in r.egress_ids) == ["EG_a", "EG_b", "EG_c"]
    for s in servers:
        await s.close()


async def test_error_codes(bus: RedisBus, client: RpcClient, caplog: pytest.LogCaptureFixture) -> None:
    async def not_found(_r: GetEgressRequest, _c: RequestContext) -> GetEgressRequest:
        raise RpcError("not_found", "egress does not exist")

    async def boom(_r: GetEgressRequest, _c: RequestContext) -> GetEgressRequest:
        raise ValueError("upload failed: rtmp://host/app/sk_supersecret1234 token=abc")

    async def slow(_r: GetEgressRequest, _c: RequestContext) -> GetEgressRequest:
        await asyncio.sleep(2)
        return GetEgressRequest()

    s = RpcServer(bus, SVC, drain_timeout=0.1)
    await s.register("NotFound", not_found, GetEgressRequest)
    await s.register("Boom", boom, GetEgressRequest)
    await s.register("Slow", slow, GetEgressRequest)
    await s.register("Typed", echo("t"), Request)
    with pytest.raises(RpcError) as e:
        await client.call("NotFound", GetEgressRequest(), GetEgressRequest)
    assert (e.value.code, e.value.message) == ("not_found", "egress does not exist")
    with pytest.raises(RpcError) as e:
        await client.call("Boom", GetEgressRequest(), GetEgressRequest)
    assert (e.value.code, e.value.message) == ("internal", "internal error")
    assert "supersecret" not in caplog.text and "abc" not in caplog.text.split("token=")[-1][:3]
    sub = await bus.subscribe(response_channel(SVC, "CLI_manual"))  # raw bytes no proto parses
    await bus.publish(request_channel(SVC, "Typed"), Request(
        request_id="REQ_bad", client_id="CLI_manual", expiry=time.time_ns() + 10**9, raw_request=b"\xff\xff\xff"))
    res = wire.decode(await asyncio.wait_for(sub.get(), 2) or b"")
    assert isinstance(res, wire.Response) and res.code == "malformed_request" and res.request_id == "REQ_bad"
    await sub.close()
    t0 = time.monotonic()
    with pytest.raises(RpcError) as e:
        await client.call("Slow", GetEgressRequest(), GetEgressRequest, timeout=0.5)
    assert (e.value.code, e.value.message) == ("deadline_exceeded", "request timed out")
    assert time.monotonic() - t0 < 0.8
    with pytest.raises(RpcError) as e:
        await client.call("Nobody", GetEgressRequest(), GetEgressRequest, timeout=2)
    assert (e.value.code, e.value.message) == ("unavailable", "no response from servers")
    await s.close()


async def test_expired_request_dropped(bus: RedisBus) -> None:
    calls: list[str] = []
    s = RpcServer(bus, SVC)
    await s.register("Multi", echo("m", calls), GetEgressRequest, routing=Routing.MULTI)
    now = time.time_ns()
    for expiry in (now - 1, now + 2 * 10**9):
        await bus.publish(request_channel(SVC, "Multi"), Request(
            request_id=new_request_id(), client_id="CLI_test", sent_at=now, expiry=expiry, multi=True,
            raw_request=GetEgressRequest(egress_id="e").SerializeToString()))
    await asyncio.sleep(0.3)
    assert calls == ["m"]  # only the unexpired one ran
    await s.close()


async def test_dynamic_topics(bus: RedisBus, client: RpcClient) -> None:
    s = RpcServer(bus, SVC)

    async def stop(req: GetEgressRequest, _c: RequestContext) -> GetEgressRequest:
        await s.deregister("Stop", "EG_9")  # an egress ending from inside its own StopEgress
        return GetEgressRequest(egress_id="stopped")
    await s.register("Stop", stop, GetEgressRequest, topic="EG_9")
    with pytest.raises(ValueError, match="already registered"):
        await s.register("Stop", stop, GetEgressRequest, topic="EG_9")
    assert (await client.call("Stop", GetEgressRequest(), GetEgressRequest, topic="EG_9")).egress_id == "stopped"
    assert s.registered() == []
    with pytest.raises(RpcError, match="no response from servers"):
        await client.call("Stop", GetEgressRequest(), GetEgressRequest, topic="EG_9")
    await s.close()


async def test_survives_redis_restart(redis_server: Redis, bus: RedisBus, client: RpcClient) -> None:
    s = RpcServer(bus, SVC)
    await s.register("Ping", echo("p"), GetEgressRequest)
    assert (await client.call("Ping", GetEgressRequest(egress_id="1"), GetEgressRequest)).egress_id == "p:1"
    redis_server.stop()
    with pytest.raises(RpcError) as e:
        await client.call("Ping", GetEgressRequest(), GetEgressRequest)
    assert e.value.code == "unavailable"
    redis_server.start()
    assert await bus.wait_connected(10)
    assert bus.reconnects >= 1
    res = await client.call("Ping", GetEgressRequest(egress_id="2"), GetEgressRequest)
    assert res.egress_id == "p:2"  # subscriptions of client and server came back by themselves
    await s.close()


async def test_a_start_storm_does_not_run_out_of_redis_connections(bus: RedisBus) -> None:
    """150 commands at once, each holding its connection a while (a storm of StartEgress
    handlers, each claiming and queueing). redis-py 8 caps a client's pool at 100 by
    default and refuses the 101st ("Too many connections"): the bus sets its own cap."""
    async def hold() -> None:
        await bus.redis.blpop([b"lkmedia-test:nothing"], timeout=0.5)

    await asyncio.gather(*(hold() for _ in range(150)))
