"""The receive fast path's poller: sockets read every POLL_INTERVAL s, all at once,
instead of a wake-up of the event loop per datagram (real UDP sockets on loopback)."""
from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from lkmedia.lkrtc import fastpath


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.batches: list[list[bytes]] = []
        self.errors: list[Exception] = []
        self._batch: list[bytes] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.batches.append([data]) if self._batch is None else self._batch.append(data)

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


async def _endpoint() -> tuple[Any, _Protocol, int]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Protocol, local_addr=("127.0.0.1", 0))
    return transport, protocol, transport.get_extra_info("sockname")[1]


async def _just_polled(poller: Any) -> None:
    """Returns right after the poller's next poll."""
    polls = poller.polls
    while poller.polls == polls:
        await asyncio.sleep(0.001)


async def test_datagrams_wait_for_the_poll_and_are_read_together() -> None:
    transport, protocol, port = await _endpoint()
    other, other_protocol, other_port = await _endpoint()
    poller = fastpath._Poller.get()
    polls, before = poller.polls, poller.datagrams
    assert poller.add(protocol) and poller.add(other_protocol)
    # (the receive buffer is raised as far as the system allows)
    rcvbuf = transport._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    with open("/proc/sys/net/core/rmem_max") as f:
        assert rcvbuf >= min(fastpath.RECEIVE_BUFFER, int(f.read()))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await _just_polled(poller)
        for i in range(20):
            tx.sendto(b"a%d" % i, ("127.0.0.1", port))
            tx.sendto(b"b%d" % i, ("127.0.0.1", other_port))
        await asyncio.sleep(0.005)
        # the loop no longer watches the sockets: nothing before the poll ...
        assert protocol.batches == [] and other_protocol.batches == []
        await asyncio.sleep(fastpath.POLL_INTERVAL * 2)
        # ... then every datagram of both, in order, in one poll
        assert [b for (b,) in protocol.batches] == [b"a%d" % i for i in range(20)]
        assert [b for (b,) in other_protocol.batches] == [b"b%d" % i for i in range(20)]
        assert poller.datagrams - before == 40
        assert poller.polls - polls <= 3
    finally:
        tx.close()
        transport.close()
        other.close()
    await asyncio.sleep(fastpath.POLL_INTERVAL * 2)
    # closed transports leave the poller, which then stops ticking
    assert poller.entries == [] and poller.handle is None


async def test_a_socket_error_goes_to_the_protocol_and_polling_goes_on() -> None:
    transport, protocol, port = await _endpoint()
    poller = fastpath._Poller.get()
    assert poller.add(protocol)
    try:
        # a datagram to a closed port comes back as ICMP: recvfrom on a connected socket raises
        dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()
        transport._sock.connect(("127.0.0.1", dead_port))
        transport._sock.send(b"x")
        await asyncio.sleep(fastpath.POLL_INTERVAL * 2)
        assert [type(e) for e in protocol.errors] == [ConnectionRefusedError]
        assert poller.handle is not None  # still polling
        transport._sock.connect(("127.0.0.1", port))  # (connected to itself)
        transport._sock.send(b"y")
        await asyncio.sleep(fastpath.POLL_INTERVAL * 2)
        assert protocol.batches == [[b"y"]]
    finally:
        transport.close()
    await asyncio.sleep(fastpath.POLL_INTERVAL * 2)
    assert poller.handle is None


async def test_a_closed_transport_is_not_taken() -> None:
    transport, protocol, _ = await _endpoint()
    transport.close()
    assert not fastpath._Poller.get().add(protocol)


async def test_timers_set_by_tick_at_share_the_polls_wake_up() -> None:
    """Polls fall on multiples of POLL_INTERVAL of the loop's clock; tick_at gives the
    same instant, so a timer set to it runs in the poll's wake-up of the loop."""
    transport, protocol, _ = await _endpoint()
    poller = fastpath._Poller.get()
    loop = asyncio.get_running_loop()
    try:
        assert poller.add(protocol)
        for _ in range(3):
            await _just_polled(poller)
            assert poller.handle is not None
            when = poller.handle.when()
            assert when % fastpath.POLL_INTERVAL < 1e-6 or -when % fastpath.POLL_INTERVAL < 1e-6
            assert fastpath.tick_at(0.0) == when  # (the next poll, exactly)
            assert fastpath.tick_at(fastpath.POLL_INTERVAL / 2) == when
            later = fastpath.tick_at(fastpath.POLL_INTERVAL * 1.5)
            assert later > when and loop.time() + fastpath.POLL_INTERVAL * 1.5 <= later
    finally:
        transport.close()
    await asyncio.sleep(fastpath.POLL_INTERVAL * 2)
    assert poller.handle is None


async def test_the_loop_polls_at_the_shortest_interval_its_sockets_were_given() -> None:
    """An audio-only subscriber's sockets are read every 0.5 s; once a socket asking for
    0.25 s joins, every socket is read every 0.25 s, and at 0.5 s again once it is gone."""
    slow_t, slow, _ = await _endpoint()
    fast_t, fast, _ = await _endpoint()
    poller = fastpath._Poller.get()
    try:
        assert poller.add(slow, 0.5)
        assert poller.interval == 0.5 and poller.handle is not None
        assert abs(poller.handle.when() / 0.5 - round(poller.handle.when() / 0.5)) < 1e-9
        assert fastpath.tick_at(0.0) == poller.handle.when()  # (other timers follow the polls)
        assert poller.add(fast, 0.25)
        assert poller.interval == 0.25
        loop = asyncio.get_running_loop()
        assert poller.handle.when() <= loop.time() + 0.25 + 1e-6
        await _just_polled(poller)
        t0, polls = loop.time(), poller.polls
        await asyncio.sleep(1.0)
        assert 3 <= poller.polls - polls <= 5, (poller.polls - polls, loop.time() - t0)
        fast_t.close()
        await asyncio.sleep(0.6)
        assert poller.interval == 0.5
        polls = poller.polls
        await asyncio.sleep(1.0)
        assert 1 <= poller.polls - polls <= 3
    finally:
        slow_t.close()
        fast_t.close()
    await asyncio.sleep(1.1)
    assert poller.handle is None


async def test_drain_reads_what_waits_before_the_next_poll() -> None:
    """A track that ends by signalling (unpublished) has its last packets still in the
    socket until the next poll: drain() reads them now (an OGG was 6-8 packets short)."""
    transport, protocol, port = await _endpoint()
    poller = fastpath._Poller.get()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert poller.add(protocol, 0.5)
        await _just_polled(poller)
        for i in range(5):
            tx.sendto(b"%d" % i, ("127.0.0.1", port))
        await asyncio.sleep(0.01)
        assert protocol.batches == []
        polls = poller.polls
        fastpath.drain()
        assert [b for (b,) in protocol.batches] == [b"%d" % i for i in range(5)] and poller.polls == polls
    finally:
        tx.close()
        transport.close()
    await asyncio.sleep(1.1)


class _Stun(_Protocol):
    """Stands in for aioice's StunProtocol: ``request`` sends and waits for the answer as
    aioice's consent check does (one try, 0.5 s: stun.RETRY_RTO, retransmissions=0)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: asyncio.Future[bytes] | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(data)

    async def request(self, message: bytes, addr: Any, integrity_key: bytes | None = None,
                      retransmissions: int | None = None) -> bytes:
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.sendto(message, addr)
        return await asyncio.wait_for(self.answer, 0.5)


async def test_a_stun_request_in_flight_is_answered_between_polls() -> None:
    """aioice's consent check waits 0.5 s for its answer, then counts a failure; six in a
    row close the ICE connection ("Consent to send expired"). A socket read once a second
    missed about one answer in two: 3 of 100 track egresses ended early. While a request
    is in flight, the loop watches the socket."""
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        _Stun, local_addr=("127.0.0.1", 0))
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.setblocking(False)
    loop = asyncio.get_running_loop()

    def answer() -> None:
        data, addr = echo.recvfrom(100)
        echo.sendto(b"answer:" + data, addr)

    loop.add_reader(echo.fileno(), answer)
    poller = fastpath._Poller.get()
    try:
        assert poller.add(protocol, 1.0)
        for i in range(4):
            await _just_polled(poller)
            await asyncio.sleep(0.05 + 0.2 * i)  # (anywhere between two polls)
            assert await protocol.request(b"q%d" % i, echo.getsockname()) == b"answer:q%d" % i
        # ... and between requests the loop does not watch it: datagrams wait for the poll
        await _just_polled(poller)
        echo.sendto(b"late", transport.get_extra_info("sockname"))
        protocol.answer = loop.create_future()
        await asyncio.sleep(0.1)
        assert not protocol.answer.done()
    finally:
        loop.remove_reader(echo.fileno())
        echo.close()
        transport.close()
        await asyncio.sleep(1.1)


async def test_a_datagram_is_dated_when_it_arrived_not_when_it_was_read() -> None:
    """A track's first packet sets where its RTP clock starts until a sender report comes
    (livekit-server sends one every 3 s): dated at the poll, a participant egress's first
    three beeps came up to a poll interval off their picture (217 ms at 0.25 s)."""
    arrivals: list[tuple[bytes, float]] = []

    class Dated(_Protocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            arrivals.append((data, fastpath.arrival()))

    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Dated, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    poller = fastpath._Poller.get()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert poller.add(protocol, 1.0)
        await _just_polled(poller)
        tx.sendto(b"first", ("127.0.0.1", port))
        sent_first = time.monotonic()
        await asyncio.sleep(0.3)
        tx.sendto(b"second", ("127.0.0.1", port))
        sent_second = time.monotonic()
        await _just_polled(poller)
        read = time.monotonic()
        assert [d for d, _ in arrivals] == [b"first", b"second"]
        (_, first), (_, second) = arrivals
        assert abs(first - sent_first) < 0.01 and abs(second - sent_second) < 0.01, (first, second, read)
        assert read - first > 0.3
        assert fastpath.arrival() >= read  # (outside a poll: now)
    finally:
        tx.close()
        transport.close()
        await asyncio.sleep(1.1)
