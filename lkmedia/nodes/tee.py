"""Tee: the named split point of a graph (YAML graphs refer to it by name)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..core import Processor
from ..core.edge import Policy


class Tee(Processor):
    """Passes every item on unchanged; its one output fans out to any number of links
    (OutputPort.emit clones packets for each extra edge, frames are shared read-only)."""

    def __init__(self, name: str | None = None, *, policy: Policy = Policy.BLOCK, capacity: int = 8) -> None:
        super().__init__(name, policy=policy, capacity=capacity)
        self.items = 0

    def negotiate(self) -> None:
        super().negotiate()
        self.outputs["out"].caps = self.inputs["in"].caps

    def process(self, item: Any) -> Iterable[Any]:
        self.items += 1
        return (item,)

    def stats(self) -> dict[str, Any]:
        return {"items": self.items}
