"""The Go ingress's health endpoint and Prometheus series (``pkg/service/service.go``
handlers, ``pkg/stats/monitor.go``), same names and labels.

Health, on ``health_port``: ``/`` answers 200 "Healthy"; ``/availability`` 200 "Available" when
the node can take a session of the costliest input, else 503 (the Go handler writes the 503
and then tries a 200 too; here a refused node answers 503 only).

Metrics, on ``prometheus_port``, const label ``node_id``: ``livekit_ingress_available`` (1/0, read
at scrape time), ``livekit_ingress_requests{type,transcoding}`` (live RTMP and WHIP sessions, as
Go counts them) and ``livekit_node_cpu_load{node_type="INGRESS"}`` (0..1).
"""
from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from .health import HttpEndpoint
from .metrics import PromPage

Probe = Callable[[], bool]


class IngressMetrics(PromPage):
    """The series, and the worker core's WorkerMetrics calls (those Go has no series for are no-ops)."""

    def __init__(self, node_id: str, *, can_accept: Probe) -> None:
        super().__init__({"node_id": node_id})
        self.node_id = node_id
        self._gauge("livekit_ingress_available", "").labels(**self._const).set_function(
            lambda: 1.0 if can_accept() else 0.0)
        self.cpu_load = self._gauge("livekit_node_cpu_load", "", ("node_type",)).labels(
            node_type="INGRESS", **self._const)
        self._requests = self._gauge("livekit_ingress_requests", "", ("type", "transcoding"))

    def _request(self, request_type: str, delta: float) -> None:
        kind, _, mode = request_type.partition(":")
        if kind in ("rtmp", "whip"):  # Go counts neither URL pulls nor anything else
            self._requests.labels(type=kind, transcoding="false" if mode == "bypass" else "true",
                                  **self._const).inc(delta)

    # -- lkmedia.worker.worker.WorkerMetrics ------------------------------------------------------
    def request_started(self, request_type: str) -> None:
        self._request(request_type, 1)

    def request_ended(self, request_type: str) -> None:
        self._request(request_type, -1)

    def handler_result(self, request_type: str, result: str) -> None:
        pass

    def calibrated_cost(self, request_type: str, cpu: float) -> None:
        pass

    def queue_state(self, depth: int, oldest_wait: float, capacity_free: float) -> None:
        pass

    def job_usage(self, types: dict[str, str], predicted: dict[str, float], cpu: dict[str, float],
                  memory: dict[str, int]) -> None:
        pass

    def node_usage(self, load: float, rss: int, cgroup: int | None, cpu_ratio: float,
                   memory_ratio: float | None) -> None:
        self.cpu_load.set(load)


class IngressHealth(HttpEndpoint):
    """``health_port``: ``/`` and ``/availability`` as the Go ingress serves them."""

    def __init__(self, port: int, can_accept: Probe, *, host: str | None = None) -> None:
        super().__init__(port, self._serve, host=host, name="health")
        self._can_accept = can_accept

    async def _serve(self, request: web.BaseRequest) -> web.Response:
        if request.path == "/availability":
            if self._can_accept():
                return web.Response(text="Available")
            return web.Response(status=503, text="Not available")
        if request.path in ("/", "/health"):
            return web.Response(text="Healthy")
        return web.Response(status=404, text="404 page not found")
