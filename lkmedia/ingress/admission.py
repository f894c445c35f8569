"""CPU admission as the Go ingress decides it (``pkg/stats/monitor.go``), so lkmedia nodes
share a cluster with Go ones.

A session costs its input's ``cpu_cost`` (lkmedia.ingress.kind.session_costs). The node keeps
``min_idle_ratio`` of its CPUs idle for its own work:

    available = idle CPUs (measured) - CPUs held for sessions just accepted - min_idle_ratio * CPUs

and takes a session when ``available > cost``. An accepted session's cost is held for
``CPU_HOLD_SECONDS`` (until its own use shows in the measured idle time). The worker core
(lkmedia.worker.worker) feeds the measurements; the rest of its Admission (reservations per
job, their stats) is the egress's.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..worker.admission import Admission, Decision
from ..worker.kind import Costs

CPU_HOLD_SECONDS = 1.0  # how long an accepted session's cost stays pending (Go AcceptIngress: 1 s)


@dataclass
class _NodeLimits:
    """The egress limits the base class reads, at values that never refuse."""
    max_cpu_utilization: float = 1.0
    max_memory: float = 0.0
    max_pulse_clients: int = 0


class IngressAdmission(Admission):
    def __init__(self, min_idle_ratio: float, *, num_cpus: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(_NodeLimits(), num_cpus=num_cpus, clock=clock)
        self.min_idle_ratio = min_idle_ratio

    def cpu_usage(self) -> tuple[float, float, float, float]:
        """(total, available, pending, used) in CPUs, by the Go ingress's formula."""
        total = self.num_cpus
        now = self._clock()
        pending = sum(j.costs.cpu for j in self._jobs.values() if now - j.accepted_at < CPU_HOLD_SECONDS)
        used = total * min(max(self.node_load, 0.0), 1.0)
        return total, total - used - pending - self.min_idle_ratio * total, pending, used

    def check(self, costs: Costs) -> Decision:
        available = self.cpu_usage()[1]
        accept = available > costs.cpu
        return Decision(accept, "" if accept else "cpu", costs.cpu, available)

    def affinity(self, costs: Costs, *, disabled: bool = False) -> float:
        """StartIngress affinity: 1 when the session fits here, else -1 (Go ``StartIngressAffinity``)."""
        return -1.0 if disabled or not self.check(costs).accept else 1.0
