"""The kill policy (Go monitor semantics plus per-job limits) and self-calibration, on
synthetic samples. The real processes are in tests/integration/livekit/test_job_processes.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from livekit.protocol import egress as lk

from lkmedia.egress.costs import request_costs
from lkmedia.service.config import parse_config
from lkmedia.worker.admission import GB, Admission
from lkmedia.worker.monitor import HIGH_SAMPLES, Action, Calibration, KillPolicy
from lkmedia.worker.sampler import Sample

BASE = "api_key: k\napi_secret: s\nws_url: ws://x\nredis:\n  address: x:1\n"
PARTICIPANT = lk.ParticipantEgressRequest(room_name="r", identity="p")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _policy(extra: str = "") -> tuple[KillPolicy, Clock]:
    conf = parse_config(BASE + extra)
    clock = Clock()
    return KillPolicy(conf.cpu_cost, conf.jobs, 2.0, clock=clock), clock


def _sample(cpu: dict[str, float], load: float = 0.5, mem: dict[str, int] | None = None,
            rss: int = 0, cgroup: int | None = None) -> Sample:
    mem = mem if mem is not None else {e: 100 << 20 for e in cpu}
    return Sample(cpu, mem, rss or sum(mem.values()), cgroup, load)


def _run(policy: KillPolicy, clock: Clock, sample: Sample, allowed: dict[str, float], seconds: int) -> list[Action]:
    out = []
    for _ in range(seconds):
        clock.t += 1
        out += policy.observe(sample, allowed)
    return out


def test_node_cpu_stops_the_job_furthest_over_its_cost_then_kills_it() -> None:
    policy, clock = _policy("cpu_cost:\n  cpu_kill_grace_sec: 5\n")
    allowed = {"EG_a": 0.5, "EG_b": 0.5}
    hot = _sample({"EG_a": 0.9, "EG_b": 0.6}, load=0.97)
    assert _run(policy, clock, hot, allowed, HIGH_SAMPLES - 1) == []
    (stop,) = _run(policy, clock, hot, allowed, 1)
    assert stop == Action("EG_a", "stop", "stopped_cpu", "CPU exhausted")
    assert _run(policy, clock, hot, allowed, 4) == []  # its grace
    (kill,) = _run(policy, clock, hot, allowed, 1)
    assert kill.job_id == "EG_a" and kill.kind == "kill" and kill.result == "killed_cpu"
    assert kill.message == "CPU exhausted: 0.90 cores used"


def test_node_cpu_needs_two_jobs_a_sustained_load_and_calm_resets_it() -> None:
    policy, clock = _policy()
    assert _run(policy, clock, _sample({"EG_a": 1.9}, load=0.99), {"EG_a": 0.5}, 30) == []  # one job: never
    allowed = {"EG_a": 0.5, "EG_b": 0.5}
    hot, calm = _sample({"EG_a": 0.9, "EG_b": 0.6}, load=0.97), _sample({"EG_a": 0.9, "EG_b": 0.6}, load=0.5)
    assert _run(policy, clock, hot, allowed, HIGH_SAMPLES - 2) == []
    assert _run(policy, clock, calm, allowed, 4) == []  # not yet 5 calm samples: the count stays
    assert len(_run(policy, clock, hot, allowed, 2)) == 1
    policy, clock = _policy()
    assert _run(policy, clock, hot, allowed, HIGH_SAMPLES - 1) == []
    assert _run(policy, clock, calm, allowed, 5) == []  # 5 calm samples forget it
    assert _run(policy, clock, hot, allowed, HIGH_SAMPLES - 1) == []
    # within their costs: nobody to stop (Go: only a job above its allowed CPU)
    assert _run(policy, clock, hot, {"EG_a": 1.0, "EG_b": 1.0}, 30) == []


def test_threshold_follows_a_high_max_cpu_utilization() -> None:
    policy, clock = _policy("cpu_cost:\n  max_cpu_utilization: 0.96\n")  # (1 + 0.96) / 2 = 0.98
    allowed = {"EG_a": 0.1, "EG_b": 0.1}
    assert _run(policy, clock, _sample({"EG_a": 0.9, "EG_b": 0.6}, load=0.97), allowed, 30) == []
    assert len(_run(policy, clock, _sample({"EG_a": 0.9, "EG_b": 0.6}, load=0.99), allowed, HIGH_SAMPLES)) == 1


def test_node_memory_kills_the_largest_job_after_its_grace() -> None:
    policy, clock = _policy("cpu_cost:\n  max_memory: 2\n  memory_kill_grace_sec: 3\n")
    big = _sample({"EG_a": 0.1, "EG_b": 0.1}, mem={"EG_a": int(0.5 * GB), "EG_b": int(1.7 * GB)})
    assert _run(policy, clock, big, {}, 3) == []
    (kill,) = _run(policy, clock, big, {}, 1)
    assert kill == Action("EG_b", "kill", "killed_oom", "OOM: 2.20 GB used")
    policy, clock = _policy("cpu_cost:\n  max_memory: 2\n  memory_source: cgroup\n")
    small = _sample({"EG_a": 0.1}, mem={"EG_a": int(0.1 * GB)}, cgroup=int(2.5 * GB))
    assert [a.job_id for a in _run(policy, clock, small, {}, 1)] == ["EG_a"]  # the cgroup counts


def test_a_killed_job_is_not_killed_again() -> None:
    policy, clock = _policy("cpu_cost:\n  max_memory: 2\n")
    big = _sample({"EG_a": 0.1, "EG_b": 0.1}, mem={"EG_a": int(0.5 * GB), "EG_b": int(1.7 * GB)})
    kills = _run(policy, clock, big, {}, 3)
    assert [a.job_id for a in kills] == ["EG_b", "EG_a"]  # the largest, then the next one


def test_per_job_limits() -> None:
    policy, clock = _policy("jobs:\n  max_memory: 0.5\n  max_cpu: 0.8\ncpu_cost:\n  cpu_kill_grace_sec: 2\n")
    s = _sample({"EG_a": 0.2, "EG_b": 1.2}, mem={"EG_a": int(0.6 * GB), "EG_b": int(0.1 * GB)})
    first = _run(policy, clock, s, {}, 1)
    assert first == [Action("EG_a", "kill", "killed_oom", "OOM: 0.60 GB used, over the job limit of 0.5 GB")]
    actions = _run(policy, clock, s, {}, HIGH_SAMPLES + 2)
    assert [(a.job_id, a.kind) for a in actions] == [("EG_b", "stop"), ("EG_b", "kill")]
    assert actions[1].message == "CPU exhausted: 1.20 cores used"
    # a job that ended is forgotten
    assert _run(policy, clock, _sample({}), {}, 3) == []


def test_calibration_learns_and_admission_uses_it(tmp_path: Path) -> None:
    path = str(tmp_path / "calibration.json")
    cal = Calibration(path)
    assert cal.learn("participant", 0.6, samples=5) is None  # too short to count
    assert cal.learn("participant", 0.6, samples=20) == 0.6
    assert cal.learn("participant", 0.8, samples=20) == pytest.approx(0.66)  # 30 % of the way
    assert cal.cost("participant") == pytest.approx(0.66 * 1.15, abs=0.001)
    assert Calibration(path).cost("participant") == cal.cost("participant")  # a restart keeps it
    conf = parse_config(BASE)
    a = Admission(conf.cpu_cost, num_cpus=2, learned=cal.cost)
    participant = request_costs(conf.cpu_cost, PARTICIPANT)
    assert a.check(participant).required == cal.cost("participant")  # not the configured 2
    assert a.check(request_costs(conf.cpu_cost, PARTICIPANT, 0.3)).required == 0.3  # the request's estimate wins
    a.accept("EG_1", participant)
    assert a.allowed_cpu() == {"EG_1": cal.cost("participant")}
    assert a.request_types() == {"EG_1": "participant"}
    plain = Admission(conf.cpu_cost, num_cpus=2)
    assert plain.check(participant).required == 2.0
    (tmp_path / "bad.json").write_text("{not json")
    assert Calibration(str(tmp_path / "bad.json")).learned == {}
