"""The engine on plain Python items: links, policies, EOS, stop, cancel, error scope."""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from lkmedia.core import (
    EOS,
    BuildError,
    Caps,
    Edge,
    Graph,
    GraphError,
    LinkError,
    Policy,
    Processor,
    Sink,
    Source,
)


class Counter(Source):
    def __init__(self, n: int | None, name: str | None = None, caps: Caps | None = None, delay: float = 0) -> None:
        super().__init__(name)
        self.n = n
        self.delay = delay
        self.add_output("out", caps or Caps("video"))

    async def run(self) -> None:
        i = 0
        while (self.n is None or i < self.n) and not self.stop_requested:
            await self.emit(i)
            i += 1
            if self.delay:
                await asyncio.sleep(self.delay)


class Collect(Sink):
    def __init__(self, name: str | None = None, fail_at: int | None = None, delay: float = 0) -> None:
        super().__init__(name)
        self.items: list[Any] = []
        self.fail_at = fail_at
        self.delay = delay
        self.finalised = False

    async def run(self) -> None:
        for port in list(self.inputs.values()):
            while (item := await port.get()) is not EOS:
                if self.fail_at is not None and len(self.items) == self.fail_at:
                    raise OSError("destination refused")
                self.items.append(item)
                if self.delay:
                    await asyncio.sleep(self.delay)
        self.finalised = True


class Double(Processor):
    def process(self, item: Any) -> Any:
        return (item * 2,)


class ThreadedInc(Processor):
    threaded = True

    def process(self, item: Any) -> Any:
        return (item + 1,)


class VideoOnly(Sink):
    def accept_input(self, caps: Caps) -> str | None:
        return None if caps.media == "video" else f"takes video, got {caps.describe()}"

    async def run(self) -> None:
        pass


async def test_chain_delivers_everything_in_order() -> None:
    g = Graph()
    src, sink = Counter(1000), Collect()
    g.chain(src, Double(), ThreadedInc(), sink)
    await g.run()
    assert sink.items == [i * 2 + 1 for i in range(1000)]
    assert sink.finalised


async def test_fan_out_reaches_every_consumer() -> None:
    g = Graph()
    src, a, b = Counter(50), Collect("a"), Collect("b")
    g.link(src, a)
    g.link(src, b)
    await g.run()
    assert a.items == b.items == list(range(50))


async def test_edge_policies() -> None:
    e = Edge(None, None, capacity=3, policy=Policy.DROP_OLDEST)
    for i in range(10):
        await e.put(i)
    await e.put(EOS)
    got = [await e.get() for _ in range(4)]
    assert got == [7, 8, 9, EOS] and e.dropped == 7
    latest = Edge(None, None, capacity=5, policy=Policy.LATEST)
    for i in range(5):
        latest.put_nowait(i)
    assert await latest.get() == 4
    block = Edge(None, None, capacity=2, policy=Policy.BLOCK)
    await block.put(1)
    await block.put(2)
    assert not block.put_nowait(3)
    waiter = asyncio.ensure_future(block.put(3))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert await block.get() == 1
    await asyncio.wait_for(waiter, 1)


async def test_cycle_and_unlinked_and_bad_link_fail_in_build() -> None:
    g = Graph()
    a, b = Double("a"), Double("b")
    g.link(a, b)
    g.link(b, a)
    with pytest.raises(BuildError, match="cycle"):
        g.build()
    g2 = Graph()
    g2.link(Counter(1, "mic", caps=Caps("audio")), VideoOnly("screen"))
    with pytest.raises(LinkError) as ei:
        g2.build()
    assert "mic" in str(ei.value) and "screen" in str(ei.value)
    g3 = Graph()
    g3.link(Counter(1, "src"), Double("lonely"))
    with pytest.raises(BuildError, match="lonely"):
        g3.build()


async def test_branch_failure_keeps_sibling_running() -> None:
    g = Graph()
    src = Counter(200, delay=0.001)
    rtmp, mp4 = Collect("rtmp", fail_at=10), Collect("mp4")
    g.link(src, rtmp)
    g.link(src, mp4)
    events: list[tuple[str, str]] = []
    g.listen(lambda node, ev, f: events.append((node.name, ev)))
    errors = await g.run()
    assert mp4.items == list(range(200)) and mp4.finalised
    assert [e.node for e in errors] == ["rtmp"] and "refused" in str(errors[0])
    assert ("rtmp", "failed") in events


async def test_graph_scoped_failure_drains_sinks_then_raises() -> None:
    class Boom(Processor):
        def process(self, item: Any) -> Any:
            if item == 5:
                raise ValueError("corrupt frame")
            return (item,)

    g = Graph()
    sink = Collect()
    g.chain(Counter(None, delay=0.001), Boom("boom"), sink)
    with pytest.raises(GraphError, match="boom: corrupt frame"):
        await g.run()
    assert sink.items == [0, 1, 2, 3, 4] and sink.finalised


async def test_stop_drains_live_source() -> None:
    g = Graph()
    sink = Collect()
    g.chain(Counter(None, delay=0.001), ThreadedInc(), sink)
    await g.start()
    await asyncio.sleep(0.1)
    await g.stop(timeout=5)
    assert sink.finalised and len(sink.items) > 10


async def test_stop_watchdog_cancels_a_stuck_sink_and_fails_the_graph() -> None:
    """Was: the watchdog's timeout was a "branch" error and the graph ended well."""
    class Stuck(Sink):
        async def run(self) -> None:
            await asyncio.sleep(3600)

    g = Graph()
    good = Collect("good")
    src = Counter(None, delay=0.001)
    g.link(src, Stuck("stuck"))
    g.link(src, good)
    await g.start()
    await asyncio.sleep(0.05)
    with pytest.raises(GraphError, match="stuck: pipeline frozen: it did not finish within 0.2 s of stop"):
        await asyncio.wait_for(g.stop(timeout=0.2), 5)
    assert good.finalised and good.items


async def test_a_node_that_stops_taking_input_freezes_the_graph_and_the_rest_finalises() -> None:
    release = threading.Event()

    class Hang(Sink):
        """Takes three items, then hangs in its thread (a write to a dead mount)."""

        async def run(self) -> None:
            port = next(iter(self.inputs.values()))
            for _ in range(3):
                await port.get()
            await self.offload(release.wait, 60)

    g = Graph(freeze_timeout=0.5)
    src, good = Counter(None, delay=0.001), Collect("good")
    g.link(src, Hang("hang"), capacity=4)
    g.link(src, good)
    await g.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(GraphError, match="hang: pipeline frozen: took no input for [01] s"):
            await asyncio.wait_for(g.wait(), 15)
        assert 0.5 <= time.monotonic() - t0 < 13  # found, then the rest drained (the hung abort waits 10 s)
        assert good.finalised and len(good.items) > 3
    finally:
        release.set()


async def test_cancel_is_immediate() -> None:
    g = Graph()
    sink = Collect(delay=0.01)
    g.link(Counter(None), sink)
    await g.start()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(g.cancel(), 1)
    assert not sink.finalised


async def test_runtime_link_joins_a_running_graph() -> None:
    g = Graph()
    sink = Collect()
    first = Counter(None, "first", delay=0.001)
    g.link(first, sink)
    await g.start()
    await asyncio.sleep(0.02)
    late = Counter(5, "late")
    g.link(late, sink)
    await asyncio.sleep(0.05)
    assert late.finished
    await g.stop(timeout=5)
    assert sink.finalised
