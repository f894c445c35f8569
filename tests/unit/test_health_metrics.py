"""health_port and prometheus_port served for real on free loopback ports, read over HTTP."""
from __future__ import annotations

import json
import socket

import aiohttp
import pytest
from livekit.protocol import egress as lk
from prometheus_client.parser import text_string_to_metric_families

from lkmedia.service.health import HealthServer, request_json, status_body
from lkmedia.service.metrics import CONTENT_TYPE, EgressMetrics, MetricsServer, go_float


async def _get(port: int, path: str = "/", method: str = "GET") -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, f"http://127.0.0.1:{port}{path}") as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


def _participant() -> lk.ParticipantEgressRequest:
    return lk.ParticipantEgressRequest(
        room_name="demo", identity="alice",
        stream_outputs=[lk.StreamOutput(protocol=lk.RTMP, urls=["rtmp://127.0.0.1/live/sekrit-stream-key"])],
        file_outputs=[lk.EncodedFileOutput(filepath="out.mp4", s3=lk.S3Upload(bucket="b", secret="s3-sekrit"))])


async def test_health_serves_go_status_json_on_any_path() -> None:
    active = {"EG_abc": request_json("participant", _participant())}
    server = HealthServer(0, lambda: status_body(1.25, active), host="127.0.0.1")
    async with server:
        port = server.port
        assert port > 0
        for path, method in (("/", "GET"), ("/healthz", "GET"), ("/x/y?z=1", "POST")):
            status, ctype, body = await _get(port, path, method)
            assert status == 200 and ctype.startswith("application/json")
            doc = json.loads(body)
            assert doc["CpuLoad"] == 1.25
            req = doc["EG_abc"]["Participant"]
            assert req["room_name"] == "demo" and req["identity"] == "alice"
            assert req["stream_outputs"][0]["protocol"] == 1  # enums as numbers, as Go's encoding/json
        assert b"sekrit" not in body
    with socket.socket() as s:  # stopped: the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


async def test_health_async_callback_and_failure() -> None:
    calls = 0

    async def status() -> dict[str, float]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("monitor gone")
        return {"CpuLoad": 2}

    async with HealthServer(0, status, host="127.0.0.1") as server:
        assert json.loads((await _get(server.port))[2]) == {"CpuLoad": 2}
        assert await _get(server.port) == (200, "application/json", b"")  # as Go: logged, 200, no body


async def test_health_port_in_use_is_a_clear_error() -> None:
    async with HealthServer(0, dict, host="127.0.0.1") as first:
        with pytest.raises(OSError, match=f"health: cannot listen on port {first.port}"):
            await HealthServer(first.port, dict, host="127.0.0.1").start()


def _metrics(node: str = "NE_test", cluster: str = "c1", state: dict[str, bool] | None = None) -> EgressMetrics:
    st = state if state is not None else {}
    return EgressMetrics(node, cluster, is_idle=lambda: st.get("idle", True),
                         can_accept=lambda: st.get("accept", True), is_disabled=lambda: st.get("disabled", False),
                         is_terminating=lambda: st.get("terminating", False))


def _families(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, []).extend((s.name, s.labels, s.value) for s in fam.samples)
    return out


async def test_metrics_endpoint_has_go_names_and_labels() -> None:
    state = {"idle": True}
    m = _metrics(state=state)
    other = _metrics("NE_other")  # private registries: several in one process
    m.cpu_load.set(0.5)
    m.proc_rss_bytes.set(123456789)
    m.request_started("participant")
    m.request_started("track")
    m.request_ended("track")
    m.handler_result("participant", "completed")
    m.load_ratio("cpu", 0.625)
    m.upload("file", "success", False, 42.0)
    m.backup_storage_write("file")
    m.watch_upload_queues("EG_1", lambda: 3, lambda: 1)
    m.rpc_request("server", "rpc", "EgressInternal", "StartEgress", 12.0, error_code="unavailable",
                  rx_bytes=100, tx_bytes=50)
    m.rpc_claim("EgressInternal", "StartEgress", "granted", 3.0)
    async with MetricsServer(m, 0, host="127.0.0.1") as server, MetricsServer(other, 0, host="127.0.0.1"):
        status, ctype, body = await _get(server.port, "/metrics")
        assert status == 200 and ctype == CONTENT_TYPE
        text = body.decode()
        state["idle"] = False  # GaugeFuncs are read at scrape time
        text2 = (await _get(server.port, "/anything"))[2].decode()
    const = {"node_id": "NE_test", "cluster_id": "c1"}
    lines = text.splitlines()
    for line in (
        'livekit_egress_available{cluster_id="c1",node_id="NE_test"} 1',
        'livekit_egress_can_accept_request{cluster_id="c1",node_id="NE_test"} 1',
        'livekit_egress_is_disabled{cluster_id="c1",node_id="NE_test"} 0',
        'livekit_egress_is_terminating{cluster_id="c1",node_id="NE_test"} 0',
        'livekit_node_cpu_load{cluster_id="c1",node_id="NE_test",node_type="EGRESS"} 0.5',
        'livekit_egress_proc_rss_bytes{cluster_id="c1",node_id="NE_test"} 1.23456789e+08',
        'livekit_egress_requests{cluster_id="c1",node_id="NE_test",type="participant"} 1',
        'livekit_egress_requests{cluster_id="c1",node_id="NE_test",type="track"} 0',
        'livekit_egress_handler_results_total{cluster_id="c1",node_id="NE_test",result="completed",'
        'type="participant"} 1',
        'livekit_load_ratio{cluster_id="c1",node_id="NE_test",type="cpu"} 0.625',
        'livekit_egress_pipeline_uploads{cluster_id="c1",custom_endpoint="false",node_id="NE_test",'
        'status="success",type="file"} 1',
        'livekit_egress_backup_storage_writes{cluster_id="c1",node_id="NE_test",output_type="file"} 1',
        'livekit_egress_segments_uploads_channel_size{cluster_id="c1",egress_id="EG_1",node_id="NE_test"} 3',
        'livekit_egress_playlist_uploads_channel_size{cluster_id="c1",egress_id="EG_1",node_id="NE_test"} 1',
        '# TYPE livekit_egress_pipeline_uploads counter',
        '# HELP livekit_egress_proc_rss_bytes Per-process RSS sum in bytes',
    ):
        assert line in lines, line
    assert 'livekit_egress_available{cluster_id="c1",node_id="NE_test"} 0' in text2
    assert "_created" not in text and "NE_other" not in text
    fams = _families(text)  # the page parses as Prometheus text
    hist = fams["livekit_egress_pipline_upload_response_time_ms"]
    assert ("livekit_egress_pipline_upload_response_time_ms_sum",
            {**const, "type": "file", "status": "success", "custom_endpoint": "false"}, 42.0) in hist
    assert any(s[1].get("le") == "50" and s[2] == 1 for s in hist)
    rpc = {"node_id": "NE_test", "node_type": "EGRESS", "role": "server", "kind": "rpc",
           "service": "EgressInternal", "method": "StartEgress"}
    assert ("livekit_psrpc_error_total", {**rpc, "error_code": "unavailable"}, 1.0) in fams["livekit_psrpc_error"]
    assert ("livekit_psrpc_bytes_total", {**rpc, "direction": "rx"}, 100.0) in fams["livekit_psrpc_bytes"]
    assert "livekit_psrpc_claim_wait_time_ms" in fams
    m.forget_egress("EG_1")
    assert "segments_uploads_channel_size" not in m.render().decode()


def test_handler_result_must_be_a_go_result() -> None:
    with pytest.raises(ValueError, match="killed_oom"):
        _metrics().handler_result("track", "exploded")


@pytest.mark.parametrize("value, text", [
    (2.0, "2"), (0.5, "0.5"), (1e6, "1e+06"), (123456.0, "123456"), (1234567.0, "1.234567e+06"),
    (0.0001, "0.0001"), (0.00001, "1e-05"), (-3.25, "-3.25"), (float("inf"), "+Inf"), (0.0, "0"),
])
def test_go_float(value: float, text: str) -> None:
    assert go_float(value) == text
