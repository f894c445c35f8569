"""The engine: Graph, Node, bounded Edge, Clock, in-band events and errors.

It imports neither livekit nor redis; everything else in lkmedia is built on it.
"""
from .caps import Caps
from .clock import Clock
from .edge import Edge, Policy
from .errors import BuildError, GraphError, LinkError, LkmediaError, NodeError
from .events import EOS, Gap
from .graph import Graph
from .node import InputPort, InputWaiter, Node, OutputPort, Processor, Sink, Source, clone_packet, get_any

__all__ = [
    "EOS",
    "BuildError",
    "Caps",
    "Clock",
    "Edge",
    "Gap",
    "Graph",
    "GraphError",
    "InputPort",
    "InputWaiter",
    "LinkError",
    "LkmediaError",
    "Node",
    "NodeError",
    "OutputPort",
    "Policy",
    "Processor",
    "Sink",
    "Source",
    "clone_packet",
    "get_any",
]
