"""Which participant gets a tile and in what order, for the native room composite, as
LiveKit's default template decides it (``template-default`` over components-core
``sortTrackReferences``):

* every subscribed video track of a remote participant is a tile (camera or screen
  share); audio-only participants get none;
* screen shares first (by join time), then cameras: speaking now first, then the one who
  spoke last, then join time (oldest first);
* a screen share turns ``grid`` into ``speaker``; ``speaker`` puts the first tile in focus,
  ``single-speaker`` shows only it;
* UpdateLayout: livekit-server sets ``{"layout": ...}`` as the metadata of the participant
  whose identity is the egress id (this job): the layout follows it.

``Tiles`` holds the state (pure logic, time injected); ``TileDirector`` feeds it from the
RoomSource's events and pushes order, layout, labels, hiding and muting to the Compositor.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..nodes.compose import Compositor
from ..nodes.layouts import LAYOUTS

log = logging.getLogger("lkmedia.egress.tiles")


@dataclass
class Tile:
    port: str  # the compositor input
    identity: str
    name: str  # what the tile's label shows
    source: str  # camera | screen_share | unknown
    joined_at: float
    seq: int  # arrival order, for equal join times
    gone: bool = False
    muted: bool = False


class Tiles:
    def __init__(self, layout: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.layout = layout
        self._clock = clock
        self.tiles: dict[str, Tile] = {}
        self.speaking: list[str] = []  # identities, loudest first (the room's active speakers)
        self.last_spoke: dict[str, float] = {}
        self._seq = 0

    def add(self, port: str, identity: str, name: str, source: str, joined_at: float) -> Tile:
        self._seq += 1
        tile = Tile(port, identity, name or identity, source, joined_at or 1e18, self._seq)
        self.tiles[port] = tile
        return tile

    def speakers(self, identities: list[str]) -> None:
        now = self._clock()
        for ident in identities:
            self.last_spoke[ident] = now
        for ident in self.speaking:  # those who stop speaking spoke last just now
            if ident not in identities:
                self.last_spoke[ident] = now
        self.speaking = list(identities)

    def set_layout_metadata(self, metadata: str) -> bool:
        """UpdateLayout's ``{"layout": ...}``; True if the layout changed."""
        try:
            layout = json.loads(metadata or "{}").get("layout", "")
        except (ValueError, AttributeError):
            return False
        if not isinstance(layout, str) or layout not in LAYOUTS or layout == self.layout:
            if layout and layout not in LAYOUTS:
                log.warning("UpdateLayout to %r: not a built-in layout, keeping %s", layout, self.layout)
            return False
        self.layout = layout
        return True

    def order(self) -> list[Tile]:
        live = [t for t in self.tiles.values() if not t.gone]
        rank = {ident: i for i, ident in enumerate(self.speaking)}

        def key(t: Tile) -> tuple[Any, ...]:
            if t.source == "screen_share":
                return (0, t.joined_at, t.seq)
            speaking = rank.get(t.identity)
            return (1, 0 if speaking is not None else 1, speaking or 0, -self.last_spoke.get(t.identity, -1e18),
                    t.joined_at, t.seq)

        return sorted(live, key=key)

    def effective_layout(self) -> str:
        """A screen share turns grid into speaker."""
        if self.layout.startswith("grid") and any(t.source == "screen_share" and not t.gone
                                                   for t in self.tiles.values()):
            return self.layout.replace("grid", "speaker", 1)
        return self.layout


class TileDirector:
    """Follows a RoomSource's events (graph listener) and directs the Compositor."""

    def __init__(self, compositor: Compositor, layout: str, self_identity: str) -> None:
        self.compositor = compositor
        self.tiles = Tiles(layout)
        self.self_identity = self_identity
        self._by_sid: dict[str, str] = {}  # track sid -> compositor port
        self.changes = 0

    def track(self, port: str, identity: str, name: str, source: str, joined_at: float, sid: str) -> None:
        """A video track linked to the compositor on ``port``."""
        self.tiles.add(port, identity, name, source, joined_at)
        self._by_sid[sid] = port
        self.compositor.set_label(port, name or identity)
        self._apply()

    def on_event(self, node: Any, event: str, f: dict[str, Any]) -> None:
        if event == "active_speakers":
            self.tiles.speakers(list(f.get("identities", [])))
        elif event == "metadata":
            if not (f.get("local") or f.get("identity") == self.self_identity):
                return
            if not self.tiles.set_layout_metadata(str(f.get("metadata", ""))):
                return
            log.info("layout: %s (UpdateLayout)", self.tiles.layout)
        elif event in ("track_lost", "track_resumed", "track_muted", "track_unmuted", "track_subscribed"):
            if not self._track_event(event, f):
                return
        else:
            return
        self._apply()

    def _track_event(self, event: str, f: dict[str, Any]) -> bool:
        sid = str(f.get("track_sid", ""))
        port = self._by_sid.get(sid) or (str(f.get("output")) if event == "track_subscribed" else "")
        tile = self.tiles.tiles.get(port)
        if tile is None:
            return False
        if event == "track_subscribed":  # a returning track continues its tile
            self._by_sid[sid] = port
            tile.gone = False
            self.compositor.hide(port, False)
        elif event == "track_lost":
            tile.gone = True
            self.compositor.hide(port)
        elif event == "track_resumed":
            tile.gone = False
            self.compositor.hide(port, False)
        else:
            tile.muted = event == "track_muted"
            self.compositor.mute(port, tile.muted)
        return True

    def _apply(self) -> None:
        self.changes += 1
        self.compositor.arrange([t.port for t in self.tiles.order()])
        layout = self.tiles.effective_layout()
        if layout != self.compositor.layout:
            self.compositor.set_layout(layout)
