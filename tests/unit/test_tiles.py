"""Tile order and layout for the native room composite (LiveKit's sortTrackReferences)."""
from __future__ import annotations

from lkmedia.egress.tiles import Tiles


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def names(tiles: Tiles) -> list[str]:
    return [t.identity for t in tiles.order()]


def test_screen_share_first_then_speaking_then_last_spoke_then_join_time() -> None:
    clock = Clock()
    t = Tiles("grid", clock=clock)
    t.add("in0", "alice", "Alice", "camera", 10.0)
    t.add("in1", "bob", "", "camera", 11.0)
    t.add("in2", "carol", "Carol", "camera", 12.0)
    assert names(t) == ["alice", "bob", "carol"]  # join time, oldest first
    t.speakers(["carol"])
    assert names(t) == ["carol", "alice", "bob"]
    clock.t += 5
    t.speakers(["bob"])  # carol stopped just now: she spoke last
    assert names(t) == ["bob", "carol", "alice"]
    clock.t += 5
    t.speakers([])
    assert names(t) == ["bob", "carol", "alice"]  # bob spoke last, then carol
    t.add("in3", "dave", "Dave", "screen_share", 13.0)
    assert names(t)[0] == "dave" and t.effective_layout() == "speaker"
    t.tiles["in3"].gone = True
    assert names(t)[0] == "bob" and t.effective_layout() == "grid"
    assert t.tiles["in1"].name == "bob"  # no display name: the identity


def test_layouts_keep_their_theme_and_update_layout_takes_built_in_ones() -> None:
    t = Tiles("grid-light")
    t.add("in0", "a", "", "screen_share", 1.0)
    assert t.effective_layout() == "speaker-light"
    assert t.set_layout_metadata('{"layout": "single-speaker"}') and t.layout == "single-speaker"
    assert not t.set_layout_metadata('{"layout": "single-speaker"}')  # no change
    assert not t.set_layout_metadata('{"layout": "my-page"}') and t.layout == "single-speaker"
    assert not t.set_layout_metadata("not json") and not t.set_layout_metadata("")
