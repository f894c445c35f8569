"""In-band control items that travel on edges beside media."""
from __future__ import annotations

from dataclasses import dataclass


class _Eos:
    """End of stream: the last item an edge ever carries."""

    __slots__ = ()
    _instance: _Eos | None = None

    def __new__(cls) -> _Eos:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "EOS"

    def __reduce__(self) -> str:
        return "EOS"


EOS = _Eos()


@dataclass(frozen=True, slots=True)
class Gap:
    """Nothing arrives for [start, end) seconds of media time (mute, dropout).

    Mixers fill it with silence, compositors hold the last frame; sinks ignore it.
    """

    start: float
    end: float
    muted: bool = False
