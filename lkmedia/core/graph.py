"""The graph: nodes, links, build-time checks, running, stopping and error scope."""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .clock import Clock, sleep_to_tick
from .edge import Edge, Policy
from .errors import BuildError, GraphError, LinkError, LkmediaError, NodeError
from .node import InputPort, Node, OutputPort, Sink, Source, check_port

log = logging.getLogger("lkmedia.graph")

Listener = Callable[[Node, str, dict[str, Any]], None]
Endpoint = Node | OutputPort | InputPort


class Graph:
    """A set of nodes joined by bounded edges.

    ``build()`` checks the whole graph before any frame flows. ``run()`` returns when
    every node has finished (media ended, or ``stop()`` drained it). A node's failure
    reaches as far as its ``error_scope``: "branch" ends it and what only it feeds;
    "graph" stops the sources too, so that every sink still drains and finalises.

    A frozen pipeline fails the graph: a node that takes nothing from a full input for
    ``freeze_timeout`` seconds (None: not watched) is cancelled, and so is one still
    running ``stop_timeout`` seconds after ``stop()``; the rest drains and finalises.
    """

    def __init__(self, stop_timeout: float = 30.0, freeze_timeout: float | None = None) -> None:
        self.nodes: dict[str, Node] = {}
        self.edges: list[Edge] = []
        self.clock = Clock()
        self.stop_timeout = stop_timeout
        self.freeze_timeout = freeze_timeout
        self._watch: asyncio.Task[None] | None = None
        self.errors: list[NodeError] = []
        self._listeners: list[Listener] = []
        self._tasks: dict[Node, asyncio.Task[None]] = {}
        self._built = False
        self._started = False
        self._stopping = False
        self._done: asyncio.Event | None = None

    # -- assembling ------------------------------------------------------
    def add(self, node: Node) -> Node:
        if node.name in self.nodes and self.nodes[node.name] is not node:
            raise BuildError(f"two nodes are named {node.name!r}")
        self.nodes[node.name] = node
        node.graph = self
        if self._started and node not in self._tasks:
            self._start_node(node)
        return node

    def link(
        self,
        src: Endpoint,
        dst: Endpoint,
        capacity: int | None = None,
        policy: Policy | str | None = None,
    ) -> Edge:
        """Join an output to an input. A node stands for its only output/free input;
        a node with dynamic inputs gets a new input port for each link."""
        out = src.out() if isinstance(src, Node) else src
        if not isinstance(out, OutputPort):
            raise LinkError(f"{src!r} is not an output")
        for n in (out.node, dst if isinstance(dst, Node) else dst.node):
            if n.name not in self.nodes:
                self.add(n)
        inp: InputPort | OutputPort
        if isinstance(dst, Node):
            inp = dst.new_input(out) if dst.dynamic_inputs else dst.inp()
        else:
            inp = dst
        if not isinstance(inp, InputPort):
            raise LinkError(f"{dst!r} is not an input")
        if inp.edge is not None:
            raise LinkError(f"cannot link {out!r} -> {inp!r}: {inp!r} is linked to {inp.upstream!r} already")
        edge = Edge(
            out,
            inp,
            capacity if capacity is not None else inp.capacity,
            Policy(policy) if policy is not None else inp.policy,
        )
        out.edges.append(edge)
        inp.edge = edge
        self.edges.append(edge)
        if self._started:
            # A link made while running (a participant joined): check it now.
            check_port(inp)
            inp.node.input_added(inp)
        return edge

    def chain(self, *nodes: Endpoint, **kw: Any) -> None:
        """Link each endpoint to the next: ``g.chain(src, enc, sink)``."""
        for a, b in zip(nodes, nodes[1:]):
            self.link(a if not isinstance(a, InputPort) else a.node, b, **kw)

    def listen(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def notify(self, node: Node, event: str, fields: dict[str, Any]) -> None:
        for fn in self._listeners:
            try:
                fn(node, event, fields)
            except Exception:  # a listener must not break the graph
                log.exception("event listener failed")

    # -- build -----------------------------------------------------------
    def topo_order(self) -> list[Node]:
        indeg = {n: 0 for n in self.nodes.values()}
        for e in self.edges:
            indeg[e.dst.node] += 1  # type: ignore[union-attr]
        ready = deque(n for n, d in indeg.items() if d == 0)
        order: list[Node] = []
        while ready:
            n = ready.popleft()
            order.append(n)
            for p in n.outputs.values():
                for e in p.edges:
                    m = e.dst.node  # type: ignore[union-attr]
                    indeg[m] -= 1
                    if indeg[m] == 0:
                        ready.append(m)
        if len(order) != len(self.nodes):
            stuck = sorted(n.name for n, d in indeg.items() if d > 0)
            raise BuildError(f"the graph has a cycle through {', '.join(stuck)}")
        return order

    def build(self) -> Graph:
        if not self.nodes:
            raise BuildError("the graph has no nodes")
        order = self.topo_order()
        for n in order:
            for p in n.inputs.values():
                if p.edge is None and not n.dynamic_inputs:
                    raise BuildError(f"input {p!r} is not linked")
            if isinstance(n, Sink) and not n.inputs:
                raise BuildError(f"sink {n.name} has nothing linked to it")
            if n.outputs and not any(p.edges for p in n.outputs.values()):
                raise BuildError(f"{n.name} feeds nothing: link its output to a sink")
            n.negotiate()
        self._built = True
        return self

    # -- running ---------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        if not self._built:
            self.build()
        self._done = asyncio.Event()
        order = self.topo_order()
        for n in reversed(order):  # sinks first, so that they are ready for media
            try:
                await n.setup()
            except Exception as e:
                for m in order:
                    m.shutdown_executor()
                raise NodeError(n.name, e, n.error_scope) from e
        self.clock.start()
        self._started = True
        for n in reversed(order):
            self._start_node(n)
        if self.freeze_timeout:
            self._watch = asyncio.get_running_loop().create_task(self._watch_inputs(self.freeze_timeout),
                                                                 name="lkmedia:freeze-watch")

    def _start_node(self, node: Node) -> None:
        self._tasks[node] = asyncio.get_running_loop().create_task(
            self._run_node(node), name=f"lkmedia:{node.name}"
        )

    async def _run_node(self, node: Node) -> None:
        try:
            await node.run()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            node.failed = e
            err = NodeError(node.name, e, node.error_scope)
            self.errors.append(err)
            log.error("node failed: %s", err, exc_info=not isinstance(e, (OSError, ValueError, LkmediaError)))
            self.notify(node, "failed", {"error": str(e), "scope": node.error_scope})
            if node.error_scope == "graph":
                self.request_stop()
        finally:
            node.finished = True
            node.close_inputs()
            node.shutdown_executor()
            try:
                await asyncio.shield(node.eos_all())
            except asyncio.CancelledError:
                pass
            self._prune_upstream(node)
            self._check_done()

    def _prune_upstream(self, node: Node) -> None:
        """Nodes that now feed nobody stop too (a failed RTMP branch frees its encoder)."""
        for p in node.inputs.values():
            up = p.upstream
            if up is None:
                continue
            u = up.node
            if u.finished or any(o.live for o in u.outputs.values()):
                continue
            if isinstance(u, Source):
                u.request_stop()
            else:
                u.close_inputs()
                self._prune_upstream(u)

    async def _watch_inputs(self, timeout: float) -> None:
        """Fail a node that has taken nothing from a full input for ``timeout`` seconds,
        unless it is itself waiting on a full output (then what it feeds is the stuck one)."""
        step = min(1.0, timeout / 4)
        seen: dict[Edge, tuple[int, float]] = {}  # edge -> (items passed, since when)
        while True:
            # (in a wake-up the process has anyway: clock.tick; the instants themselves are
            # the times compared, so that 4 steps are 4 steps, not 3.9999 after a late wake)
            now = await sleep_to_tick(step)
            for e in list(self.edges):
                node = e.dst.node if e.dst is not None else None
                if node is None or node.finished or e.closed or len(e) < e.capacity or _blocked(node):
                    seen.pop(e, None)
                    continue
                passed, since = seen.get(e, (-1, now))
                if passed != e.passed:
                    seen[e] = (e.passed, now)
                elif now - since >= timeout:
                    self.freeze(node, f"took no input for {now - since:.0f} s")
                    seen.pop(e, None)

    def freeze(self, node: Node, why: str) -> None:
        """``node`` is stuck: the pipeline is frozen. It is cancelled and the graph fails
        ("pipeline frozen", naming it); every other output drains and finalises."""
        if node.finished:
            return
        err = NodeError(node.name, f"pipeline frozen: {why}", "graph")
        node.failed = err
        self.errors.append(err)
        log.error("%s", err)
        self.notify(node, "frozen", {"error": str(err)})
        node.close_inputs()  # what feeds it goes on at once (its own task may take a while to end)
        task = self._tasks.get(node)
        if task is not None and not task.done():
            task.cancel()
        self.request_stop()

    def _check_done(self) -> None:
        if self._done is not None and all(t.done() or n.finished for n, t in self._tasks.items()):
            self._done.set()
            if self._watch is not None:
                self._watch.cancel()
        elif all(n.finished for n in self.nodes.values() if isinstance(n, Sink)) and any(
            isinstance(n, Sink) for n in self.nodes.values()
        ):
            self.request_stop()

    def request_stop(self) -> None:
        """Ask every source to end; the rest of the graph drains behind them."""
        for n in self.nodes.values():
            if not n.finished:
                n.request_stop()

    async def wait(self) -> list[NodeError]:
        """Wait for every node; raise GraphError if a graph-scoped node failed."""
        assert self._done is not None, "graph not started"
        while not self._done.is_set():
            await self._done.wait()
            # Nodes added while running have tasks too.
            self._check_done()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        fatal = [e for e in self.errors if e.scope == "graph"]
        if fatal:
            raise GraphError(fatal)
        return list(self.errors)

    async def run(self) -> list[NodeError]:
        """Start, then wait until every node has finished. Returns branch errors."""
        await self.start()
        return await self.wait()

    async def stop(self, timeout: float | None = None) -> list[NodeError]:
        """Drain: sources end, EOS flows, every sink finalises. A watchdog cancels what
        has not finished after ``timeout`` seconds and reports it."""
        if not self._started:
            return []
        self._stopping = True
        self.request_stop()
        timeout = self.stop_timeout if timeout is None else timeout
        pending = [t for t in self._tasks.values() if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                await self._watchdog(still, timeout)
        try:
            return await self.wait()
        finally:
            self._stopping = False

    async def _watchdog(self, still: set[asyncio.Task[None]], timeout: float) -> None:
        """Nodes still running ``timeout`` s after stop: the pipeline is frozen. Those that
        take nothing from a full input are cancelled first, so that the rest can drain
        behind them; what is still running a little later is cancelled too."""
        why = f"it did not finish within {timeout:g} s of stop"
        late = [n for n, t in self._tasks.items() if t in still]
        stuck = [n for n in late if any(p.edge is not None and len(p.edge) >= p.edge.capacity
                                        for p in n.inputs.values())]
        for n in stuck:
            self.freeze(n, why)
        if stuck:
            rest = [t for t in still if not t.done()]
            if rest:
                await asyncio.wait(rest, timeout=min(timeout, 5.0))
        left = sorted(n.name for n, t in self._tasks.items() if t in still and not t.done() and n not in stuck)
        for name in left:
            self.errors.append(NodeError(name, f"pipeline frozen: {why}", "graph"))
        if left:
            log.error("watchdog cancelled %s", ", ".join(left))
        await self.cancel()

    async def cancel(self) -> None:
        """Hard stop: cancel every node now. Fragmented outputs stay playable."""
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        for t in self._tasks.values():
            if not t.done():
                t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for n in self.nodes.values():
            n.finished = True
        if self._done is not None:
            self._done.set()

    # -- observation -----------------------------------------------------
    @property
    def started(self) -> bool:
        return self._started

    @property
    def finished(self) -> bool:
        """Every node has ended (or the graph was cancelled)."""
        return self._done is not None and self._done.is_set()

    def sinks(self) -> Iterable[Sink]:
        return (n for n in self.nodes.values() if isinstance(n, Sink))

    def stats(self) -> dict[str, dict[str, Any]]:
        return {name: n.stats() for name, n in self.nodes.items()}

    async def __aenter__(self) -> Graph:
        return self

    async def __aexit__(self, et: Any, ev: Any, tb: Any) -> None:
        if self._started and not self.finished:
            if et is None:
                await self.stop()
            else:
                await self.cancel()


def _blocked(node: Node) -> bool:
    """``node`` waits to put into a full edge: it is held up by what it feeds."""
    return any(not e.closed and len(e) >= e.capacity for p in node.outputs.values() for e in p.edges)
