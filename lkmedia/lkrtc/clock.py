"""RTP timestamps of one participant's tracks on one local clock.

Each track (a ``StreamClock``) starts on arrival: its first packet is dated with the
local time it arrived, later ones keep their RTP spacing (so network jitter does not move
them). RTP timestamps of two tracks say nothing about each other; RTCP sender reports do:
each maps an RTP timestamp of its track to an NTP time of the sender. All tracks of a
participant share one ``ParticipantClock`` that fixes, at the first sender report any
of them gets, how NTP time maps to local time; from then on every track that has a report
is dated through NTP, so the participant's audio and video line up as the publisher
captured them. A track whose report disagrees with where arrival put it moves once by the
difference (typically tens of ms, within the first three seconds: livekit-server sends
reports every 3 s).

A report can come out late but never early: a sender dates it from when its last packet
left, and livekit-server rebases it by an estimated propagation delay. Measured with the
test publisher (livekit.rtc), its audio reports stood 0 to 15 ms later than its earliest,
changing every few seconds, while its video reports held within 0.5 ms. So a track of a
participant with several tracks follows the earliest of its last ``window`` reports (when
that moves it more than ``fine`` s), not the first one. A report more than ``resync`` s
off that moves it at once, in either direction: the sender's clock stepped.

Times are seconds on ``time.monotonic()``'s scale; RTP timestamps are unwrapped to 64 bits.
"""
from __future__ import annotations

from collections import deque
from typing import Any

NTP_EPOCH_FRAC = 1 << 32


def unwrap(value: int, last: int | None, bits: int = 32) -> int:
    """The unwrapped value of ``bits``-bit counter ``value`` (an RTP timestamp, or with
    16 bits a sequence number) nearest to the unwrapped ``last``."""
    if last is None:
        return value
    span = 1 << bits
    ext = (last & ~(span - 1)) | value
    if ext - last > span >> 1:
        ext -= span
    elif last - ext > span >> 1:
        ext += span
    return ext


class ParticipantClock:
    """NTP time (of the publisher's sender reports) -> local time, shared by tracks."""

    def __init__(self) -> None:
        self.offset: float | None = None  # local seconds - NTP seconds
        self.streams = 0

    def stream(self, rate: int, **kw: Any) -> StreamClock:
        return StreamClock(rate, self, **kw)


class StreamClock:
    """One track's RTP clock (``rate`` Hz) on the participant's local timeline."""

    def __init__(self, rate: int, participant: ParticipantClock | None = None, *,
                 resync: float = 0.05, fine: float = 0.004, window: int = 8, max_skew: float = 2.0) -> None:
        self.rate = rate
        self.participant = participant or ParticipantClock()
        self.participant.streams += 1
        self.resync = resync
        self.fine = fine
        self.max_skew = max_skew
        self._reports: deque[float] = deque(maxlen=window)  # NTP seconds - RTP seconds, per report
        self._last: int | None = None    # last unwrapped RTP timestamp seen
        self._base_ts = 0                # unwrapped RTP timestamp at ...
        self._base_t = 0.0               # ... this local time
        self.synced = False              # dated through a sender report
        self.shifts = 0                  # times the mapping moved (reports, resyncs)
        self.last_shift = 0.0

    def _at(self, ext: int) -> float:
        return self._base_t + (ext - self._base_ts) / self.rate

    def time(self, ts: int, arrival: float) -> float:
        """The local time of the frame with 32-bit RTP timestamp ``ts`` arriving now."""
        ext = unwrap(ts, self._last)
        if self._last is None:
            self._base_ts, self._base_t = ext, arrival
        elif ext > self._last:
            t = self._at(ext)
            if abs(t - arrival) > self.max_skew:
                # the timestamps jumped (a restarted sender) or a report was wrong:
                # start again from arrival rather than date media seconds away from now
                self._move(arrival - t)
                self.synced = False
                self._reports.clear()
        if self._last is None or ext > self._last:
            self._last = ext
        return self._at(ext)

    def sender_report(self, ntp: int, ts: int) -> None:
        """An RTCP sender report: RTP timestamp ``ts`` was sampled at NTP time ``ntp``
        (64-bit fixed point). Ignored until the track's first packet."""
        if self._last is None:
            return
        ext = unwrap(ts, self._last)
        ntp_s = ntp / NTP_EPOCH_FRAC
        here = self._at(ext)
        p = self.participant
        if p.offset is None:
            p.offset = here - ntp_s
        base = ntp_s - ext / self.rate
        shift = ntp_s + p.offset - here
        restart = not self.synced or abs(shift) > self.resync  # (the first report, or the sender's clock stepped)
        if restart:
            self._reports.clear()
        self._reports.append(base)
        if restart:
            self._move(shift)
        elif p.streams > 1:
            earliest = shift + min(self._reports) - base
            if abs(earliest) > self.fine:
                self._move(earliest)
        self.synced = True

    def _move(self, shift: float) -> None:
        if shift == 0.0:
            return
        self._base_t += shift
        self.shifts += 1
        self.last_shift = shift
