"""CPU / memory admission as the Go egress decides it (``pkg/stats/monitor.go``,
``pkg/server/server_rpc.go StartEgressAffinity``), so lkmedia nodes share a cluster with Go ones.

Each request type has a cost in CPUs (``cpu_cost:``; the request's ``estimated_cpu`` wins when
set). An idle node offers all its CPUs; a busy one ``NumCPU * max_cpu_utilization - pending -
used``, where each job counts the larger of its reservation (its type cost, held 15 s after
acceptance) and its measured CPU. The memory check runs only when ``max_memory > 0``. Affinity is
-1 (cannot or disabled), 0.5 (idle: lets busy nodes collect the small track jobs) or 1.

Pure logic: the clock and the measurements are injected. ``ProcSampler`` reads the measurements
from /proc for the service.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lkmedia.service.config import ConfigError, CPUCostConfig

CPU_HOLD_SECONDS = 15.0  # Go cpuHoldDuration
MEMORY_HEADROOM_GB = 1.0
PULSE_CLIENT_HOLD = 4
GB = 1024.0 ** 3
PASSTHROUGH = 8  # livekit.EncodingOptionsPreset.PASSTHROUGH


class AdmissionError(Exception):
    """A refused ``accept``; ``code`` is the psrpc error code the Go egress returns."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class RequestCosts:
    cpu: float
    memory: float  # GB
    is_web: bool  # needs Chrome (and a PulseAudio client)
    request_type: str  # metrics label: room_composite, web, participant, track_composite, track, template, media


@dataclass(frozen=True)
class Decision:
    accept: bool
    reason: str  # "" | "memory" | "pulse clients" | "cpu"
    required: float
    available: float


@dataclass
class _Job:
    costs: RequestCosts
    accepted_at: float
    running: bool = False
    last_cpu: float = 0.0
    total_cpu: float = 0.0
    samples: int = 0
    max_cpu: float = 0.0
    max_memory: int = 0  # bytes


@dataclass(frozen=True)
class JobStats:
    avg_cpu: float
    max_cpu: float
    max_memory: int
    samples: int = 0
    request_type: str = ""  # "" for a job admission never held


def unwrap(request: Any) -> tuple[Any, float]:
    """An rpc ``StartEgressRequest`` with parsed messages in its oneof ``request`` → (inner,
    estimated_cpu); a bare livekit.egress request → (request, 0)."""
    desc = getattr(request, "DESCRIPTOR", None)
    if desc is not None and "request" in desc.oneofs_by_name and "estimated_cpu" in desc.fields_by_name:
        which = request.WhichOneof("request")
        if which is None:
            raise ValueError("StartEgressRequest has no request set")
        inner = getattr(request, which)
        if isinstance(inner, bytes | bytearray):  # our rpc module carries the inner request packed
            raise ValueError("pass the unpacked request (lkmedia.rpc.messages.unpack_start_egress) "
                             "and estimated_cpu")
        return inner, float(request.estimated_cpu)
    return request, 0.0


def _sdk_source(req: Any) -> bool:
    """Go ``ShouldUseSDKSource``: audio only, no layout, no custom base URL (no Chrome)."""
    return bool(req.audio_only) and not req.layout and not req.custom_base_url


def request_costs(c: CPUCostConfig, request: Any) -> RequestCosts:
    """What one request costs, by type (Go ``costsForRequest``)."""
    req, _ = unwrap(request)
    name = req.DESCRIPTOR.name
    mem = c.memory_cost
    if name == "RoomCompositeEgressRequest" or name == "TemplateSource":
        rtype = "room_composite" if name == "RoomCompositeEgressRequest" else "template"
        web = not _sdk_source(req)
        if not req.audio_only:
            return RequestCosts(c.room_composite_cpu_cost, mem, web, rtype)
        if web:
            return RequestCosts(c.audio_room_composite_cpu_cost, mem, True, rtype)
        return RequestCosts(c.sdk_audio_room_composite_cpu_cost, c.sdk_audio_room_composite_memory_cost,
                            False, rtype)
    if name in ("WebEgressRequest", "WebSource"):
        return RequestCosts(c.audio_web_cpu_cost if req.audio_only else c.web_cpu_cost, mem, True, "web")
    if name == "ParticipantEgressRequest":
        return RequestCosts(c.participant_cpu_cost, mem, False, "participant")
    if name == "TrackCompositeEgressRequest":
        return RequestCosts(c.track_composite_cpu_cost, mem, False, "track_composite")
    if name == "TrackEgressRequest":
        return RequestCosts(c.track_cpu_cost, mem, False, "track")
    if name in ("StartEgressRequest", "ExportReplayRequest"):  # v2: the source decides
        passthrough = req.WhichOneof("encoding") == "preset" and req.preset == PASSTHROUGH
        source = req.WhichOneof("source")
        if source in ("template", "web"):
            costs = request_costs(c, getattr(req, source))
            rtype = "track" if passthrough else costs.request_type
            return RequestCosts(costs.cpu, costs.memory, costs.is_web, rtype)
        if source == "media":
            if passthrough:
                return RequestCosts(c.track_cpu_cost, mem, False, "track")
            return RequestCosts(c.participant_cpu_cost, mem, False, "media")
        return RequestCosts(0.0, mem, False, "unknown")  # Go: no cost, unknown type
    raise ValueError(f"not an egress request: {name}")


def check_cpu_costs(c: CPUCostConfig, num_cpus: float) -> list[str]:
    """Go ``validateCPUConfig``: fail if no request type fits this machine; warn if some do not."""
    keys = ("room_composite_cpu_cost", "audio_room_composite_cpu_cost", "sdk_audio_room_composite_cpu_cost",
            "web_cpu_cost", "audio_web_cpu_cost", "participant_cpu_cost", "track_composite_cpu_cost", "track_cpu_cost")
    costs = {k: getattr(c, k) for k in keys}
    low, high = min(costs.values()), max(costs.values())
    if num_cpus < low:
        raise ConfigError(f"cpu_cost: not enough CPU: {num_cpus:g} available, the cheapest request type "
                          f"needs {low:g} (recommended at least {max(high, 3):g})")
    too_big = sorted(k for k, v in costs.items() if v > num_cpus)
    return [f"cpu_cost.{k} = {costs[k]:g} exceeds the {num_cpus:g} CPUs here: never accepted"
            for k in too_big]


class Admission:
    """Accepts or refuses egress requests on this node and reserves what they cost."""

    def __init__(self, costs: CPUCostConfig, *, num_cpus: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 pulse_clients: Callable[[], int] | None = None,
                 learned: Callable[[str], float | None] | None = None) -> None:
        self.costs = costs
        self._learned = learned  # self-calibration: a request type's measured CPU, once known
        self.num_cpus = float(num_cpus if num_cpus is not None else cpu_count())
        self.warnings = check_cpu_costs(costs, self.num_cpus)
        self._clock = clock
        self._pulse_clients = pulse_clients  # None: no Chrome on this node, no PulseAudio limit
        self._jobs: dict[str, _Job] = {}
        self.memory_gb = 0.0  # measured (proc RSS or cgroup working set)

    # --- state ---------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self._jobs)

    def is_idle(self) -> bool:
        return not self._jobs

    def egress_ids(self) -> list[str]:
        return list(self._jobs)

    def _held(self, job: _Job, now: float) -> bool:
        return now - job.accepted_at < CPU_HOLD_SECONDS

    def cpu_usage(self) -> tuple[float, float, float, float]:
        """(total, available, pending, used) in CPUs, as Go ``getCPUUsageLocked``."""
        total = self.num_cpus
        if not self._jobs:
            return total, total, 0.0, 0.0
        now = self._clock()
        pending = used = 0.0
        for job in self._jobs.values():
            share = max(job.costs.cpu if self._held(job, now) else 0.0, job.last_cpu)
            if job.running:
                used += share
            else:
                pending += share
        return total, total * self.costs.max_cpu_utilization - pending - used, pending, used

    def available_cpu(self) -> float:
        """What the health endpoint reports as ``CpuLoad``."""
        return self.cpu_usage()[1]

    # --- decisions -----------------------------------------------------------------------------
    def check(self, request: Any, estimated_cpu: float | None = None) -> Decision:
        """Go ``canAcceptRequestLocked``: memory, then PulseAudio clients (web), then CPU."""
        inner, est = unwrap(request)
        est = est if estimated_cpu is None else estimated_cpu
        costs = self.costs_of(inner)
        _, available, _, _ = self.cpu_usage()
        required = est or costs.cpu
        now = self._clock()
        held = [j for j in self._jobs.values() if self._held(j, now)]
        if self.costs.max_memory > 0:
            pending_mem = sum(j.costs.memory for j in held)
            if self.memory_gb + pending_mem + costs.memory + MEMORY_HEADROOM_GB >= self.costs.max_memory:
                return Decision(False, "memory", required, available)
        if costs.is_web and self._pulse_clients is not None:
            try:
                clients = self._pulse_clients()
            except Exception:
                return Decision(False, "pulse clients", required, available)
            pending_pulse = PULSE_CLIENT_HOLD * sum(1 for j in held if j.costs.is_web)
            if clients + pending_pulse + PULSE_CLIENT_HOLD > self.costs.max_pulse_clients:
                return Decision(False, "pulse clients", required, available)
        accept = available >= required
        return Decision(accept, "" if accept else "cpu", required, available)

    def costs_of(self, request: Any) -> RequestCosts:
        """The request's costs; its type's measured CPU instead of the configured one when
        calibration has measured it."""
        costs = request_costs(self.costs, request)
        learned = self._learned(costs.request_type) if self._learned is not None else None
        if learned is None:
            return costs
        return RequestCosts(learned, costs.memory, costs.is_web, costs.request_type)

    def allowed_cpu(self) -> dict[str, float]:
        """Each job's admitted CPU (what the kill policy compares its use with)."""
        return {eid: job.costs.cpu for eid, job in self._jobs.items()}

    def request_types(self) -> dict[str, str]:
        return {eid: job.costs.request_type for eid, job in self._jobs.items()}

    def affinity(self, request: Any, *, disabled: bool = False, estimated_cpu: float | None = None) -> float:
        """StartEgress affinity: -1 refuse, 0.5 idle, 1 busy with room to spare."""
        if disabled or not self.check(request, estimated_cpu).accept:
            return -1.0
        return 0.5 if not self._jobs else 1.0

    def can_accept_web(self) -> bool:
        """``livekit_egress_can_accept_request`` probes with an empty Web request."""
        from livekit.protocol.egress import WebEgressRequest

        return self.check(WebEgressRequest()).accept

    # --- lifecycle -----------------------------------------------------------------------------
    def accept(self, egress_id: str, request: Any, estimated_cpu: float | None = None) -> RequestCosts:
        """Re-check and reserve (Go ``AcceptRequest``); the reservation is the type cost."""
        if egress_id in self._jobs:
            raise AdmissionError("already_exists", "egress already exists")
        decision = self.check(request, estimated_cpu)
        if not decision.accept:
            raise AdmissionError("unavailable", "not enough CPU" if decision.reason == "cpu"
                                 else f"not enough resources ({decision.reason})")
        costs = self.costs_of(unwrap(request)[0])
        self._jobs[egress_id] = _Job(costs, self._clock())
        return costs

    def started(self, egress_id: str) -> None:
        """The job's process runs: its share now counts as used, not pending (Go ``UpdatePID``)."""
        if (job := self._jobs.get(egress_id)) is not None:
            job.running = True

    def record_usage(self, cpu: Mapping[str, float], memory_gb: float | None = None,
                     memory_by_job: Mapping[str, int] | None = None) -> None:
        """Measurements: CPUs per egress id, and the node's memory in GB (for the memory check)."""
        for egress_id, value in cpu.items():
            if (job := self._jobs.get(egress_id)) is None:
                continue
            job.last_cpu = value
            job.total_cpu += value
            job.samples += 1
            job.max_cpu = max(job.max_cpu, value)
        for egress_id, rss in (memory_by_job or {}).items():
            if (job := self._jobs.get(egress_id)) is not None:
                job.max_memory = max(job.max_memory, rss)
        if memory_gb is not None:
            self.memory_gb = memory_gb

    def ended(self, egress_id: str) -> JobStats:
        """The job is gone (ended or aborted); returns its type, CPU and memory (for the
        logs and calibration)."""
        job = self._jobs.pop(egress_id, None)
        if job is None:
            return JobStats(0.0, 0.0, 0)
        avg = job.total_cpu / job.samples if job.samples else 0.0
        return JobStats(avg, job.max_cpu, job.max_memory, job.samples, job.costs.request_type)


def cpu_count() -> float:
    """CPUs this process may use: the cgroup quota if there is one, else the affinity mask."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(int(quota) / int(period), 0.01)
    except (OSError, ValueError):
        pass
    try:
        quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
        period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        if int(quota) > 0:
            return max(int(quota) / int(period), 0.01)
    except (OSError, ValueError):
        pass
    return float(len(os.sched_getaffinity(0)))


@dataclass
class Sample:
    cpu: dict[str, float]  # CPUs per egress id
    memory_by_job: dict[str, int]  # RSS bytes per egress id
    rss_bytes: int  # this process and every job's processes
    cgroup_bytes: int | None  # cgroup working set, None if unreadable
    node_load: float  # 0..1 over all CPUs (livekit_node_cpu_load)

    def node_memory(self, memory_source: str) -> int:
        """The node's memory in bytes as ``cpu_cost.memory_source`` counts it: the cgroup's
        working set when asked for and readable, else the processes' RSS."""
        if memory_source == "cgroup" and self.cgroup_bytes is not None:
            return self.cgroup_bytes
        return self.rss_bytes


class ProcSampler:
    """Per-job CPU and memory from /proc: a job is its process and all its descendants."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hz = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._last: tuple[float, dict[int, int]] | None = None
        self._last_stat: tuple[int, int] | None = None

    def sample(self, jobs: Mapping[str, int]) -> Sample:
        """``jobs`` maps egress id → the pid of its process."""
        now = self._clock()
        procs = _read_procs()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        ticks = {pid: t for pid, (_, t, _) in procs.items()}
        prev = self._last
        self._last = (now, ticks)
        cpu: dict[str, float] = {}
        mem: dict[str, int] = {}
        rss_total = procs.get(os.getpid(), (0, 0, 0))[2] * self._page
        for egress_id, root in jobs.items():
            tree = _descendants(root, children) if root in procs else []
            mem[egress_id] = sum(procs[p][2] for p in tree) * self._page
            rss_total += mem[egress_id]
            if prev is not None and now > prev[0]:
                used = sum(ticks[p] - prev[1].get(p, ticks[p]) for p in tree)
                cpu[egress_id] = max(used, 0) / self._hz / (now - prev[0])
        return Sample(cpu, mem, rss_total, _cgroup_working_set(), self._node_load())

    def _node_load(self) -> float:
        try:
            with open("/proc/stat") as fh:
                fields = [int(x) for x in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return 0.0
        idle, total = fields[3] + fields[4], sum(fields[:8])
        prev, self._last_stat = self._last_stat, (idle, total)
        if prev is None or total <= prev[1]:
            return 0.0
        return 1.0 - (idle - prev[0]) / (total - prev[1])


def _read_procs() -> dict[int, tuple[int, int, int]]:
    """pid → (ppid, utime+stime ticks, rss pages) for every process we can read."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                text = fh.read()
        except OSError:
            continue  # exited while we looked
        rest = text[text.rfind(")") + 2:].split()  # the command name may contain spaces
        out[int(name)] = (int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[21]))
    return out


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants (a job and the processes it started)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in _read_procs().items():
        children.setdefault(ppid, []).append(pid)
    return _descendants(root, children)


def _descendants(root: int, children: Mapping[int, list[int]]) -> list[int]:
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _cgroup_working_set() -> int | None:
    """cgroup memory minus inactive file cache (what the Go egress's ``cgroup`` source uses)."""
    for usage_file, stat_file, key in (
            ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "inactive_file"),
            ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file")):
        try:
            usage = int(Path(usage_file).read_text())
            stats = dict(line.split() for line in Path(stat_file).read_text().splitlines())
            return max(usage - int(stats.get(key, 0)), 0)
        except (OSError, ValueError):
            continue
    return None
