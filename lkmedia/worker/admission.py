"""CPU / memory admission as the Go egress decides it (``pkg/stats/monitor.go``,
``pkg/server/server_rpc.go StartEgressAffinity``), so lkmedia nodes share a cluster with Go ones.

Each job costs CPUs (``Costs``, from its job kind: the configured ``cpu_cost`` of its type, or
the request's own estimate). An idle node offers all its CPUs; a busy one ``NumCPU *
max_cpu_utilization - pending - used``, where each job counts the larger of its reservation
(its cost, held 15 s after acceptance) and its measured CPU. The memory check runs only
when ``max_memory > 0``. Affinity is -1 (cannot or disabled), 0.5 (idle: lets busy nodes
collect the small track jobs) or 1.

Pure logic: the clock and the measurements are injected (lkmedia.worker.sampler reads them).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from .kind import Costs, JobError
from .sampler import cpu_count

CPU_HOLD_SECONDS = 15.0  # Go cpuHoldDuration
MEMORY_HEADROOM_GB = 1.0
PULSE_CLIENT_HOLD = 4
GB = 1024.0 ** 3


class Limits(Protocol):
    """The node-wide limits admission applies (the ``cpu_cost:`` section has them)."""

    max_cpu_utilization: float
    max_memory: float  # GB, 0 = no memory check
    max_pulse_clients: int


class AdmissionError(JobError):
    """A refused ``accept``; ``code`` is the psrpc error code the Go egress returns."""


@dataclass(frozen=True)
class Decision:
    accept: bool
    reason: str  # "" | "memory" | "pulse clients" | "cpu"
    required: float
    available: float


@dataclass
class _Job:
    costs: Costs
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


class Admission:
    """Accepts or refuses jobs on this node and reserves what they cost."""

    def __init__(self, limits: Limits, *, num_cpus: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 pulse_clients: Callable[[], int] | None = None,
                 learned: Callable[[str], float | None] | None = None) -> None:
        self.limits = limits
        self._learned = learned  # self-calibration: a request type's measured CPU, once known
        self.num_cpus = float(num_cpus if num_cpus is not None else cpu_count())
        self._clock = clock
        self._pulse_clients = pulse_clients  # None: no Chrome on this node, no PulseAudio limit
        self._jobs: dict[str, _Job] = {}
        self.memory_gb = 0.0  # measured (proc RSS or cgroup working set)
        self.node_load = 0.0  # measured: the node's CPU use, 0..1 of all its CPUs

    # --- state ---------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self._jobs)

    def is_idle(self) -> bool:
        return not self._jobs

    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def samples(self, job_id: str) -> int:
        """How many measurements of this job's CPU were recorded so far (0: none or gone)."""
        job = self._jobs.get(job_id)
        return job.samples if job is not None else 0

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
        return total, total * self.limits.max_cpu_utilization - pending - used, pending, used

    def available_cpu(self) -> float:
        """What the health endpoint reports as ``CpuLoad``."""
        return self.cpu_usage()[1]

    # --- decisions -----------------------------------------------------------------------------
    def costs_of(self, costs: Costs) -> Costs:
        """``costs`` with its type's measured CPU instead of the configured one once
        calibration has measured it."""
        learned = self._learned(costs.request_type) if self._learned is not None else None
        if learned is None:
            return costs
        return Costs(learned, costs.memory, costs.is_web, costs.request_type, costs.estimated)

    def check(self, costs: Costs) -> Decision:
        """Go ``canAcceptRequestLocked``: memory, then PulseAudio clients (web), then CPU."""
        costs = self.costs_of(costs)
        _, available, _, _ = self.cpu_usage()
        required = costs.estimated or costs.cpu  # Go: the request's estimate, when it has one
        now = self._clock()
        held = [j for j in self._jobs.values() if self._held(j, now)]
        if self.limits.max_memory > 0:
            pending_mem = sum(j.costs.memory for j in held)
            if self.memory_gb + pending_mem + costs.memory + MEMORY_HEADROOM_GB >= self.limits.max_memory:
                return Decision(False, "memory", required, available)
        if costs.is_web and self._pulse_clients is not None:
            try:
                clients = self._pulse_clients()
            except Exception:
                return Decision(False, "pulse clients", required, available)
            pending_pulse = PULSE_CLIENT_HOLD * sum(1 for j in held if j.costs.is_web)
            if clients + pending_pulse + PULSE_CLIENT_HOLD > self.limits.max_pulse_clients:
                return Decision(False, "pulse clients", required, available)
        accept = available >= required
        return Decision(accept, "" if accept else "cpu", required, available)

    def allowed_cpu(self) -> dict[str, float]:
        """Each job's admitted CPU (what the kill policy compares its use with)."""
        return {jid: job.costs.cpu for jid, job in self._jobs.items()}

    def request_types(self) -> dict[str, str]:
        return {jid: job.costs.request_type for jid, job in self._jobs.items()}

    def affinity(self, costs: Costs, *, disabled: bool = False) -> float:
        """StartEgress affinity: -1 refuse, 0.5 idle, 1 busy with room to spare."""
        if disabled or not self.check(costs).accept:
            return -1.0
        return 0.5 if not self._jobs else 1.0

    # --- lifecycle -----------------------------------------------------------------------------
    def accept(self, job_id: str, costs: Costs) -> Costs:
        """Re-check and reserve (Go ``AcceptRequest``); the reservation is the type's cost."""
        if job_id in self._jobs:
            raise AdmissionError("egress already exists", "already_exists")
        decision = self.check(costs)
        if not decision.accept:
            raise AdmissionError("not enough CPU" if decision.reason == "cpu"
                                 else f"not enough resources ({decision.reason})", "unavailable")
        costs = self.costs_of(costs)
        self._jobs[job_id] = _Job(costs, self._clock())
        return costs

    def started(self, job_id: str) -> None:
        """The job's process runs: its share now counts as used, not pending (Go ``UpdatePID``)."""
        if (job := self._jobs.get(job_id)) is not None:
            job.running = True

    def record_usage(self, cpu: Mapping[str, float], memory_gb: float | None = None,
                     memory_by_job: Mapping[str, int] | None = None, node_load: float | None = None) -> None:
        """Measurements: CPUs per job id, the node's memory in GB (for the memory check) and
        its CPU load (0..1)."""
        if node_load is not None:
            self.node_load = node_load
        for job_id, value in cpu.items():
            if (job := self._jobs.get(job_id)) is None:
                continue
            job.last_cpu = value
            job.total_cpu += value
            job.samples += 1
            job.max_cpu = max(job.max_cpu, value)
        for job_id, rss in (memory_by_job or {}).items():
            if (job := self._jobs.get(job_id)) is not None:
                job.max_memory = max(job.max_memory, rss)
        if memory_gb is not None:
            self.memory_gb = memory_gb

    def ended(self, job_id: str) -> JobStats:
        """The job is gone (ended or aborted); returns its type, CPU and memory (for the
        logs and calibration)."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return JobStats(0.0, 0.0, 0)
        avg = job.total_cpu / job.samples if job.samples else 0.0
        return JobStats(avg, job.max_cpu, job.max_memory, job.samples, job.costs.request_type)
