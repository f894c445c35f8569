"""Per-job CPU and memory from /proc (a job is its process and all its descendants), the
node's CPU load and its cgroup memory: what admission, the kill policy and calibration
are fed once a second.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


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
