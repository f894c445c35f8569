"""Errors the engine raises. Every message names the node(s) involved."""
from __future__ import annotations


class LkmediaError(Exception):
    """Base class: an error whose message is fit to show a user as it is."""


class LinkError(LkmediaError):
    """Two nodes cannot be linked (found in Graph.build(), before any frame flows)."""


class BuildError(LkmediaError):
    """A graph cannot be built (cycles, unconnected ports, bad parameters)."""


class NodeError(LkmediaError):
    """A node failed while running. ``scope`` says how far the failure reaches."""

    def __init__(self, node: str, error: BaseException | str, scope: str = "graph") -> None:
        self.node = node
        self.error = error
        self.scope = scope
        super().__init__(f"{node}: {error}")


class GraphError(LkmediaError):
    """The graph ended with failures that reach the whole job."""

    def __init__(self, errors: list[NodeError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))
