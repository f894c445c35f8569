"""The Go egress's Prometheus metrics, same names, help and labels, served on ``prometheus_port``.

Names come from livekit/egress ``pkg/stats/monitor_prom.go`` (service), ``pkg/stats/handler.go``
(uploads, backup) and livekit/protocol ``rpc/metrics.go`` (psrpc). Go adds ``node_id`` and
``cluster_id`` as const labels (``node_type`` too on ``livekit_node_cpu_load`` and the psrpc
series). The values live in a private ``CollectorRegistry`` (so tests can make several); the page
is written here rather than by prometheus-client so that it reads as Go's does: counters keep
their Go names (``livekit_egress_pipeline_uploads`` has no ``_total``), no ``_created`` series,
labels sorted by name, numbers formatted like Go's ``strconv 'g'``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lkmedia.service.health import HttpEndpoint

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HANDLER_RESULTS = ("completed", "aborted", "stopped_cpu", "killed_cpu", "killed_oom", "killed_shutdown", "killed_hung",
                   "process_error", "duplicate_identity")
UPLOAD_BUCKETS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 15000, 20000, 30000)
PSRPC_BUCKETS = (10, 50, 100, 300, 500, 1000, 1500, 2000, 5000, 10000)
CLAIM_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 3000)

Probe = Callable[[], bool]


class PromPage:
    """A private registry of one node's series, written as Go's promhttp writes its page.
    ``const``: the const labels every series has (Go's ``ConstLabels``)."""

    def __init__(self, const: dict[str, str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._go_names: dict[str, str] = {}
        self._const = dict(const)

    def render(self) -> bytes:
        """The text page, as Go's promhttp writes it."""
        out: list[str] = []
        for fam in self.registry.collect():
            name = self._go_names.get(fam.name, fam.name)
            samples = [s for s in fam.samples if not s.name.endswith("_created")]
            if fam.type == "histogram":  # Go: buckets, then _sum, then _count, per series
                rank = {"_bucket": 0, "_sum": 1, "_count": 2}
                samples.sort(key=lambda s: rank.get(s.name[len(fam.name):], 3))  # stable within a rank
                series: dict[tuple[tuple[str, str], ...], int] = {}
                for s in samples:
                    series.setdefault(_series_key(s.labels), len(series))
                samples.sort(key=lambda s: series[_series_key(s.labels)])
            if not samples:
                continue
            if fam.documentation:
                out.append(f"# HELP {name} {_escape_help(fam.documentation)}")
            out.append(f"# TYPE {name} {fam.type}")
            for s in samples:
                sname = name if fam.type == "counter" else s.name
                labels = ",".join(f'{k}="{_escape_label(go_float(float(v)) if k == "le" else v)}"'
                                  for k, v in sorted(s.labels.items()))
                out.append(f"{sname}{{{labels}}} {go_float(s.value)}" if labels
                           else f"{sname} {go_float(s.value)}")
        return ("\n".join(out) + "\n").encode()

    def _labels(self, extra: tuple[str, ...], const: bool) -> list[str]:
        names = list(self._const) if const else [k for k in self._const if k == "node_id"]
        return names + list(extra)

    def _gauge(self, name: str, help_: str, extra: tuple[str, ...] = (), const: bool = True) -> Gauge:
        self._go_names[name] = name
        return Gauge(name, help_, self._labels(extra, const), registry=self.registry)

    def _counter(self, name: str, help_: str, extra: tuple[str, ...], const: bool = True) -> Counter:
        family = name[: -len("_total")] if name.endswith("_total") else name
        self._go_names[family] = name
        return Counter(name, help_, self._labels(extra, const), registry=self.registry)

    def _histogram(self, name: str, help_: str, extra: tuple[str, ...], buckets: tuple[float, ...],
                   const: bool = True) -> Histogram:
        self._go_names[name] = name
        return Histogram(name, help_, self._labels(extra, const), registry=self.registry, buckets=buckets)


class EgressMetrics(PromPage):
    """Every egress series, bound to one node. ``is_idle`` / ``can_accept`` / ``is_disabled`` /
    ``is_terminating`` are read at scrape time (Go's GaugeFuncs); the rest is set by the service."""

    def __init__(self, node_id: str, cluster_id: str = "", *, is_idle: Probe, can_accept: Probe,
                 is_disabled: Probe, is_terminating: Probe) -> None:
        super().__init__({"node_id": node_id, "cluster_id": cluster_id})
        self.node_id, self.cluster_id = node_id, cluster_id
        for name, probe in (("available", is_idle), ("can_accept_request", can_accept),
                            ("is_disabled", is_disabled), ("is_terminating", is_terminating)):
            g = self._gauge(f"livekit_egress_{name}", "")
            g.labels(**self._const).set_function(lambda p=probe: 1.0 if p() else 0.0)  # type: ignore[misc]
        self.cpu_load = self._gauge("livekit_node_cpu_load", "", ("node_type",)).labels(
            node_type="EGRESS", **self._const)
        self._requests = self._gauge("livekit_egress_requests", "", ("type",))
        self.cgroup_memory_bytes = self._gauge("livekit_egress_cgroup_memory_bytes",
                                               "Cgroup memory usage in bytes").labels(**self._const)
        self.cgroup_read_success = self._gauge(
            "livekit_egress_cgroup_read_success",
            "Whether cgroup memory read succeeded (1) or failed (0)").labels(**self._const)
        self.proc_rss_bytes = self._gauge("livekit_egress_proc_rss_bytes",
                                          "Per-process RSS sum in bytes").labels(**self._const)
        self.would_reject_cgroup = self._gauge(
            "livekit_egress_would_reject_cgroup",
            "Whether request would be rejected using cgroup mode (1) or not (0)").labels(**self._const)
        self.pulse_sinks = self._gauge("livekit_egress_pulse_sinks",
                                       "Number of egress-owned null-sinks loaded on the pulse daemon"
                                       ).labels(**self._const)
        self._handler_results = self._counter("livekit_egress_handler_results_total",
                                              "Total number of egress handler outcomes, by result",
                                              ("type", "result"))
        self._load_ratio = self._gauge(
            "livekit_load_ratio", "Per-resource utilization ratio (0 = idle, can exceed 1 under overload)", ("type",))
        upload_labels = ("type", "status", "custom_endpoint")
        self._uploads = self._counter(
            "livekit_egress_pipeline_uploads", "Number of uploads per pipeline with type and status labels",
            upload_labels)
        self._upload_ms = self._histogram("livekit_egress_pipline_upload_response_time_ms",  # sic, as in Go
                                          "A histogram of latencies for upload requests in milliseconds.",
                                          upload_labels, UPLOAD_BUCKETS)
        self._backup_writes = self._counter("livekit_egress_backup_storage_writes",
                                            "number of writes to backup storage location by output type",
                                            ("output_type",))
        self._segments_queue = self._gauge("livekit_egress_segments_uploads_channel_size",
                                           "number of segment uploads pending in channel", ("egress_id",))
        self._playlist_queue = self._gauge("livekit_egress_playlist_uploads_channel_size",
                                           "number of playlist updates pending in channel", ("egress_id",))
        self._init_lkmedia()
        self._usage_types: set[str] = set()
        self._init_psrpc()

    def _init_lkmedia(self) -> None:
        # lkmedia's own: autoscaling signals (the start queue is fleet-wide, read from Redis)
        self.queue_depth = self._gauge("lkmedia_egress_queue_depth",
                                       "Start requests waiting in the fleet's queue").labels(**self._const)
        self.queue_oldest_wait = self._gauge("lkmedia_egress_queue_oldest_wait_seconds",
                                             "How long the oldest queued start request has waited"
                                             ).labels(**self._const)
        self.capacity_free = self._gauge("lkmedia_egress_capacity_free_cpu",
                                         "CPU this node can still admit, in cpu_cost units").labels(**self._const)
        # lkmedia's own: what each request type was expected to cost and what it uses
        self._cpu_predicted = self._gauge("lkmedia_egress_cpu_predicted",
                                          "CPUs admission reserves for a running job of this type (its cpu_cost, "
                                          "or its calibrated cost), on average", ("type",))
        self._cpu_actual = self._gauge("lkmedia_egress_cpu_actual",
                                       "CPUs the running jobs of this type use, on average", ("type",))
        self._memory_actual = self._gauge("lkmedia_egress_memory_actual_bytes",
                                          "Memory (RSS) the running jobs of this type use, on average", ("type",))
        self._cpu_calibrated = self._gauge("lkmedia_egress_cpu_calibrated",
                                           "CPUs a job of this type was measured to use on this node "
                                           "(jobs.calibrate)", ("type",))

    # --- service (monitor) ---------------------------------------------------------------------
    def request_started(self, request_type: str) -> None:
        """``livekit_egress_requests{type}`` +1 (room_composite, web, participant, track_composite,
        track, template, media)."""
        self._requests.labels(type=request_type, **self._const).inc()

    def queue_state(self, depth: int, oldest_wait: float, capacity_free: float) -> None:
        self.queue_depth.set(depth)
        self.queue_oldest_wait.set(oldest_wait)
        self.capacity_free.set(capacity_free)

    def job_usage(self, types: dict[str, str], predicted: dict[str, float], cpu: dict[str, float],
                  memory: dict[str, int]) -> None:
        """Per request type, over its running jobs: predicted CPU, measured CPU and memory
        (every argument maps egress id → value). Types with no job running read 0."""
        by_type: dict[str, list[str]] = {}
        for eid, rtype in types.items():
            by_type.setdefault(rtype, []).append(eid)
        for rtype in self._usage_types | set(by_type):
            ids = by_type.get(rtype, [])
            n = len(ids) or 1
            labels = {"type": rtype, **self._const}
            self._cpu_predicted.labels(**labels).set(sum(predicted.get(e, 0.0) for e in ids) / n)
            self._cpu_actual.labels(**labels).set(sum(cpu.get(e, 0.0) for e in ids) / n)
            self._memory_actual.labels(**labels).set(sum(memory.get(e, 0) for e in ids) / n)
        self._usage_types |= set(by_type)

    def calibrated_cost(self, request_type: str, cpu: float) -> None:
        self._cpu_calibrated.labels(type=request_type, **self._const).set(cpu)

    def request_ended(self, request_type: str) -> None:
        self._requests.labels(type=request_type, **self._const).dec()

    def handler_result(self, request_type: str, result: str) -> None:
        if result not in HANDLER_RESULTS:
            raise ValueError(f"handler result must be one of {HANDLER_RESULTS}, got {result!r}")
        self._handler_results.labels(type=request_type, result=result, **self._const).inc()

    def node_usage(self, load: float, rss: int, cgroup: int | None, cpu_ratio: float,
                   memory_ratio: float | None) -> None:
        """Once a second: the node's CPU load, memory, and its use of what it may admit."""
        self.cpu_load.set(load)
        self.proc_rss_bytes.set(rss)
        self.cgroup_read_success.set(0 if cgroup is None else 1)
        if cgroup is not None:
            self.cgroup_memory_bytes.set(cgroup)
        self.load_ratio("cpu", cpu_ratio)
        if memory_ratio is not None:
            self.load_ratio("memory", memory_ratio)

    def load_ratio(self, resource: str, ratio: float) -> None:
        """``livekit_load_ratio{type=cpu|memory|pulse}``: use / configured limit."""
        self._load_ratio.labels(type=resource, **self._const).set(ratio)

    # --- handler (uploads) ---------------------------------------------------------------------
    def upload(self, upload_type: str, status: str, custom_endpoint: bool, elapsed_ms: float) -> None:
        """One upload: type file|manifest|segment|liveplaylist|playlist, status success|4xx|5xx|internal."""
        labels = {"type": upload_type, "status": status,
                  "custom_endpoint": "true" if custom_endpoint else "false"}
        self._uploads.labels(**labels, **self._const).inc()
        self._upload_ms.labels(**labels, **self._const).observe(elapsed_ms)

    def backup_storage_write(self, output_type: str) -> None:
        self._backup_writes.labels(output_type=output_type, **self._const).inc()

    def watch_upload_queues(self, egress_id: str, segments: Callable[[], float],
                            playlists: Callable[[], float]) -> None:
        """Per-egress queue depths, read at scrape time until ``forget_egress``."""
        self._segments_queue.labels(egress_id=egress_id, **self._const).set_function(segments)
        self._playlist_queue.labels(egress_id=egress_id, **self._const).set_function(playlists)

    def forget_egress(self, egress_id: str) -> None:
        for g in (self._segments_queue, self._playlist_queue):
            try:
                g.remove(self.node_id, self.cluster_id, egress_id)
            except KeyError:
                pass

    # --- psrpc ---------------------------------------------------------------------------------
    def _init_psrpc(self) -> None:
        base = ("role", "kind", "service", "method")
        stream = ("role", "service", "method")
        life = ("service", "method")
        const = ("node_type",)
        self._rpc_time = self._histogram("livekit_psrpc_request_time_ms", "", const + base, PSRPC_BUCKETS,
                                         False)
        self._rpc_stream_send = self._histogram("livekit_psrpc_stream_send_time_ms", "", const + stream,
                                                PSRPC_BUCKETS, False)
        self._rpc_stream_rx = self._counter("livekit_psrpc_stream_receive_total", "", const + stream, False)
        self._rpc_stream_count = self._gauge("livekit_psrpc_stream_count", "", const + stream, False)
        self._rpc_errors = self._counter("livekit_psrpc_error_total", "", const + base + ("error_code",),
                                         False)
        self._rpc_bytes = self._counter("livekit_psrpc_bytes_total", "", const + base + ("direction",), False)
        self._rpc_received = self._counter("livekit_psrpc_requests_received_total", "", const + life, False)
        self._rpc_expired = self._counter("livekit_psrpc_requests_expired_total", "", const + life, False)
        self._rpc_claim = self._histogram("livekit_psrpc_claim_wait_time_ms", "", const + life + ("outcome",),
                                          CLAIM_BUCKETS, False)

    def rpc_request(self, role: str, kind: str, service: str, method: str, duration_ms: float, *,
                    error_code: str | None = None, rx_bytes: int = 0, tx_bytes: int = 0) -> None:
        """One finished psrpc call (role client|server, kind rpc|multirpc|stream)."""
        labels = {"node_type": "EGRESS", "node_id": self.node_id, "role": role, "kind": kind,
                  "service": service, "method": method}
        self._rpc_time.labels(**labels).observe(duration_ms)
        if error_code:
            self._rpc_errors.labels(error_code=error_code, **labels).inc()
        self._rpc_bytes.labels(direction="rx", **labels).inc(rx_bytes)
        self._rpc_bytes.labels(direction="tx", **labels).inc(tx_bytes)

    def rpc_received(self, service: str, method: str, *, expired: bool = False) -> None:
        c = self._rpc_expired if expired else self._rpc_received
        c.labels(node_type="EGRESS", node_id=self.node_id, service=service, method=method).inc()

    def rpc_claim(self, service: str, method: str, outcome: str, wait_ms: float) -> None:
        self._rpc_claim.labels(node_type="EGRESS", node_id=self.node_id, service=service, method=method,
                               outcome=outcome).observe(wait_ms)

    # --- exposition ----------------------------------------------------------------------------
class MetricsServer(HttpEndpoint):
    """``prometheus_port``: the page on every path, as Go's promhttp handler (it has no mux)."""

    def __init__(self, metrics: PromPage, port: int, *, host: str | None = None) -> None:
        super().__init__(port, self._serve, host=host, name="prometheus")
        self.metrics = metrics

    async def _serve(self, request: web.BaseRequest) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def go_float(v: float) -> str:
    """``strconv.FormatFloat(v, 'g', -1, 64)`` as Go's text exposition writes: 2 → "2", 1e6 → "1e+06"."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(float(v))).normalize().as_tuple()
    d = "".join(map(str, digits))
    dp = len(d) + int(exponent)  # position of the decimal point within d
    neg = "-" if sign else ""
    exp = dp - 1
    if exp < -4 or exp >= 6:  # Go: shortest 'g' decides with precision 6
        mant = d[0] + ("." + d[1:] if len(d) > 1 else "")
        return f"{neg}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{d}"
    if dp >= len(d):
        return f"{neg}{d}{'0' * (dp - len(d))}"
    return f"{neg}{d[:dp]}.{d[dp:]}"


def _series_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "le"))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
