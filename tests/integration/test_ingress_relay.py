"""An RTMP publish (the ffmpeg CLI) relayed to another process over the loopback relay
(lkmedia.service.ingress_relay), which reads it with FileSource as a job process will;
the relay's refusals; a reader that goes away ends the publish."""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lkmedia.rtmp import PublishRequest, RtmpServer, RtmpSession
from lkmedia.service.ingress_relay import FlvRelay, RelayTicket
from lkmedia.testing.media import av_clip

pytestmark = pytest.mark.integration

CHILD = """
import asyncio, json, os, sys
from lkmedia.core import EOS, Graph, Sink
from lkmedia.sources.file import FileSource

class Count(Sink):
    def __init__(self, name):
        super().__init__(name)
        self.n, self.size = 0, None

    async def run(self):
        for port in list(self.inputs.values()):
            while (item := await port.get()) is not EOS:
                self.n += 1
                self.size = self.size or [getattr(item, "width", 0), getattr(item, "height", 0)]

async def main():
    g = Graph()
    src = g.add(FileSource(sys.argv[1], options={"headers": os.environ["RELAY_HEADERS"]}))
    v, a = g.add(Count("v")), g.add(Count("a"))
    g.link(src.out("video"), v)
    g.link(src.out("audio"), a)
    errors = await g.run()
    print(json.dumps({"video": v.n, "audio": a.n, "size": v.size, "errors": [str(e) for e in errors]}))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("relay")
    out = {name: av_clip(d / f"{name}.flv", seconds) for name, seconds in (("short", 3), ("long", 30))}
    (d / "child.py").write_text(CHILD)
    out["child"] = d / "child.py"
    return out


async def _accept(req: PublishRequest) -> Any:
    return "ok"


async def _push(clip: Path, port: int) -> tuple[int, str]:
    p = await asyncio.create_subprocess_exec("ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv",
                                             f"rtmp://127.0.0.1:{port}/live/KEY", stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(p.communicate(), 90)
    return p.returncode or 0, err.decode(errors="replace")


async def test_a_publish_read_by_another_process(clips: dict[str, Path]) -> None:
    out: dict[str, Any] = {}

    async def on_session(s: RtmpSession) -> None:
        ticket = relay.offer("RT_relaytest1", s)
        assert "Bearer" not in repr(ticket)
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(clips["child"]), ticket.url, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "RELAY_HEADERS": ticket.headers})
        stdout, stderr = await asyncio.wait_for(child.communicate(), 60)
        out["child"] = json.loads(stdout or b"null") if child.returncode == 0 else stderr.decode()
        out["done"] = await ticket.done

    async with FlvRelay(0) as relay, RtmpServer(_accept, on_session, host="127.0.0.1", port=0) as server:
        rc, err = await _push(clips["short"], server.port)
        assert rc == 0, err
        for _ in range(100):
            if "done" in out:
                break
            await asyncio.sleep(0.1)
    assert out["child"] == {"video": 75, "audio": out["child"]["audio"], "size": [320, 240], "errors": []}, out
    assert out["child"]["audio"] > 100 and out["done"] == "the publisher ended the stream"


async def test_relay_refusals_and_a_reader_that_goes_away(clips: dict[str, Path]) -> None:
    out: dict[str, Any] = {}
    offered: asyncio.Future[RelayTicket] = asyncio.get_running_loop().create_future()

    async def on_session(s: RtmpSession) -> None:
        ticket = relay.offer("RT_relaytest2", s)
        offered.set_result(ticket)
        out["done"] = await ticket.done

    async with FlvRelay(0) as relay, RtmpServer(_accept, on_session, host="127.0.0.1", port=0) as server:
        push = asyncio.create_task(_push(clips["long"], server.port))
        ticket = await asyncio.wait_for(offered, 15)
        token = ticket.headers.split(": ", 1)[1].strip()
        async with aiohttp.ClientSession() as http:
            async with http.get(ticket.url.replace("relaytest2", "nosuch1")) as r:
                assert r.status == 404
            async with http.get(ticket.url, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 403
            async with http.post(ticket.url, headers={"Authorization": token}) as r:
                assert r.status == 405
            async with http.get(ticket.url, headers={"Authorization": token}) as first:
                assert first.status == 200 and first.headers["Content-Type"] == "video/x-flv"
                head = await first.content.readexactly(13)
                assert head[:3] == b"FLV"
                await first.content.readexactly(20_000)  # media flows
                async with http.get(ticket.url, headers={"Authorization": token}) as second:
                    assert second.status == 409
        # the reader is gone: the publish is ended rather than left to fill buffers
        rc, _ = await asyncio.wait_for(push, 20)
        assert rc != 0
        for _ in range(50):
            if "done" in out:
                break
            await asyncio.sleep(0.1)
    assert out["done"] == "the job stopped reading"
