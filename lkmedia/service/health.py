"""The health endpoint the Go egress serves on ``health_port``, and the small HTTP server it runs on.

Go (``cmd/server/http.go``, ``pkg/server/server.go Status``) answers every path and method with
status 200, ``Content-Type: application/json`` and ``{"CpuLoad": <available CPUs>,
"<egress_id>": <request>, ...}`` (``CpuLoad`` is the CPU admission still has free, not a load).
When the status cannot be read it logs and sends 200 with an empty body; so do we.
"""
from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from lkmedia.redact import redact_url

log = logging.getLogger("lkmedia.service.health")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
StatusFn = Callable[[], "Mapping[str, Any] | Awaitable[Mapping[str, Any]]"]


class HttpEndpoint:
    """One aiohttp low-level server answering every path with ``handler``; start/stop drain it."""

    def __init__(self, port: int, handler: Handler, *, host: str | None = None, name: str = "http") -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"{name} port must be 0-65535, got {port}")
        self._port, self._host, self._name, self._handler = port, host, name, handler
        self._runner: web.ServerRunner | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with 0, which tests use)."""
        if self._runner is None or not self._runner.addresses:
            return self._port
        return int(self._runner.addresses[0][1])

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.ServerRunner(web.Server(self._handler, access_log=None), shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port, reuse_address=True).start()
        except OSError as e:
            await runner.cleanup()
            msg = f"{self._name}: cannot listen on port {self._port}: {e.strerror}"
            raise OSError(e.errno, msg) from None
        self._runner = runner
        log.info("%s listening on port %d", self._name, self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()  # closes the listener and waits for requests in flight

    async def __aenter__(self) -> HttpEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class HealthServer(HttpEndpoint):
    """``health_port``: the Go egress's status JSON, from ``status()`` (sync or async)."""

    def __init__(self, port: int, status: StatusFn, *, host: str | None = None) -> None:
        super().__init__(port, self._serve, host=host, name="health")
        self._status = status

    async def _serve(self, request: web.BaseRequest) -> web.Response:
        try:
            result = self._status()
            if inspect.isawaitable(result):
                result = await result
            body = json.dumps(result, separators=(",", ":")).encode()
        except Exception:
            log.exception("health: failed to read status")
            body = b""
        return web.Response(body=body, status=200, content_type="application/json")


_ONEOF_KEYS = {"room_composite": "RoomComposite", "web": "Web", "participant": "Participant",
               "track_composite": "TrackComposite", "track": "Track", "egress": "Egress", "replay": "Replay"}
_CAMEL = re.compile(r"_([a-z0-9])")


def request_json(kind: str, request: Message | Mapping[str, Any]) -> dict[str, Any]:
    """One active request as Go's ``encoding/json`` writes the ``StartEgressRequest`` oneof:
    ``{"RoomComposite": {"room_name": ..., ...}}`` (proto field names, enums as numbers, unset
    fields left out). ``kind`` is the oneof field name, e.g. ``"room_composite"``.

    The Go egress serves requests as they are, credentials included; we blank the known secret
    fields and redact stream URLs (their keys)."""
    key = _ONEOF_KEYS.get(kind) or _CAMEL.sub(lambda m: m.group(1).upper(), kind[:1].upper() + kind[1:])
    if isinstance(request, Message):
        body: Any = MessageToDict(request, preserving_proto_field_name=True, use_integers_for_enums=True)
    else:
        body = dict(request)
    return {key: _blank_secrets(body)}


_SECRET_FIELDS = {"secret", "session_token", "account_key", "credentials", "password", "signing_key",
                  "stream_key", "access_key", "token"}


_URL_FIELDS = {"url", "urls", "websocket_url"}


def _blank_secrets(v: Any) -> Any:
    if isinstance(v, dict):
        out: dict[str, Any] = {}
        for k, x in v.items():
            if k in _SECRET_FIELDS and x:
                out[k] = ""
            elif k in _URL_FIELDS:  # stream keys and tokens ride in these URLs
                out[k] = [redact_url(u) for u in x] if isinstance(x, list) else redact_url(str(x))
            else:
                out[k] = _blank_secrets(x)
        return out
    if isinstance(v, list):
        return [_blank_secrets(x) for x in v]
    return v


def status_body(available_cpu: float, active: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The whole health JSON: ``CpuLoad`` first, then one key per active egress."""
    out: dict[str, Any] = {"CpuLoad": available_cpu}
    out.update(active)
    return out
