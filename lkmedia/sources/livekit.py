"""LiveKit sources: subscribe with ``livekit.rtc`` and emit PyAV frames on the graph clock.

``RoomSource`` follows a whole room: each subscribed track gets an output port, created
and linked while the graph runs (``on_track(kind=..., link=node)``), as participants come.
``TrackSource`` follows one participant or one or two tracks on fixed "video"/"audio"
outputs (participant, track composite and track egress).

Timing. Video carries the receiver's render time (``timestamp_us``, WebRTC's monotonic
clock, already synchronised with audio playout by WebRTC); audio is stamped at arrival,
which is its playout time, then counted in samples so that it stays continuous. Both are
seconds on ``graph.clock``, so audio and video of one participant stay aligned.

Subscription. Only the tracks a source wants are subscribed (``_wants``), not the whole
room. A video track published while we are in the room gets its frame stream before it
is subscribed, so that the first key frame is not missed (see ``_consider``).

Continuity (egress #210). A track that is unpublished and republished, or a participant
who leaves and comes back within ``rejoin_grace`` seconds, keeps feeding the same output:
the hole becomes ``Gap`` items, never an EOS, so one recording continues. Mutes become
``Gap(muted=True)``. Raw video edges drop the oldest frame when full (live).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core import Node, OutputPort, Policy
from .follow import followed_tracks
from .livekit_feed import (
    LiveKitSourceBase,
    LiveKitSourceError,
    TrackInfo,
    _Feed,
    audio_to_av,
    video_to_av,
)

__all__ = ["LiveKitSourceError", "RoomSource", "TrackInfo", "TrackSource", "audio_to_av", "video_to_av"]


Linker = Callable[["RoomSource", OutputPort, TrackInfo], None]


@dataclass
class _Rule:
    kind: str | None
    participant: str | None
    source: str | None
    link: Node | None
    callback: Linker | None
    capacity: int | None
    policy: Policy | None

    def matches(self, info: TrackInfo) -> bool:
        return ((self.kind is None or self.kind == info.kind)
                and (self.participant is None or self.participant == info.participant)
                and (self.source is None or self.source == info.source))


class RoomSource(LiveKitSourceBase):
    """Every track of a room, one output port each, linked as tracks appear.

    ``on_track(kind="audio", link=mixer)`` links matching tracks to ``mixer`` (a node
    with dynamic inputs); ``on_track(callback=fn)`` calls ``fn(source, port, info)`` to
    link it some other way. A track no rule matches is not read. A feed whose track is
    gone longer than ``rejoin_grace`` seconds ends with EOS (the participant left).
    """

    def __init__(self, url: str, token: str, **kw: Any) -> None:
        super().__init__(url, token, **kw)
        self._rules: list[_Rule] = []

    def on_track(self, *, kind: str | None = None, link: Node | None = None, callback: Linker | None = None,
                 participant: str | None = None, source: str | None = None,
                 capacity: int | None = None, policy: Policy | str | None = None) -> None:
        if kind not in (None, "audio", "video"):
            raise ValueError(f"{self.name}: kind must be 'audio' or 'video', not {kind!r}")
        if (link is None) == (callback is None):
            raise ValueError(f"{self.name}: on_track needs exactly one of link= or callback=")
        if link is not None and not link.dynamic_inputs:
            raise ValueError(f"{self.name}: {link.name} takes no new inputs; use callback= to link it")
        self._rules.append(_Rule(kind, participant, source, link, callback, capacity,
                                 Policy(policy) if policy is not None else None))

    def _wants(self, info: TrackInfo) -> bool:
        feed = self.feeds.get(info.key)
        return (feed is not None and not feed.ended) or any(r.matches(info) for r in self._rules)

    def _feed_for(self, info: TrackInfo) -> _Feed | None:
        feed = self.feeds.get(info.key)
        if feed is not None and not feed.ended:
            if feed.lost_at is not None:
                self.report("track_resumed", participant=info.participant, kind=info.kind,
                            gap=round(self._now() - feed.lost_at, 3))
            return feed
        rule = next((r for r in self._rules if r.matches(info)), None)
        if rule is None or self.graph is None:
            return None
        base = f"{info.kind}:{info.participant}:{info.key[2]}"
        name, k = base, 1
        while name in self.outputs:
            k += 1
            name = f"{base}#{k}"
        port = self.add_output(name, self._video_caps() if info.kind == "video" else self._audio_caps())
        feed = _Feed(port, info)
        self.feeds[info.key] = feed
        if rule.link is not None:
            policy = rule.policy or (Policy.DROP_OLDEST if info.kind == "video" else None)
            self.graph.link(port, rule.link, capacity=rule.capacity, policy=policy)
        else:
            assert rule.callback is not None
            rule.callback(self, port, info)
        return feed

    def _tick(self, now: float) -> None:
        for feed in self.feeds.values():
            if feed.ended or feed.lost_at is None or now - feed.lost_at < self.rejoin_grace:
                continue
            feed.ended = True
            self._spawn(feed.port.eos())
            self.report("track_ended", participant=feed.info.participant, kind=feed.info.kind)


class TrackSource(LiveKitSourceBase):
    """One participant's camera and microphone, or given tracks, on fixed outputs.

    participant_identity: follow that participant's camera and microphone (``kind`` None:
    both outputs; ``screen_share``: its screen share and screen-share audio instead).
    track_id + kind: one track (track egress). audio_track_id / video_track_id: a track
    composite. The source ends when what it follows has been gone ``rejoin_grace`` s, or
    fails if nothing appeared within ``wait_timeout`` s (None: wait until stopped).
    """

    def __init__(self, url: str, token: str, *, participant_identity: str | None = None,
                 track_id: str | None = None, audio_track_id: str | None = None,
                 video_track_id: str | None = None, kind: str | None = None,
                 screen_share: bool = False, wait_timeout: float | None = None, **kw: Any) -> None:
        super().__init__(url, token, **kw)
        self.participant_identity = participant_identity
        self.track_ids = followed_tracks(self.name, participant_identity=participant_identity, track_id=track_id,
                                         audio_track_id=audio_track_id, video_track_id=video_track_id, kind=kind)
        kinds = [k for k in ("video", "audio") if (kind is None or k == kind)
                 and (participant_identity or self.track_ids[k])]
        for k in kinds:
            self.add_output(k, self._video_caps() if k == "video" else self._audio_caps())
        self.wait_timeout = wait_timeout
        self._sources = ({"video": ("screen_share", "unknown"), "audio": ("screen_share_audio", "unknown")}
                         if screen_share else {"video": ("camera", "unknown"), "audio": ("microphone", "unknown")})

    def _wants(self, info: TrackInfo) -> bool:
        if info.kind not in self.outputs:
            return False
        feed = self.feeds.get(info.kind)
        # A republished track gets a new sid: the same participant's same source continues.
        same = feed is not None and feed.info.key == info.key
        want_sid = self.track_ids[info.kind]
        if want_sid is not None:
            return info.track_sid == want_sid or same
        if info.participant != self.participant_identity:
            return False
        if feed is not None:
            return same  # not a second track of this kind (a screen share beside the camera)
        return info.source in self._sources[info.kind]

    def _feed_for(self, info: TrackInfo) -> _Feed | None:
        if not self._wants(info):
            return None
        port = self.outputs[info.kind]
        feed = self.feeds.get(info.kind)
        if feed is None:
            feed = _Feed(port, info)
            self.feeds[info.kind] = feed
        elif feed.lost_at is not None:
            self.report("track_resumed", participant=info.participant, kind=info.kind,
                        gap=round(self._now() - feed.lost_at, 3))
        feed.info = info
        return feed

    def _tick(self, now: float) -> None:
        if not self.feeds:
            if self.wait_timeout is not None and now > self.wait_timeout:
                what = self.participant_identity or ", ".join(s for s in self.track_ids.values() if s)
                raise LiveKitSourceError(f"{self.name}: {what} did not appear within {self.wait_timeout:g} s")
            return
        gone = [f for f in self.feeds.values() if f.lost_at is not None]
        if len(gone) == len(self.feeds) and all(now - f.lost_at >= self.rejoin_grace for f in gone):  # type: ignore[operator]
            self.report("source_gone", seconds=self.rejoin_grace)
            self.request_stop()
