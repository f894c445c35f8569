"""Nodes and their ports.

A node declares input and output ports. Output ports fan out to any number of edges;
an input port has exactly one edge. Frames and packets are PyAV objects, passed as they
are: a node never mutates an item it received (a packet sent down several edges is
cloned for each extra edge, see OutputPort.emit).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import av

from .caps import Caps
from .edge import Edge, Policy
from .errors import LinkError
from .events import EOS

if TYPE_CHECKING:
    from .graph import Graph

log = logging.getLogger("lkmedia.node")


def clone_packet(p: av.Packet[Any]) -> av.Packet[Any]:
    """A new packet sharing ``p``'s data (no copy) with its own timestamps and stream."""
    q: av.Packet[Any] = av.Packet(p)  # type: ignore[arg-type]  # (PyAV takes a buffer; its stub says bytes)
    q.pts = p.pts
    q.dts = p.dts
    q.duration = p.duration
    q.time_base = p.time_base
    q.is_keyframe = p.is_keyframe
    s = p.stream
    if s is not None:
        q.stream = s
    return q


class OutputPort:
    __slots__ = ("caps", "edges", "emitted", "name", "node")

    def __init__(self, node: Node, name: str, caps: Caps | None = None) -> None:
        self.node = node
        self.name = name
        self.caps = caps
        self.edges: list[Edge] = []
        self.emitted = 0

    def __repr__(self) -> str:
        return f"{self.node.name}.{self.name}"

    @property
    def live(self) -> bool:
        """True while at least one consumer still takes items."""
        return any(not e.closed for e in self.edges)

    async def emit(self, item: Any) -> None:
        self.emitted += 1
        edges = self.edges
        if len(edges) == 1:
            await edges[0].put(item)
            return
        first = True
        for e in edges:
            if e.closed:
                continue
            if first or not isinstance(item, av.Packet):
                await e.put(item)
                first = False
            else:
                await e.put(clone_packet(item))

    def emit_nowait(self, item: Any) -> None:
        first = True
        for e in self.edges:
            if first or not isinstance(item, av.Packet):
                e.put_nowait(item)
                first = False
            else:
                e.put_nowait(clone_packet(item))

    async def eos(self) -> None:
        for e in self.edges:
            await e.put(EOS)


class InputPort:
    __slots__ = ("accepts", "capacity", "edge", "eos", "meta", "name", "node", "policy")

    def __init__(
        self,
        node: Node,
        name: str,
        accepts: Callable[[Caps], str | None] | None = None,
        policy: Policy = Policy.BLOCK,
        capacity: int = 8,
    ) -> None:
        self.node = node
        self.name = name
        self.accepts = accepts
        self.edge: Edge | None = None
        self.policy = policy
        self.capacity = capacity
        self.eos = False
        self.meta: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"{self.node.name}.{self.name}"

    @property
    def caps(self) -> Caps | None:
        return self.edge.src.caps if self.edge is not None and self.edge.src is not None else None

    @property
    def upstream(self) -> OutputPort | None:
        return self.edge.src if self.edge is not None else None

    @property
    def pending(self) -> int:
        """Items queued on its edge."""
        return len(self.edge) if self.edge is not None else 0

    async def get(self) -> Any:
        if self.edge is None or self.eos:
            return EOS
        item = await self.edge.get()
        if item is EOS:
            self.eos = True
        return item

    def get_nowait(self) -> Any:
        """The next item, or None if none is queued."""
        if self.edge is None or self.eos:
            return EOS
        item = self.edge.get_nowait()
        if item is EOS:
            self.eos = True
        return item

    def close(self) -> None:
        if self.edge is not None:
            self.edge.close()


class Node:
    """Base class of every node.

    Subclasses declare ports in ``__init__`` and implement ``async run()``. Codec and
    container work goes through ``await self.offload(fn, ...)``, which runs on this
    node's own worker thread so that order holds and the event loop stays free.
    """

    #: "graph": a failure here fails the job. "branch": it ends this node and what
    #: only it feeds (an RTMP destination beside a file recording).
    error_scope = "graph"
    #: Links to this node create a new input port each (muxers, mixers, compositors).
    dynamic_inputs = False

    _counter = 0

    def __init__(self, name: str | None = None) -> None:
        if name is None:
            Node._counter += 1
            name = f"{type(self).__name__.lower()}{Node._counter}"
        self.name = name
        self.inputs: dict[str, InputPort] = {}
        self.outputs: dict[str, OutputPort] = {}
        self.graph: Graph | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.failed: BaseException | None = None
        self.finished = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # -- ports -----------------------------------------------------------
    def add_input(
        self,
        name: str = "in",
        accepts: Callable[[Caps], str | None] | None = None,
        policy: Policy = Policy.BLOCK,
        capacity: int = 8,
    ) -> InputPort:
        if name in self.inputs:
            raise LinkError(f"{self.name}: input {name!r} exists already")
        port = InputPort(self, name, accepts, policy, capacity)
        self.inputs[name] = port
        return port

    def add_output(self, name: str = "out", caps: Caps | None = None) -> OutputPort:
        if name in self.outputs:
            raise LinkError(f"{self.name}: output {name!r} exists already")
        port = OutputPort(self, name, caps)
        self.outputs[name] = port
        return port

    def new_input(self, src: OutputPort) -> InputPort:
        """Create the input port a link from ``src`` lands on (dynamic_inputs nodes)."""
        return self.add_input(f"in{len(self.inputs)}", self.accept_input)

    def accept_input(self, caps: Caps) -> str | None:
        """For dynamic inputs: None if ``caps`` can be taken, else why not."""
        return None

    def input_added(self, port: InputPort) -> None:
        """Called when a link lands on this node while the graph runs."""

    def out(self, name: str | None = None) -> OutputPort:
        if name is None:
            if len(self.outputs) != 1:
                raise LinkError(
                    f"{self.name} has outputs {sorted(self.outputs)}: name the one to link"
                )
            return next(iter(self.outputs.values()))
        try:
            return self.outputs[name]
        except KeyError:
            raise LinkError(f"{self.name} has no output {name!r} (has {sorted(self.outputs)})") from None

    def inp(self, name: str | None = None) -> InputPort:
        if name is None:
            free = [p for p in self.inputs.values() if p.edge is None]
            if len(free) != 1:
                raise LinkError(f"{self.name} has free inputs {[p.name for p in free]}: name the one to link")
            return free[0]
        try:
            return self.inputs[name]
        except KeyError:
            raise LinkError(f"{self.name} has no input {name!r} (has {sorted(self.inputs)})") from None

    # -- build -----------------------------------------------------------
    def negotiate(self) -> None:
        """Check the caps arriving on inputs and set the caps of outputs.

        Called in topological order by Graph.build(). Raise LinkError naming both ends.
        The default checks each input's ``accepts`` and leaves outputs as they are.
        """
        for port in self.inputs.values():
            check_port(port)

    async def setup(self) -> None:
        """Open resources before media flows (called by Graph.start)."""

    # -- run -------------------------------------------------------------
    async def run(self) -> None:
        raise NotImplementedError

    def request_stop(self) -> None:
        """Ask a source to end its stream (it then sends EOS). Non-sources ignore it."""

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"lkm-{self.name}"
            )
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def emit(self, item: Any, port: str = "out") -> None:
        await self.outputs[port].emit(item)

    async def eos_all(self) -> None:
        for p in self.outputs.values():
            await p.eos()

    def close_inputs(self) -> None:
        for p in self.inputs.values():
            p.close()

    def shutdown_executor(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def stats(self) -> dict[str, Any]:
        """Progress figures for the CLI and metrics (override to add more)."""
        return {}

    def report(self, event: str, **fields: Any) -> None:
        """Tell the graph's listeners something (a destination reconnected, ...)."""
        if self.graph is not None:
            self.graph.notify(self, event, fields)


async def get_any(ports: list[InputPort], start: int = 0) -> tuple[InputPort, Any]:
    """The next item from whichever of ``ports`` has one (round robin from ``start``).
    Ports at EOS must be removed by the caller once their EOS has been returned."""
    n = len(ports)
    while True:
        for k in range(n):
            p = ports[(start + k) % n]
            item = p.get_nowait()
            if item is not None:
                return p, item
        fut = asyncio.get_running_loop().create_future()
        edges = [p.edge for p in ports if p.edge is not None]
        for e in edges:
            e._getter = fut
        try:
            await fut
        finally:
            for e in edges:
                if e._getter is fut:
                    e._getter = None


class InputWaiter:
    """Sleep until an item arrives on one of some input ports, or ``poke()`` (an input
    joined, stop was asked), or a timeout. For aggregators whose inputs come and go."""

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] | None = None

    def poke(self) -> None:
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)

    async def wait(self, ports: list[InputPort], timeout: float | None = None) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._fut = fut
        edges = [p.edge for p in ports if p.edge is not None]
        for e in edges:
            if len(e):
                fut.set_result(None)
                break
            e._getter = fut  # the wake-up hook get_any uses too
        try:
            if not fut.done():
                if timeout is None:
                    await fut
                else:
                    await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._fut = None
            for e in edges:
                if e._getter is fut:
                    e._getter = None


def check_port(port: InputPort) -> None:
    caps = port.caps
    if port.accepts is None or caps is None:
        return
    why = port.accepts(caps)
    if why:
        raise LinkError(f"cannot link {port.upstream!r} -> {port!r}: {why}")


class Processor(Node):
    """One input, one output: ``process(item)`` returns the items to emit.

    With ``threaded = True`` the work runs on the node's worker thread, taking every
    item already queued in one hop so that small items do not pay a thread hop each.
    """

    threaded = False
    batch_max = 16

    def __init__(self, name: str | None = None, policy: Policy = Policy.BLOCK, capacity: int = 8) -> None:
        super().__init__(name)
        self.add_input("in", self.accept, policy, capacity)
        self.add_output("out")

    def accept(self, caps: Caps) -> str | None:
        return None

    def process(self, item: Any) -> Iterable[Any]:
        return (item,)

    def flush(self) -> Iterable[Any]:
        return ()

    def _process_batch(self, batch: list[Any]) -> list[Any]:
        out: list[Any] = []
        for item in batch:
            out.extend(self.process(item))
        return out

    async def run(self) -> None:
        inp = self.inputs["in"]
        out = self.outputs["out"]
        if not self.threaded:
            while True:
                item = await inp.get()
                if item is EOS:
                    break
                for r in self.process(item):
                    await out.emit(r)
            for r in self.flush():
                await out.emit(r)
        else:
            done = False
            while not done:
                item = await inp.get()
                if item is EOS:
                    break
                batch = [item]
                while len(batch) < self.batch_max:
                    nxt = inp.get_nowait()
                    if nxt is None:
                        break
                    if nxt is EOS:
                        done = True
                        break
                    batch.append(nxt)
                for r in await self.offload(self._process_batch, batch):
                    await out.emit(r)
            for r in await self.offload(lambda: list(self.flush())):
                await out.emit(r)
        await out.eos()


class Source(Node):
    """A node with no inputs. ``run()`` produces until its media ends or until
    ``request_stop()``; then it returns and the graph sends EOS on its outputs."""

    live = False

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self._stop_requested = False
        self._stop_event: asyncio.Event | None = None

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def request_stop(self) -> None:
        self._stop_requested = True
        if self._stop_event is not None:
            self._stop_event.set()

    async def wait_stop(self, timeout: float | None = None, *, deadline: float | None = None) -> bool:
        """Sleep until stop is requested (True) or ``timeout`` passes, or the loop's clock
        reaches ``deadline`` (False)."""
        if self._stop_requested:
            return True
        if self._stop_event is None:
            self._stop_event = asyncio.Event()
        try:
            # asyncio.timeout, not wait_for: on 3.11 a cancel meeting wait_for's timeout
            # comes out as TimeoutError, and a caller's loop would go on after cancel().
            async with asyncio.timeout(timeout) if deadline is None else asyncio.timeout_at(deadline):
                await self._stop_event.wait()
            return True
        except TimeoutError:
            return False


class Sink(Node):
    """A node with inputs only. Subclasses set ``result`` to what they wrote (a typed
    result of their own: lkmedia.sinks.results)."""

    error_scope = "branch"
    dynamic_inputs = True

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.result: Any = None
