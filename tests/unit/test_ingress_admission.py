"""The Go ingress's admission rule and its health / metrics pages (lkmedia.ingress.admission,
lkmedia.service.ingress_stats)."""
from __future__ import annotations

import re

import aiohttp

from lkmedia.ingress.admission import CPU_HOLD_SECONDS, IngressAdmission
from lkmedia.service.ingress_stats import IngressHealth, IngressMetrics
from lkmedia.worker.kind import Costs


def _costs(cpu: float, kind: str = "rtmp") -> Costs:
    return Costs(cpu, 0.0, False, kind)


def test_available_is_idle_minus_pending_minus_min_idle() -> None:
    now = [100.0]
    a = IngressAdmission(0.3, num_cpus=4, clock=lambda: now[0])
    a.record_usage({}, node_load=0.25)  # 3 CPUs idle
    total, available, pending, used = a.cpu_usage()
    assert (total, pending, used) == (4, 0, 1) and abs(available - (3 - 1.2)) < 1e-9
    assert a.check(_costs(1.7)).accept and not a.check(_costs(1.8)).accept  # strictly more than the cost
    assert a.affinity(_costs(1.0)) == 1.0 and a.affinity(_costs(2.0)) == -1.0
    a.accept("IN_1", _costs(1.0))
    assert not a.check(_costs(1.0)).accept  # held while its use is not measured yet
    now[0] += CPU_HOLD_SECONDS
    assert a.check(_costs(1.0)).accept


async def test_health_and_metrics_pages() -> None:
    ok = [True]
    metrics = IngressMetrics("NI_1", can_accept=lambda: ok[0])
    metrics.request_started("rtmp")
    metrics.request_started("whip:bypass")
    metrics.request_started("url")  # not counted, as in Go
    metrics.node_usage(0.5, 0, None, 0.0, None)
    page = metrics.render().decode()
    assert re.search(r'^livekit_ingress_available\{node_id="NI_1"\} 1$', page, re.M)
    assert 'livekit_ingress_requests{node_id="NI_1",transcoding="true",type="rtmp"} 1' in page
    assert 'livekit_ingress_requests{node_id="NI_1",transcoding="false",type="whip"} 1' in page
    assert 'type="url"' not in page
    assert 'livekit_node_cpu_load{node_id="NI_1",node_type="INGRESS"} 0.5' in page
    health = IngressHealth(0, lambda: ok[0], host="127.0.0.1")
    async with health, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{health.port}"
        async with http.get(base + "/") as r:
            assert (r.status, await r.text()) == (200, "Healthy")
        async with http.get(base + "/availability") as r:
            assert (r.status, await r.text()) == (200, "Available")
        ok[0] = False
        async with http.get(base + "/availability") as r:
            assert r.status == 503
    assert re.search(r"^livekit_ingress_available\{node_id=\"NI_1\"\} 0$", metrics.render().decode(), re.M)
