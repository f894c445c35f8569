"""The receive fast path: an SRTP packet handed to its receiver in the socket's callback.

aiortc takes every datagram through aioice (which first tries to parse it as STUN and
catches the error), a queue, the DTLS transport's task, SRTP, a full RTP parse (header
extensions included) and three coroutine calls. Once DTLS is up, ``install`` puts a
function in front of the ICE connection's sockets' ``datagram_received``: an SRTP packet (not SRTCP) is unprotected with the DTLS
transport's own session, its fixed header read (``parse_rtp``: the receivers use no
header extension) and handed to its ``EncodedReceiver.handle_rtp`` there and then. STUN,
DTLS and SRTCP still go aiortc's way. A VP8 720p30 track (1.7 Mbps, ~200 packets a
second) received and written costs a third less this way: 0.018-0.021 CPU s per media s
against 0.026-0.030 (``python3 -m bench.encoded_sub --kind video``, two runs each).

aiortc and aioice have no hook for this. ``install`` reaches their private attributes
(the ICE connection's sockets, the DTLS transport's SRTP session and RTP router),
and leaves aiortc's path as it is, with a warning, when they are not there.
``LKMEDIA_RTP_FAST_PATH=0`` keeps aiortc's path (to measure one against the other).

Polling. A live track sends its packets one by one (an Opus track 50 a second, paced),
and a wake-up of the event loop costs more than what is done with a packet: on these
machines an idle asyncio loop woken 10 times a second spends 0.0023 CPU s per s, ~230 us
a wake-up (the caches and TLB are cold after a sleep), and a packet's own work also runs
several times slower alone than in a run of packets. So once the fast path is in place
the loop no longer watches these sockets: every ``POLL_INTERVAL`` s (0.25 s; an
audio-only subscriber asks for ``AUDIO_POLL_INTERVAL``, 0.5 s, and a loop polls at the
shortest interval its sockets were given) one timer reads every subscriber socket of the
loop until it is empty, and handles what it read in one go. Polls fall on multiples of
POLL_INTERVAL of the loop's clock, and the other timers of a subscribed track (its RTCP,
the source's tick) are set to the same instants (``tick_at``), so they run in the poll's
wake-up, not in wake-ups of their own. One Opus track into an OGG file (``python3 -m
bench.encoded_sub``): 0.0096 CPU s per media s with a wake-up per datagram, 0.0071
polled every 0.1 s, 0.0051 every 0.25 s, 0.0039 every 0.25 s with the other timers on
the polls. The cost is up to the interval more latency on receipt (a file or a stream
does not mind half a second): a hole is seen, and its retransmission read, that much
later (the receiver's NACK retry and the time a hole may hold frames back add the
interval). Each datagram is still dated when it arrived (the kernel's stamp,
``arrival``), not when it was read, and while a STUN request is in flight (ICE consent)
the loop watches its socket. A track that ends by another way than its packets (the
signalling says it was unpublished, the subscriber closes) first has what waits in the
sockets read (``drain``). ``LKMEDIA_RTP_POLL`` sets the interval (0: a wake-up per datagram). The
sockets' receive buffers are raised to ``RECEIVE_BUFFER`` (where the system allows:
net.core.rmem_max, unless the process may force it) so that a poll interval of a
high-bitrate track, or a busy moment of the loop, fits in them many times over.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
import weakref
from dataclasses import dataclass
from typing import Any

import pylibsrtp

from ..core.clock import tick

log = logging.getLogger("lkmedia.lkrtc.fastpath")

_HEADER = struct.Struct("!BBHII")
SO_TIMESTAMPNS = 35  # (Linux's; Python's socket module has no name for it)
_TIMESPEC = struct.Struct("qq")
_stamp: float | None = None  # the kernel's arrival time of the datagram being handled
ENABLED = os.environ.get("LKMEDIA_RTP_FAST_PATH", "1") != "0"
RECEIVE_BUFFER = 1 << 20
POLL_INTERVAL = float(os.environ.get("LKMEDIA_RTP_POLL", "0.25"))  # 0: a wake-up per datagram
#: An audio-only subscriber's (an Opus track sends 50 packets a second: 25 a poll). Its
#: track egress job: 0.0031-0.0037 CPU s/s at 0.5 s, 0.0026-0.0028 at 1 s (/proc, 90 s each);
#: but at 1 s the job said ACTIVE up to 1 s after its first packet arrived (the file then
#: longer than ACTIVE -> stop by 0.6 s: test_track_egress_keeps_codec_family... in CI)
AUDIO_POLL_INTERVAL = max(POLL_INTERVAL, float(os.environ.get("LKMEDIA_RTP_POLL_AUDIO", "0.5"))) \
    if POLL_INTERVAL > 0 else 0.0


@dataclass(slots=True)
class Rtp:
    """An RTP packet's fixed header and payload (what the receivers read of aiortc's RtpPacket)."""

    marker: int
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> Rtp:
    """The packet in ``data`` (RFC 3550: CSRCs, a header extension and padding skipped)."""
    if len(data) < 12:
        raise ValueError("RTP packet shorter than its header")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise ValueError("not RTP version 2")
    pos = 12 + (b0 & 0x0F) * 4
    if b0 & 0x10:
        if len(data) < pos + 4:
            raise ValueError("RTP header extension cut short")
        pos += 4 + ((data[pos + 2] << 8) | data[pos + 3]) * 4
    end = len(data)
    if b0 & 0x20:
        end -= data[-1]
    if pos > end:
        raise ValueError("RTP header longer than the packet")
    return Rtp(b1 >> 7, b1 & 0x7F, seq, ts, ssrc, data[pos:end])


def arrival() -> float:
    """When the datagram being handled arrived, on ``time.monotonic()``'s scale: the
    kernel's stamp when the poller read it (SO_TIMESTAMPNS), else now. A track's first
    packet starts its RTP clock until a sender report comes (livekit-server sends one every
    3 s): dated at the poll, a participant egress's first beeps came up to a poll interval
    (217 ms) off their picture."""
    return _stamp if _stamp is not None else time.monotonic()


def unwrap_rtx(rtx: Any, payload_type: int, ssrc: int) -> Rtp:
    """The packet a retransmission (RFC 4588) carries: its first two bytes are the original
    sequence number. ``rtx``: an ``Rtp`` or aiortc's ``RtpPacket``."""
    p = rtx.payload
    return Rtp(rtx.marker, payload_type, (p[0] << 8) | p[1], rtx.timestamp, ssrc, p[2:])


def install(dtls: Any, interval: float = POLL_INTERVAL) -> bool:
    """Route the SRTP packets ``dtls`` (an aiortc RTCDtlsTransport, connected) receives
    straight to their receivers' ``handle_rtp`` (see module doc), its sockets read every
    ``interval`` s at most (0: as each datagram comes). True if in place.

    Every local socket of the ICE connection gets it, not only the nominated pair's: the
    server may send from its side of another pair (seen with livekit-server)."""
    try:
        protocols = list(dtls.transport._connection._protocols)
        srtp = dtls._rx_srtp
        router = dtls._rtp_router
    except AttributeError as e:
        log.warning("the receive fast path is not available (aiortc or aioice changed: %s): "
                    "packets take aiortc's own way", e)
        return False
    if srtp is None:
        return False
    for protocol in protocols:
        if not getattr(protocol, "lkm_fast_path", False):
            protocol.datagram_received = _fast(protocol.datagram_received, srtp, router)
            protocol.lkm_fast_path = True
            if interval > 0:
                _Poller.get().add(protocol, interval)
    return True


def _fast(slow: Any, srtp: Any, router: Any) -> Any:
    def datagram_received(data: bytes, addr: Any) -> None:
        if len(data) > 12 and 127 < data[0] < 192 and not 192 <= data[1] <= 208:  # SRTP, not SRTCP
            try:
                packet = parse_rtp(srtp.unprotect(data))
            except (pylibsrtp.Error, ValueError):
                return  # (aiortc drops these too)
            receiver = router.route_rtp(packet)
            handle = getattr(receiver, "handle_rtp", None)
            if handle is not None:
                handle(packet)
            return
        slow(data, addr)

    return datagram_received


def tick_at(delay: float, loop: asyncio.AbstractEventLoop | None = None) -> float:
    """The loop time of the first poll at least ``delay`` s from now (``loop.time() +
    delay`` when polling is off: LKMEDIA_RTP_POLL=0). Polls fall on multiples of
    POLL_INTERVAL of the loop's clock (``lkmedia.core.clock.tick``), so a timer set to this
    (``loop.call_at``, ``asyncio.timeout_at``) runs in the same wake-up of the loop as the
    poll, not in one of its own (see module doc)."""
    loop = loop or asyncio.get_running_loop()
    poller = _Poller._by_loop.get(loop)
    interval = poller.interval if poller is not None else POLL_INTERVAL
    if interval <= 0:
        return loop.time() + delay
    return tick(interval, delay, loop)


class _Poller:
    """Reads the sockets it was given at the shortest interval they were given, all of
    them at once, until they have nothing more (see module doc). One per event loop."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Poller] = weakref.WeakKeyDictionary()
    BUFFER = 65536

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.entries: list[tuple[Any, Any, Any, float]] = []   # (transport, socket, protocol, interval)
        self.handle: asyncio.TimerHandle | None = None
        self.polls = 0
        self.datagrams = 0

    @property
    def interval(self) -> float:
        """The shortest interval its sockets were given (POLL_INTERVAL when it has none)."""
        return min((e[3] for e in self.entries), default=POLL_INTERVAL)

    @classmethod
    def get(cls) -> _Poller:
        loop = asyncio.get_running_loop()
        poller = cls._by_loop.get(loop)
        if poller is None:
            poller = cls._by_loop[loop] = _Poller(loop)
        return poller

    def add(self, protocol: Any, interval: float = POLL_INTERVAL) -> bool:
        """Stop the loop from watching ``protocol``'s socket and read it here instead,
        every ``interval`` s at most (every socket of the loop at the shortest asked).
        False (the loop keeps watching it) where the loop or transport is not asyncio's
        selector one (uvloop, say)."""
        transport = getattr(protocol, "transport", None)
        sock = getattr(transport, "_sock", None)
        remove = getattr(self.loop, "_remove_reader", None)
        if transport is None or sock is None or remove is None or transport.is_closing():
            return False
        with contextlib.suppress(OSError):
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RECEIVE_BUFFER:
                try:  # (with CAP_NET_ADMIN, past net.core.rmem_max)
                    sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), RECEIVE_BUFFER)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # (arrival())
        remove(sock.fileno())   # (the transport keeps its socket; the loop no longer watches it)
        entry = (transport, sock, protocol, interval)
        self.entries.append(entry)
        self._watch_requests(entry)
        first = tick(self.interval, 0.0, self.loop)  # (the next instant of the grid, however near)
        if self.handle is None or self.handle.when() > first:
            if self.handle is not None:
                self.handle.cancel()
            self.handle = self.loop.call_at(first, self.poll)
        return True

    def _watch_requests(self, entry: tuple[Any, Any, Any, float]) -> None:
        """While a STUN request of aioice's is in flight on this socket, the loop watches
        it: ICE consent checks (every ~5 s) wait 0.5 s for their answer, once
        (``retransmissions=0``), and six missed in a row close the connection ("Consent to
        send expired"). Read once a second, about one answer in two came too late, and 3
        of 100 track egresses ended early."""
        transport, sock, protocol, _ = entry
        request = getattr(protocol, "request", None)
        add = getattr(self.loop, "_add_reader", None)
        if request is None or add is None or getattr(protocol, "lkm_watched", False):
            return
        protocol.lkm_watched = True
        fd = sock.fileno()
        in_flight = 0

        async def watched(*args: Any, **kwargs: Any) -> Any:
            nonlocal in_flight
            if in_flight == 0 and not transport.is_closing():
                add(fd, self._read, entry)
            in_flight += 1
            try:
                return await request(*args, **kwargs)
            finally:
                in_flight -= 1
                if in_flight == 0 and not transport.is_closing():
                    self.loop._remove_reader(fd)  # type: ignore[attr-defined]

        protocol.request = watched

    def poll(self) -> None:
        self.handle = None
        self.polls += 1
        keep = self.read_all()
        self.entries = keep
        if keep:
            self.handle = self.loop.call_at(tick(self.interval, self.interval / 2, self.loop), self.poll)

    def read_all(self) -> list[tuple[Any, Any, Any, float]]:
        """Read every socket until it is empty, handing each datagram on; the entries
        whose transports are still open."""
        keep = []
        for entry in self.entries:
            if entry[0].is_closing():
                continue  # (closed by aioice: dropped here)
            keep.append(entry)
            self._read(entry)
        return keep

    def _read(self, entry: tuple[Any, Any, Any, float]) -> None:
        """Read one socket until it is empty, handing each datagram on, dated (arrival())."""
        global _stamp
        _, sock, protocol, _ = entry
        received = protocol.datagram_received
        size = self.BUFFER
        n = 0
        shift = time.time() - time.monotonic()  # (the kernel stamps on the real-time clock)
        try:
            while True:
                data, anc, _, addr = sock.recvmsg(size, 64)
                n += 1
                _stamp = None
                for level, kind, raw in anc:
                    if kind == SO_TIMESTAMPNS and level == socket.SOL_SOCKET:
                        sec, nsec = _TIMESPEC.unpack(raw)
                        _stamp = sec + nsec * 1e-9 - shift
                received(data, addr)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:  # (as asyncio's transport does: an ICMP error, say)
            protocol.error_received(e)
        except Exception:
            log.exception("handling a datagram failed")
        finally:
            _stamp = None
        self.datagrams += n


def drain(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Read what waits in the polled sockets of ``loop`` now, not at the next poll: before
    a track is ended for a reason that came another way (the signalling said it was
    unpublished, the subscriber is closing), the packets it sent before are taken in."""
    poller = _Poller._by_loop.get(loop or asyncio.get_running_loop())
    if poller is not None and poller.entries:
        poller.read_all()
