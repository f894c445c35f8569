"""Bounded edges between nodes. Each edge states what happens when it is full."""
from __future__ import annotations

import asyncio
import enum
from collections import deque
from typing import TYPE_CHECKING, Any

from .events import EOS

if TYPE_CHECKING:
    from .node import InputPort, OutputPort


class Policy(str, enum.Enum):
    """What a full edge does with a new item.

    BLOCK: the producer waits (encoded packets, audio: nothing may be lost).
    DROP_OLDEST: the oldest queued item is dropped (live raw video before encode).
    LATEST: only the newest item is kept (previews, thumbnails); capacity is 1.
    """

    BLOCK = "block"
    DROP_OLDEST = "drop-oldest"
    LATEST = "latest"


class Edge:
    """A bounded single-consumer queue living on the event loop.

    EOS is always accepted, even when full, and is the last item ever delivered.
    A closed edge (its consumer failed or left) swallows what is put into it.
    """

    __slots__ = (
        "_getter",
        "_putters",
        "_q",
        "capacity",
        "closed",
        "dropped",
        "dst",
        "eos_sent",
        "passed",
        "policy",
        "src",
    )

    def __init__(
        self,
        src: OutputPort | None,
        dst: InputPort | None,
        capacity: int = 8,
        policy: Policy = Policy.BLOCK,
    ) -> None:
        if capacity < 1:
            raise ValueError("edge capacity must be at least 1")
        self.src = src
        self.dst = dst
        self.policy = Policy(policy)
        self.capacity = 1 if self.policy is Policy.LATEST else capacity
        self._q: deque[Any] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self.closed = False
        self.eos_sent = False
        self.dropped = 0
        self.passed = 0

    def __len__(self) -> int:
        return len(self._q)

    def __repr__(self) -> str:
        return f"Edge({self.src!r} -> {self.dst!r}, {len(self._q)}/{self.capacity} {self.policy.value})"

    # -- producer side ---------------------------------------------------
    async def put(self, item: Any) -> bool:
        """Queue ``item``; returns False when the edge is closed (item discarded)."""
        if self.closed or self.eos_sent:
            return False
        q = self._q
        if item is EOS:
            self.eos_sent = True
        elif len(q) >= self.capacity:
            if self.policy is Policy.BLOCK:
                while len(q) >= self.capacity and not self.closed:
                    fut = asyncio.get_running_loop().create_future()
                    self._putters.append(fut)
                    try:
                        await fut
                    except asyncio.CancelledError:
                        if fut in self._putters:
                            self._putters.remove(fut)
                        raise
                if self.closed:
                    return False
            else:
                while len(q) >= self.capacity and q[0] is not EOS:
                    q.popleft()
                    self.dropped += 1
        q.append(item)
        g = self._getter
        if g is not None and not g.done():
            g.set_result(None)
        return True

    def put_nowait(self, item: Any) -> bool:
        """Non-blocking put for callbacks; a full BLOCK edge refuses (returns False)."""
        if self.closed or self.eos_sent:
            return False
        q = self._q
        if item is EOS:
            self.eos_sent = True
        elif len(q) >= self.capacity:
            if self.policy is Policy.BLOCK:
                return False
            while len(q) >= self.capacity:
                q.popleft()
                self.dropped += 1
        q.append(item)
        g = self._getter
        if g is not None and not g.done():
            g.set_result(None)
        return True

    # -- consumer side ---------------------------------------------------
    async def get(self) -> Any:
        q = self._q
        while not q:
            if self.closed:
                return EOS
            fut = asyncio.get_running_loop().create_future()
            self._getter = fut
            try:
                await fut
            finally:
                self._getter = None
        item = q.popleft()
        if item is not EOS:
            self.passed += 1
        self._wake_putter()
        return item

    def get_nowait(self) -> Any:
        """The next item, or None when the edge is empty."""
        q = self._q
        if not q:
            return EOS if self.closed else None
        item = q.popleft()
        if item is not EOS:
            self.passed += 1
        self._wake_putter()
        return item

    def _wake_putter(self) -> None:
        while self._putters:
            p = self._putters.popleft()
            if not p.done():
                p.set_result(None)
                break

    def close(self) -> None:
        """The consumer is gone: drop what is queued and release blocked producers."""
        self.closed = True
        self._q.clear()
        for p in self._putters:
            if not p.done():
                p.set_result(None)
        self._putters.clear()
        g = self._getter
        if g is not None and not g.done():
            g.set_result(None)
