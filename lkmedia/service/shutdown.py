"""The last steps of closing a service (egress or ingress), once its jobs have ended:
per-job RPC handlers, then the HTTP endpoints, then the RPC servers and clients, then the
Redis bus they all use. One order for both services, so neither closes the bus under a
server still answering."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class _Closable(Protocol):
    async def close(self) -> None: ...


async def close_service(handlers: dict[str, Any], endpoints: Iterable[Any], rpc: Iterable[_Closable],
                        bus: _Closable) -> None:
    """Close ``handlers`` (and empty the dict), stop ``endpoints`` (None skipped), close
    ``rpc`` in order, then ``bus``."""
    for handler in list(handlers.values()):
        await handler.close()
    handlers.clear()
    for srv in endpoints:
        if srv is not None:
            await srv.stop()
    for r in rpc:
        await r.close()
    await bus.close()
