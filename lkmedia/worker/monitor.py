"""What the worker does with its measurements (lkmedia.worker.sampler.ProcSampler),
once a second: the kill policy and self-calibration. Pure logic: samples and the clock
come in, decisions go out; the service carries them out on its job processes.

Kill policy, as the Go egress's monitor (``pkg/stats/monitor.go``):
- node CPU above 0.95 (or ``(1 + max_cpu_utilization) / 2``) for 10 samples while more
  than one job runs (samples taken while a job starts do not count: a start storm is
  what admission reserved for, not a job over its cost): the job furthest over its admitted cost is stopped (drained,
  COMPLETE, result ``stopped_cpu``); still running ``cpu_kill_grace_sec`` later, it is
  killed (FAILED "CPU exhausted: N cores used", ``killed_cpu``). 5 calm samples reset it.
- node memory (proc RSS or the cgroup, ``memory_source``) above ``max_memory`` for
  ``memory_kill_grace_sec``: the job using the most is killed ("OOM: N GB used", ``killed_oom``).
lkmedia adds per-job limits (``jobs.max_memory``, ``jobs.max_cpu``) with the same steps.

Calibration (``jobs.calibrate``): each request type's real CPU on this node, learned from
the jobs that ran here, replaces its configured ``cpu_cost`` in admission once measured.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .admission import GB
from .sampler import Sample

log = logging.getLogger("lkmedia.service.monitor")

KILL_THRESHOLD = 0.95  # Go defaultKillThreshold
HIGH_SAMPLES = 10  # Go minKillDuration: samples above the threshold before a stop
CALM_SAMPLES = 5  # Go lowCPUResetDuration: samples below it that forget the high ones
NODE = ""  # the node's own key among the per-egress memory timers


class NodeLimits(Protocol):
    """The Go kill policy's settings (the ``cpu_cost:`` section has them)."""

    max_cpu_utilization: float
    max_memory: float  # GB, 0 = none
    memory_source: str  # proc_rss | cgroup
    memory_kill_grace_sec: int
    cpu_kill_grace_sec: int


class JobLimits(Protocol):
    """lkmedia's per-job limits (``jobs:``)."""

    max_cpu: float  # CPUs, 0 = none
    max_memory: float  # GB, 0 = none


@dataclass(frozen=True)
class Action:
    job_id: str
    kind: str  # "stop" (drain, COMPLETE) | "kill" (FAILED, outputs still finalised)
    result: str  # livekit_egress_handler_results_total: stopped_cpu | killed_cpu | killed_oom
    message: str  # the stop reason, or the egress error


@dataclass
class _CpuWatch:
    high: int = 0
    calm: int = 0
    stopped: str = ""  # the egress asked to stop for CPU
    stopped_at: float = 0.0


class KillPolicy:
    def __init__(self, costs: NodeLimits, jobs: JobLimits, num_cpus: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.costs, self.jobs, self.num_cpus = costs, jobs, num_cpus
        self._clock = clock
        self._node = _CpuWatch()
        self._per_job: dict[str, _CpuWatch] = {}
        self._memory_since: dict[str, float] = {}  # NODE or an egress id -> over its limit since
        self._killed: set[str] = set()

    def observe(self, sample: Sample, allowed: Mapping[str, float], starting: bool = False) -> list[Action]:
        """``allowed``: each running job's admitted CPU (its cost). ``starting``: a job is
        starting (its imports and room join, which admission reserved for): the node's
        CPU then says nothing about the jobs that run, and is not counted against them."""
        now = self._clock()
        running = set(sample.cpu) | set(sample.memory_by_job)
        for gone in set(self._per_job) - running:
            del self._per_job[gone]
        self._killed &= running
        for gone in set(self._memory_since) - running - {NODE}:
            del self._memory_since[gone]
        actions = self._node_cpu(sample, allowed, now, starting) + self._job_cpu(sample, now)
        actions += self._node_memory(sample, now) + self._job_memory(sample, now)
        out, seen = [], set()
        for a in actions:
            if a.job_id in self._killed or (a.job_id, a.kind) in seen:
                continue
            seen.add((a.job_id, a.kind))
            if a.kind == "kill":
                self._killed.add(a.job_id)
            out.append(a)
        return out

    def _cpu_step(self, w: _CpuWatch, high: bool, job_id: str, used: float, now: float,
                  why: str) -> list[Action]:
        if not high:
            w.calm += 1
            if w.calm >= CALM_SAMPLES:
                w.high = 0
            return []
        w.calm = 0
        if not w.stopped:
            w.high += 1
            if w.high < HIGH_SAMPLES or not job_id:
                return []
            w.stopped, w.stopped_at, w.high = job_id, now, 0
            log.warning("job %s: %s: stopping it", job_id, why)
            return [Action(job_id, "stop", "stopped_cpu", "CPU exhausted")]
        if now - w.stopped_at < self.costs.cpu_kill_grace_sec:
            return []
        victim, w.stopped = w.stopped, ""
        log.warning("job %s: still running %d s after its stop: killing it", victim, self.costs.cpu_kill_grace_sec)
        return [Action(victim, "kill", "killed_cpu", f"CPU exhausted: {used:.2f} cores used")]

    def _node_cpu(self, sample: Sample, allowed: Mapping[str, float], now: float,
                  starting: bool) -> list[Action]:
        threshold = KILL_THRESHOLD
        if threshold <= self.costs.max_cpu_utilization:
            threshold = (1 + self.costs.max_cpu_utilization) / 2
        heaviest, most = "", 0.0
        for eid, used in sample.cpu.items():
            if used > allowed.get(eid, 0.0) and used > most:
                heaviest, most = eid, used
        w = self._node
        if w.stopped and w.stopped not in sample.cpu:
            w.stopped = ""  # it ended by itself
        if starting and not w.stopped:
            return []  # neither high nor calm: the count waits for the start to be over
        high = sample.node_load > threshold and len(sample.cpu) > 1
        if w.stopped:
            most = sample.cpu.get(w.stopped, most)
        return self._cpu_step(w, high, heaviest, most, now,
                              f"node CPU {sample.node_load:.0%} above {threshold:.0%} and it uses the most "
                              f"({most:.2f} cores)")

    def _job_cpu(self, sample: Sample, now: float) -> list[Action]:
        cap = self.jobs.max_cpu
        if cap <= 0:
            return []
        out = []
        for eid, used in sample.cpu.items():
            w = self._per_job.setdefault(eid, _CpuWatch())
            out += self._cpu_step(w, used > cap, eid, used, now,
                                  f"{used:.2f} cores, over jobs.max_cpu {cap:g} for {HIGH_SAMPLES} s")
        return out

    def _node_memory(self, sample: Sample, now: float) -> list[Action]:
        limit = self.costs.max_memory
        if limit <= 0 or not sample.memory_by_job:
            return []
        used = sample.node_memory(self.costs.memory_source)
        if not self._over_for_grace(NODE, used > limit * GB, now):
            return []
        victim = max(sample.memory_by_job, key=lambda e: (e not in self._killed, sample.memory_by_job[e]))
        log.warning("node memory %.2f GB over max_memory %g GB: killing egress %s (%.2f GB)", used / GB, limit,
                    victim, sample.memory_by_job[victim] / GB)
        return [Action(victim, "kill", "killed_oom", f"OOM: {used / GB:.2f} GB used")]

    def _over_for_grace(self, key: str, over: bool, now: float) -> bool:
        """True once ``key`` (NODE or an egress) has been over its memory limit for
        ``memory_kill_grace_sec``; then its count starts over."""
        if not over:
            self._memory_since.pop(key, None)
            return False
        since = self._memory_since.setdefault(key, now)
        if now - since < self.costs.memory_kill_grace_sec:
            return False
        del self._memory_since[key]
        return True

    def _job_memory(self, sample: Sample, now: float) -> list[Action]:
        cap = self.jobs.max_memory
        if cap <= 0:
            return []
        out = []
        for eid, used in sample.memory_by_job.items():
            if eid not in self._killed and self._over_for_grace(eid, used > cap * GB, now):
                log.warning("job %s: %.2f GB, over jobs.max_memory %g GB: killing it", eid, used / GB, cap)
                out.append(Action(eid, "kill", "killed_oom",
                                  f"OOM: {used / GB:.2f} GB used, over the job limit of {cap:g} GB"))
        return out


@dataclass
class _Learned:
    cpu: float = 0.0  # CPUs, running mean over jobs
    jobs: int = 0
    samples: int = 0


@dataclass
class Calibration:
    """What each request type was measured to use here. A job counts once it has run for
    ``min_samples`` samples; the mean moves by ``weight`` towards each new job's average.
    Kept in ``path`` (JSON) so that a restarted worker starts calibrated."""
    path: str | None = None
    weight: float = 0.3
    min_samples: int = 10
    margin: float = 1.15  # admission reserves this much above the measured mean
    learned: dict[str, _Learned] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    for rtype, v in json.load(f).items():
                        self.learned[rtype] = _Learned(float(v["cpu"]), int(v["jobs"]), int(v.get("samples", 0)))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("calibration %s unreadable (%s): starting afresh", self.path, e)

    def learn(self, request_type: str, avg_cpu: float, samples: int) -> float | None:
        """Count one ended job; returns the type's measured CPU now (None: too short to count)."""
        if samples < self.min_samples or avg_cpu <= 0:
            return None
        cur = self.learned.setdefault(request_type, _Learned())
        cur.cpu = avg_cpu if cur.jobs == 0 else cur.cpu + self.weight * (avg_cpu - cur.cpu)
        cur.jobs += 1
        cur.samples += samples
        self._save()
        return cur.cpu

    def cost(self, request_type: str) -> float | None:
        """The CPU to admit a request of this type with, once measured (else None)."""
        cur = self.learned.get(request_type)
        return None if cur is None or cur.jobs == 0 else round(cur.cpu * self.margin, 3)

    def _save(self) -> None:
        if not self.path:
            return
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({k: vars(v) for k, v in self.learned.items()}, f)
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("calibration %s not saved: %s", self.path, e)
