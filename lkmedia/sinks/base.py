"""PacketSink: the base of every sink that muxes encoded packets.

One stream per linked input. The header is written once the first packet of every
input is known (its ``packet.stream`` is the encoder's or demuxer's template stream, so
extradata comes along). Writing happens on the sink's own thread, in batches.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import av

from ..core import EOS, Caps, LkmediaError, Sink, get_any

log = logging.getLogger("lkmedia.sinks")

ALL_VIDEO = {"h264", "hevc", "vp8", "vp9", "av1"}
ALL_AUDIO = {"aac", "opus", "mp3", "pcm_s16le", "vorbis", "flac", "pcm_mulaw", "pcm_alaw"}


class SinkStartError(LkmediaError):
    """One input of a sink never started while the others did."""


class PacketSink(Sink):
    """Subclasses set ``codecs`` (media -> allowed codec names) and implement
    ``open(templates)``, ``write(packets)`` and ``close()``, all run off the loop."""

    codecs: dict[str, set[str]] = {"video": ALL_VIDEO, "audio": ALL_AUDIO}
    #: Human name of the output kind, for error messages ("MP4", "HLS", ...).
    kind = "output"
    batch_max = 32
    #: Seconds to wait for more after a packet that came alone, so that the thread hop per
    #: write carries several (a live Opus track sends 50 a second, each alone). 0: none.
    #: Not while writes are inline (no hop to spare; the wait would be a wake-up of its own).
    linger = 0.0
    #: Write batches on the event loop rather than the sink's thread: for a sink whose
    #: writes are quick (a local file: a muxer's buffer, now and then a write(2) into the
    #: page cache). A live track's batch is a few small packets, and the thread hop per
    #: batch (a future, a wake-up, the GIL passed back and forth) costs far more than
    #: writing it. A write that takes longer than ``slow_write`` s (a slow disk) puts the
    #: sink back on its thread for good.
    inline_writes = False
    slow_write = 0.02

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.packets = 0
        self.bytes = 0
        self.first_time: float | None = None
        self.last_time: float | None = None
        self.backwards = 0  # packets dropped because their dts went back in time
        self._last_dts: dict[int, int] = {}  # id(template stream) -> its last dts

    def accept_input(self, caps: Caps) -> str | None:
        if not caps.encoded:
            return f"{self.kind} takes encoded packets, got {caps.describe()}: put an encoder in between"
        allowed = self.codecs.get(caps.media, set())
        if caps.codec is not None and caps.codec not in allowed:
            return (f"{self.kind} cannot carry {caps.media} codec {caps.codec!r} "
                    f"(takes {', '.join(sorted(allowed)) or 'no ' + caps.media})")
        media = [p.caps.media for p in self.inputs.values() if p.caps is not None]
        if media.count(caps.media) > 1 and not self.multi_stream_ok(caps.media):
            return f"{self.kind} takes one {caps.media} stream"
        return None

    def multi_stream_ok(self, media: str) -> bool:
        return False

    # -- hooks (run on the sink's thread) ------------------------------------
    def open(self, templates: list[av.stream.Stream]) -> None:
        raise NotImplementedError

    def write(self, packets: list[av.Packet]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Cancelled: release what is open, keeping what is on disk (default: close)."""
        self.close()

    def stream_ended(self, template: av.stream.Stream) -> None:
        """The input whose first packet had ``template`` as its stream reached EOS."""

    # -- run -----------------------------------------------------------------
    def _count(self, packets: list[av.Packet]) -> None:
        for p in packets:
            self.packets += 1
            self.bytes += p.size
            pts = p.pts
            if pts is not None:
                tb = p.time_base  # (a new Fraction each time it is read: once, and no Fraction arithmetic)
                if tb is None:
                    continue
                t = pts * tb.numerator / tb.denominator
                if self.first_time is None or t < self.first_time:
                    self.first_time = t
                if self.last_time is None or t > self.last_time:
                    self.last_time = t

    def _in_order(self, packets: list[av.Packet]) -> list[av.Packet]:
        """The packets whose dts does not go back in time on their stream. A muxer refuses
        such a packet with EINVAL, which would end the whole recording: it is dropped (and
        logged) instead, so what comes after is still written. (A stream's packets share
        one time base, so their dts compare as they are.)"""
        last = self._last_dts
        keep: list[av.Packet] | None = None
        for i, p in enumerate(packets):
            dts = p.dts
            if dts is None:
                continue
            key = id(p.stream)
            before = last.get(key)
            if before is not None and dts < before:
                if keep is None:
                    keep = packets[:i]
                self.backwards += 1
                if self.backwards == 1 or self.backwards % 1000 == 0:
                    tb = float(p.time_base or 0)
                    log.warning("%s: dropped a %s packet that went back in time (%.3f s after %.3f s; "
                                "%d so far)", self.name, p.stream.type if p.stream else "media", dts * tb,
                                before * tb, self.backwards)
                continue
            last[key] = dts
            if keep is not None:
                keep.append(p)
        return packets if keep is None else keep

    def _write(self, packets: list[av.Packet]) -> None:
        packets = self._in_order(packets)
        self._count(packets)
        if packets:
            self.write(packets)

    #: How much media may queue on one input while another has not started yet.
    max_start_skew = 20.0
    max_start_packets = 5000

    async def _first_packets(
        self, ports: list[Any]
    ) -> tuple[dict[Any, Any], list[av.Packet]] | None:
        """Read all inputs at once until each has delivered its first packet (or EOS).

        Reading one input at a time deadlocks: an encoder with a delay waits for frames
        that its source cannot send while a sibling edge to this sink is full.
        Returns the template stream per input and the packets read so far, in order.
        """
        templates: dict[Any, Any] = {}
        early: list[av.Packet] = []
        live = list(ports)
        rr = 0
        lo = hi = None
        while live and any(p not in templates for p in live):
            port, item = await get_any(live, rr)
            rr += 1
            if item is EOS:
                live.remove(port)
                continue
            templates.setdefault(port, item.stream)
            early.append(item)
            if item.pts is not None and item.time_base is not None:
                t = float(item.pts * item.time_base)
                lo = t if lo is None else min(lo, t)
                hi = t if hi is None else max(hi, t)
            span = (hi - lo) if lo is not None and hi is not None else 0.0
            if len(early) > self.max_start_packets or span > self.max_start_skew:
                waiting = ", ".join(repr(p.upstream) for p in live if p not in templates)
                raise SinkStartError(
                    f"{self.name}: no media from {waiting} while {span:.1f} s arrived on the other inputs"
                )
        if not early:
            return None
        return templates, early

    async def run(self) -> None:
        ports = list(self.inputs.values())
        early = await self._first_packets(ports)
        if early is None:
            log.warning("%s: no media arrived, nothing written", self.name)
            return
        templates, firsts = early
        live = [p for p in ports if not p.eos]
        opened = False
        try:
            await self.offload(self.open, [templates[p] for p in ports if p in templates])
            opened = True
            await self.offload(self._write, firsts)
            rr = 0
            while live:
                port, item = await get_any(live, rr)
                rr += 1
                if item is not EOS:
                    batch = [item]
                    if self.linger > 0 and not self.inline_writes and not any(q.pending for q in live):
                        await asyncio.sleep(self.linger)
                    for q in live:
                        while len(batch) < self.batch_max:
                            nxt = q.get_nowait()
                            if nxt is None or nxt is EOS:
                                break
                            batch.append(nxt)
                    await self._write_batch(batch)
                for q in [q for q in live if q.eos]:
                    live.remove(q)
                    await self.offload(self.stream_ended, templates[q])
            await self.offload(self.close)
            opened = False
        finally:
            if opened:
                # Cancelled or failed: keep what is written (fragmented files stay playable).
                # abort() runs on the sink thread, after any write still in progress there.
                try:
                    await asyncio.wait_for(asyncio.shield(self.offload(self.abort)), 10)
                except (TimeoutError, asyncio.CancelledError):
                    log.error("%s: abort did not complete", self.name)
                except Exception:
                    log.exception("%s: abort failed", self.name)

    async def _write_batch(self, batch: list[av.Packet]) -> None:
        if not self.inline_writes:
            await self.offload(self._write, batch)
            return
        t0 = time.monotonic()
        self._write(batch)
        took = time.monotonic() - t0
        if took > self.slow_write:
            self.inline_writes = False
            log.info("%s: a write took %.0f ms: writing on the sink's thread from now on", self.name, took * 1000)

    @property
    def duration(self) -> float:
        if self.first_time is None or self.last_time is None:
            return 0.0
        return self.last_time - self.first_time

    def stats(self) -> dict[str, Any]:
        s = {"packets": self.packets, "bytes": self.bytes, "duration": round(self.duration, 3)}
        if self.backwards:
            s["backwards"] = self.backwards
        return s
