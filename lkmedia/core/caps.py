"""What an edge carries, known at build time, so impossible links fail in Graph.build()."""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any


@dataclass(frozen=True, slots=True)
class Caps:
    """Capabilities of an output port.

    media: "video" or "audio". encoded: True for av.Packet edges, False for av frames.
    codec: codec name for encoded edges ("h264", "aac", "opus", "vp8", ...), None for raw.
    The remaining fields are None when unknown until media flows.
    """

    media: str
    encoded: bool = False
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: Fraction | None = None
    pix_fmt: str | None = None
    sample_rate: int | None = None
    layout: str | None = None
    sample_fmt: str | None = None

    def with_(self, **kw: Any) -> Caps:
        return replace(self, **kw)

    def describe(self) -> str:
        if self.encoded:
            return f"encoded {self.media} ({self.codec or 'any codec'})"
        parts = [f"raw {self.media}"]
        if self.media == "video" and self.width:
            parts.append(f"{self.width}x{self.height}")
        if self.media == "audio" and self.sample_rate:
            parts.append(f"{self.sample_rate} Hz {self.layout or ''}".strip())
        return " ".join(parts)


def video(**kw: Any) -> Caps:
    return Caps("video", **kw)


def audio(**kw: Any) -> Caps:
    return Caps("audio", **kw)
