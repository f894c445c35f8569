"""Go egress admission: costs per request type, affinity, the 15 s reservation, the memory rule,
with injected CPUs, measurements and a fake clock; ProcSampler on a real busy child process."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from livekit.protocol import egress as lk

from lkmedia.egress.costs import check_cpu_costs, request_costs
from lkmedia.service.config import ConfigError, CPUCostConfig, parse_config
from lkmedia.worker.admission import CPU_HOLD_SECONDS, Admission, AdmissionError
from lkmedia.worker.kind import Costs
from lkmedia.worker.sampler import ProcSampler, cpu_count


def _costs(yaml_cpu_cost: str = "") -> CPUCostConfig:
    text = "cpu_cost:\n" + yaml_cpu_cost if yaml_cpu_cost else ""
    return parse_config(text, env={}, require_connection=False).cpu_cost


def costs(a: Admission, request: object, estimated_cpu: float = 0.0) -> Costs:
    """What admission is given for a request: its kind's costs (lkmedia.egress.costs)."""
    return request_costs(a.limits, request, estimated_cpu)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


PARTICIPANT = lk.ParticipantEgressRequest(room_name="r", identity="a")
TRACK = lk.TrackEgressRequest(room_name="r", track_id="TR_x")
TRACK_COMPOSITE = lk.TrackCompositeEgressRequest(room_name="r", audio_track_id="TR_a")
ROOM = lk.RoomCompositeEgressRequest(room_name="r", custom_base_url="https://my.template/")  # Chrome
ROOM_NATIVE = lk.RoomCompositeEgressRequest(room_name="r", layout="speaker")  # lkmedia composes it
ROOM_AUDIO_SDK = lk.RoomCompositeEgressRequest(room_name="r", audio_only=True)
ROOM_AUDIO_WEB = lk.RoomCompositeEgressRequest(room_name="r", audio_only=True, custom_base_url="https://my.template/")
WEB = lk.WebEgressRequest(url="http://x")
WEB_AUDIO = lk.WebEgressRequest(url="http://x", audio_only=True)


@pytest.mark.parametrize("request_, cpu, is_web, rtype", [
    (ROOM, 4.0, True, "room_composite"),
    (ROOM_NATIVE, 1.5, False, "room_composite"),
    (lk.RoomCompositeEgressRequest(room_name="r", audio_only=True, layout="grid"), 1.0, False, "room_composite"),
    (ROOM_AUDIO_SDK, 1.0, False, "room_composite"),
    (ROOM_AUDIO_WEB, 1.0, True, "room_composite"),
    (WEB, 4.0, True, "web"),
    (WEB_AUDIO, 1.0, True, "web"),
    (PARTICIPANT, 2.0, False, "participant"),
    (TRACK_COMPOSITE, 1.0, False, "track_composite"),
    (TRACK, 0.5, False, "track"),
    (lk.StartEgressRequest(room_name="r", media=lk.MediaSource(video_track_id="TR_v")), 2.0, False, "media"),
    (lk.StartEgressRequest(room_name="r", media=lk.MediaSource(video_track_id="TR_v"), preset=lk.PASSTHROUGH),
     0.5, False, "track"),
    (lk.StartEgressRequest(room_name="r", template=lk.TemplateSource(audio_only=True)), 1.0, False, "template"),
    (lk.StartEgressRequest(room_name="r", template=lk.TemplateSource(layout="grid")), 1.5, False, "template"),
    (lk.StartEgressRequest(web=lk.WebSource(url="http://x")), 4.0, True, "web"),
])
def test_default_costs_per_type(request_: object, cpu: float, is_web: bool, rtype: str) -> None:
    c = request_costs(_costs(), request_)
    assert (c.cpu, c.is_web, c.request_type) == (cpu, is_web, rtype)


def test_configured_costs_and_sdk_audio_memory() -> None:
    cc = _costs("  sdk_audio_room_composite_cpu_cost: 0.3\n  memory_cost: 1\n"
                "  sdk_audio_room_composite_memory_cost: 0.25\n  participant_cpu_cost: 1.5\n")
    assert request_costs(cc, ROOM_AUDIO_SDK).cpu == 0.3 and request_costs(cc, ROOM_AUDIO_SDK).memory == 0.25
    assert request_costs(cc, ROOM_AUDIO_WEB).memory == 1.0
    assert request_costs(cc, PARTICIPANT).cpu == 1.5
    with pytest.raises(ValueError, match="not an egress request: EgressInfo"):
        request_costs(cc, lk.EgressInfo())


def test_idle_offers_all_cpus_busy_is_capped_and_affinity() -> None:
    clock = Clock()
    a = Admission(_costs(), num_cpus=4, clock=clock)
    assert a.available_cpu() == 4 and a.is_idle()
    assert a.affinity(costs(a, ROOM)) == 0.5  # idle: 4 >= 4
    a.accept("EG_1", costs(a, TRACK))
    assert a.affinity(costs(a, TRACK)) == 1.0  # busy and room: 4*0.8 - 0.5 = 2.7
    assert a.available_cpu() == pytest.approx(2.7)
    assert a.affinity(costs(a, ROOM)) == -1.0  # 2.7 < 4
    assert a.affinity(costs(a, TRACK), disabled=True) == -1.0
    a.accept("EG_2", costs(a, PARTICIPANT))
    assert a.available_cpu() == pytest.approx(0.7)
    assert a.affinity(costs(a, TRACK_COMPOSITE)) == -1.0 and a.affinity(costs(a, TRACK)) == 1.0
    with pytest.raises(AdmissionError) as e:
        a.accept("EG_3", costs(a, PARTICIPANT))
    assert (e.value.code, str(e.value)) == ("unavailable", "not enough CPU")
    with pytest.raises(AdmissionError) as e:
        a.accept("EG_1", costs(a, TRACK))
    assert (e.value.code, str(e.value)) == ("already_exists", "egress already exists")
    a.ended("EG_2")
    a.ended("EG_1")
    assert a.is_idle() and a.available_cpu() == 4


def test_estimated_cpu_wins_but_reservation_is_the_type_cost() -> None:
    a = Admission(_costs(), num_cpus=4, clock=Clock())
    assert a.check(costs(a, TRACK, 5)).accept is False  # idle 4 < 5
    assert a.check(costs(a, ROOM, 0.25)).required == 0.25
    a.accept("EG_1", costs(a, ROOM, 0.25))
    assert a.available_cpu() == pytest.approx(3.2 - 4)  # Go reserves the type cost


def test_reservation_held_15s_then_measured_cpu() -> None:
    clock = Clock()
    a = Admission(_costs(), num_cpus=4, clock=clock)
    a.accept("EG_1", costs(a, PARTICIPANT))
    assert a.cpu_usage() == (4, pytest.approx(1.2), 2.0, 0.0)  # pending until the process runs
    a.started("EG_1")
    a.record_usage({"EG_1": 0.6})
    assert a.cpu_usage() == (4, pytest.approx(1.2), 0.0, 2.0)  # max(reserved 2, measured 0.6)
    clock.t += CPU_HOLD_SECONDS - 0.1
    assert a.cpu_usage()[3] == 2.0
    clock.t += 0.2  # reservation released: the measurement counts
    assert a.cpu_usage() == (4, pytest.approx(2.6), 0.0, 0.6)
    a.record_usage({"EG_1": 2.5, "EG_gone": 9.0})  # measured above the reservation counts as measured
    assert a.cpu_usage()[3] == 2.5
    a.record_usage({"EG_1": 1.0})
    stats = a.ended("EG_1")
    assert stats.max_cpu == 2.5 and stats.avg_cpu == pytest.approx((0.6 + 2.5 + 1.0) / 3)
    assert stats.samples == 3 and stats.request_type == "participant"
    assert a.ended("EG_1").request_type == ""  # no longer held


def test_memory_rule_only_with_max_memory() -> None:
    clock = Clock()
    a = Admission(_costs("  memory_cost: 0.5\n"), num_cpus=4, clock=clock)
    a.record_usage({}, memory_gb=100.0)
    assert a.check(costs(a, TRACK)).accept  # max_memory 0: no memory check
    a = Admission(_costs("  max_memory: 4\n  memory_cost: 0.5\n"), num_cpus=4, clock=clock)
    a.record_usage({}, memory_gb=2.4)
    assert a.check(costs(a, TRACK)).accept  # 2.4 + 0.5 + 1 headroom < 4
    a.record_usage({}, memory_gb=2.5)
    d = a.check(costs(a, TRACK))
    assert (d.accept, d.reason) == (False, "memory")  # 2.5 + 0.5 + 1 >= 4
    with pytest.raises(AdmissionError, match="memory"):
        a.accept("EG_x", costs(a, TRACK))
    a.record_usage({}, memory_gb=2.0)
    a.accept("EG_1", costs(a, TRACK))  # 2 + 0.5 + 1 < 4; then 0.5 GB pending for 15 s
    assert not a.check(costs(a, TRACK)).accept  # 2 + 0.5 pending + 0.5 + 1 >= 4
    clock.t += CPU_HOLD_SECONDS
    assert a.check(costs(a, TRACK)).accept


def test_pulse_clients_limit_web_only() -> None:
    clients = {"n": 6}
    a = Admission(_costs("  max_pulse_clients: 10\n"), num_cpus=8, clock=Clock(), pulse_clients=lambda: clients["n"])
    assert a.check(costs(a, WEB)).accept  # 6 + 4 held for the new one <= 10
    clients["n"] = 7
    assert (a.check(costs(a, WEB)).accept, a.check(costs(a, WEB)).reason) == (False, "pulse clients")
    assert a.check(costs(a, PARTICIPANT)).accept and a.check(costs(a, ROOM_AUDIO_SDK)).accept  # no Chrome, no pulse client


def test_startup_needs_the_cheapest_cost() -> None:
    with pytest.raises(ConfigError, match="not enough CPU"):
        check_cpu_costs(_costs(), 0.4)
    assert any("room_composite_cpu_cost" in w for w in check_cpu_costs(_costs(), 2))
    assert cpu_count() >= 1


def test_proc_sampler_measures_a_busy_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()+3\nwhile time.time()<t: pass"])
    try:
        sampler = ProcSampler()
        sampler.sample({"EG_busy": child.pid})
        time.sleep(1.0)
        s = sampler.sample({"EG_busy": child.pid, "EG_missing": 999_999_999})
    finally:
        child.kill()
        child.wait()
    assert 0.3 < s.cpu["EG_busy"] <= 1.2  # one busy core (the machine is shared)
    assert s.cpu["EG_missing"] == 0.0 and s.memory_by_job["EG_missing"] == 0
    assert s.memory_by_job["EG_busy"] > 1_000_000 and s.rss_bytes > s.memory_by_job["EG_busy"]
    assert 0.0 <= s.node_load <= 1.0
