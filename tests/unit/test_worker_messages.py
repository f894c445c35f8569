"""The job channel: typed messages, the spec codec, and the final status never lost."""
from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import pytest
from livekit.protocol import egress as lk

from lkmedia.egress.spec import EgressLaunch, spec_from_request
from lkmedia.rpc.messages import pack_start_egress
from lkmedia.worker import codec
from lkmedia.worker.messages import Channel, Done, Reply, Request, Start, Status, Stop


@dataclass
class Inner:
    n: int
    blob: bytes = b""


@dataclass
class Outer:
    name: str
    inner: Inner
    items: list[Inner] = field(default_factory=list)
    maybe: Inner | None = None
    table: dict[str, float] = field(default_factory=dict)
    msg: object = None


def test_codec_round_trips_dataclasses_bytes_and_protobufs() -> None:
    info = lk.EgressInfo(egress_id="EG_1", status=lk.EgressStatus.EGRESS_ACTIVE)
    value = Outer("x", Inner(1, b"\x00\xff"), [Inner(2), Inner(3)], None, {"a": 1.5}, info)
    back = codec.loads(Outer, codec.dumps(value))
    assert back == value and isinstance(back.msg, lk.EgressInfo) and back.inner.blob == b"\x00\xff"


def test_an_egress_spec_survives_the_trip_to_its_job_process() -> None:
    spec = spec_from_request(pack_start_egress(lk.ParticipantEgressRequest(
        room_name="r", identity="p", file_outputs=[lk.EncodedFileOutput(
            filepath="/out/{room_name}.mp4", s3=lk.S3Upload(bucket="b", secret="s3cret"))]), egress_id="EG_1"))
    launch = EgressLaunch(spec, "ws://x", "key", "secret", "/tmp")
    back = codec.loads(EgressLaunch, codec.dumps(launch))
    assert back == launch
    assert back.spec.config.file is not None and back.spec.config.file.absolute
    assert back.spec.config.file.filepath == "out/{room_name}.mp4"
    assert back.spec.config.file.storage.secret == "s3cret"  # the job needs it; it is never logged


async def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return await Channel.open(a), await Channel.open(b)


async def test_typed_messages_cross_the_channel() -> None:
    svc, job = await _pair()
    await svc.send(Start("lkmedia.egress.runner", {"k": [1, 2]}, b"info"))
    await svc.send(Stop(7, "StopEgress API"))
    assert await job.receive() == Start("lkmedia.egress.runner", {"k": [1, 2]}, b"info")
    assert await job.receive() == Stop(7, "StopEgress API")
    await job.send(Reply(7, error="nope", code="invalid_argument"))
    assert await svc.receive() == Reply(7, "nope", "invalid_argument")
    await job.close()
    assert await svc.receive() is None
    await svc.close()


@pytest.mark.parametrize("graceful", [True, False])
async def test_the_final_status_is_read_even_when_requests_are_left_unread(graceful: bool) -> None:
    """Was: jobs that ended together lost their results. A job that closes its socket with
    the service's messages unread in it resets the connection, and asyncio's reader then
    drops the final Status and Done it had already received."""
    svc, job = await _pair()
    for seq in range(3):
        await svc.send(Request(seq, "state"))  # never read by the job
    await job.send(Status(1, b"ACTIVE"))
    await job.send(Status(2, b"COMPLETE"))
    await job.send(Done(2, b"COMPLETE"))
    if graceful:
        closing = asyncio.create_task(job.finish(timeout=2))
    else:
        await job.close()
    await asyncio.sleep(0.1)  # the service's loop is busy: the bytes (and any reset) arrive first
    got = []
    while (msg := await svc.receive()) is not None:
        got.append(msg)
        if graceful and isinstance(msg, Done):
            await svc.close()
            break
    if graceful:
        await closing
        await job.close()
        assert got == [Status(1, b"ACTIVE"), Status(2, b"COMPLETE"), Done(2, b"COMPLETE")]
    else:
        assert Done(2, b"COMPLETE") not in got  # the failure the graceful close avoids
        await svc.close()
