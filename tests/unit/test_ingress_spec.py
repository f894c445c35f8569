"""The ingress kind's service side: IngressInfo -> spec as the Go ingress checks it, the join
token as Go builds it, IngressState's rules, costs, and the recipe's input side on real FLV."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import ingress as lk
from livekit.protocol import models

from lkmedia.core import Graph
from lkmedia.ingress.errors import IngressError
from lkmedia.ingress.kind import IngressKind
from lkmedia.ingress.recipe import LIVE_PROBE, input_source
from lkmedia.ingress.spec import IngressLaunch, IngressSpec, spec_from_info, validate_info
from lkmedia.ingress.state import S, buffering, ended, set_status
from lkmedia.service.ingress_config import parse_ingress_config
from lkmedia.testing.media import av_clip
from lkmedia.worker import codec
from tests.unit.test_file_source import Collect

MINIMAL = "api_key: APIkey12345\napi_secret: s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t\nws_url: ws://127.0.0.1:7880\n" \
          "redis:\n  address: 127.0.0.1:6379\n"


def rtmp_info(**kw: object) -> lk.IngressInfo:
    base: dict[str, object] = dict(ingress_id="IN_abc", name="cam", stream_key="SK_secret123",
                                   url="rtmp://h/live", input_type=lk.IngressInput.RTMP_INPUT, room_name="room",
                                   participant_identity="cam-1", participant_name="Camera", reusable=True)
    base.update(kw)
    return lk.IngressInfo(**base)  # type: ignore[arg-type]


def test_rtmp_spec_drops_the_key() -> None:
    spec = spec_from_info(rtmp_info(), "rtmp")
    assert (spec.ingress_id, spec.input, spec.transcode, spec.reusable) == ("IN_abc", "rtmp", True, True)
    assert spec.resource_id.startswith("RT_") and len(spec.resource_id) == 15
    assert spec.info.stream_key == "" and spec.info.room_name == "room"
    assert "SK_secret" not in repr(spec) and "SK_secret" not in codec.dumps(spec)
    back = codec.loads(IngressSpec, codec.dumps(spec))
    assert back.info == spec.info and back.resource_id == spec.resource_id


def test_whip_and_url_specs() -> None:
    whip = spec_from_info(rtmp_info(input_type=lk.IngressInput.WHIP_INPUT), "whip", "WH_given")
    assert whip.transcode is False and whip.resource_id == "WH_given"  # WHIP transcodes only when asked
    whip_t = spec_from_info(rtmp_info(input_type=lk.IngressInput.WHIP_INPUT, enable_transcoding=True), "whip")
    assert whip_t.transcode
    url = spec_from_info(rtmp_info(input_type=lk.IngressInput.URL_INPUT, stream_key="",
                                   url="https://user:pw@host/a.mp4?sig=1", reusable=False), "url")
    assert url.url == "https://user:pw@host/a.mp4?sig=1" and not url.reusable
    assert url.describe()["url"] == "https://***@host/a.mp4?***"


@pytest.mark.parametrize("kw, words", [
    ({"room_name": ""}, "no room name"),
    ({"participant_identity": ""}, "no participant identity"),
    ({"stream_key": ""}, "no stream key"),
    ({"input_type": lk.IngressInput.URL_INPUT, "url": ""}, "no source URL"),
    ({"enable_transcoding": False}, "bypassing transcoding impossible"),
    ({"bypass_transcoding": True}, "bypassing transcoding impossible"),
    ({"input_type": lk.IngressInput.WHIP_INPUT, "video": lk.IngressVideoOptions(
        preset=lk.IngressVideoEncodingPreset.H264_720P_30FPS_3_LAYERS)}, "video encoding options must be empty"),
    ({"video": lk.IngressVideoOptions(source=models.TrackSource.MICROPHONE)}, "invalid track source"),
    ({"audio": lk.IngressAudioOptions(source=models.TrackSource.CAMERA)}, "invalid track source"),
    ({"video": lk.IngressVideoOptions(options=lk.IngressVideoEncodingOptions(
        video_codec=models.VideoCodec.H264_HIGH))}, "video codec unsupported"),
    ({"video": lk.IngressVideoOptions(options=lk.IngressVideoEncodingOptions(layers=[
        models.VideoLayer(quality=models.VideoQuality.HIGH, width=641, height=360)]))}, "must be even"),
    ({"video": lk.IngressVideoOptions(options=lk.IngressVideoEncodingOptions(layers=[
        models.VideoLayer(quality=models.VideoQuality.HIGH, width=640, height=360),
        models.VideoLayer(quality=models.VideoQuality.LOW, width=1280, height=720)]))}, "do not grow"),
    ({"audio": lk.IngressAudioOptions(options=lk.IngressAudioEncodingOptions(channels=6))}, "channel count"),
])
def test_invalid_infos_are_named(kw: dict[str, object], words: str) -> None:
    info = rtmp_info(**kw)
    with pytest.raises(IngressError, match=words) as e:
        validate_info(info)
    assert e.value.code == "invalid_argument"


def test_session_refusals_with_go_codes() -> None:
    with pytest.raises(IngressError) as e:
        spec_from_info(rtmp_info(enabled=False), "rtmp")
    assert (str(e.value), e.value.code) == ("ingress disabled", "failed_precondition")
    with pytest.raises(IngressError) as e:
        spec_from_info(rtmp_info(input_type=lk.IngressInput.WHIP_INPUT), "rtmp")
    assert e.value.code == "invalid_argument" and "whip" in str(e.value)


def test_token_as_go_builds_it() -> None:
    conf = parse_ingress_config(MINIMAL, env={})
    kind = IngressKind(conf)
    spec = spec_from_info(rtmp_info(participant_metadata='{"a":1}'), "rtmp")
    launch = kind.launch(spec)
    assert launch.ws_url == "ws://127.0.0.1:7880"
    claims = api.TokenVerifier(conf.api_key, conf.api_secret).verify(launch.token)
    assert (claims.identity, claims.name, claims.metadata, claims.kind) == ("cam-1", "Camera", '{"a":1}', "ingress")
    assert claims.attributes == {"ingress.ingressID": "IN_abc"}
    v = claims.video
    assert v is not None and v.room_join and v.room == "room" and v.can_publish and not v.can_subscribe
    assert v.can_update_own_metadata


def test_costs_by_input() -> None:
    kind = IngressKind(parse_ingress_config(MINIMAL + "cpu_cost:\n  rtmp_cpu_cost: 3\n  whip_cpu_cost: 2.5\n"
                                            "  whip_bypass_transcoding_cpu_cost: 0.2\n  url_cpu_cost: 1.5\n", env={}))
    rt = kind.costs(spec_from_info(rtmp_info(), "rtmp"))
    assert (rt.cpu, rt.request_type, rt.is_web) == (3.0, "rtmp", False)
    whip = rtmp_info(input_type=lk.IngressInput.WHIP_INPUT)
    assert kind.costs(spec_from_info(whip, "whip")).cpu == 0.2
    whip.enable_transcoding = True
    assert kind.costs(spec_from_info(whip, "whip")).cpu == 2.5
    url = rtmp_info(input_type=lk.IngressInput.URL_INPUT, url="http://h/a.mp4")
    assert kind.costs(spec_from_info(url, "url")).cpu == 1.5


def test_state_rules() -> None:
    st = buffering("RT_x")
    assert st.status == S.ENDPOINT_BUFFERING and st.started_at == st.updated_at and st.resource_id == "RT_x"
    first = st.updated_at
    set_status(st, S.ENDPOINT_PUBLISHING)
    assert st.updated_at > first and st.started_at == first and not st.ended_at
    done = ended(st, reusable=True)
    assert done.status == S.ENDPOINT_INACTIVE and done.ended_at == done.updated_at and st.status == S.ENDPOINT_PUBLISHING
    assert ended(st, reusable=False).status == S.ENDPOINT_COMPLETE
    err = ended(st, reusable=True, error="no data from the publisher for 10 s")
    assert err.status == S.ENDPOINT_ERROR and err.error == "no data from the publisher for 10 s"
    again = set_status(lk.IngressState.FromString(err.SerializeToString()), S.ENDPOINT_ERROR, "later")
    assert again.ended_at == err.ended_at  # set once
    kind = IngressKind(parse_ingress_config(MINIMAL, env={}))
    info = rtmp_info(state=st)
    assert not kind.is_final(info) and kind.started(info)
    out = kind.ended(info, "failed", "the job process died")
    assert kind.is_final(out) and out.state.error == "the job process died" and kind.result(out) == "process_error"
    assert kind.result(rtmp_info(state=done)) == "completed"
    assert not kind.is_final(rtmp_info())  # INACTIVE that never started is not an end


@pytest.fixture(scope="module")
def flv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return av_clip(tmp_path_factory.mktemp("ingress") / "in.flv", 2, sample_rate=44_100)


async def test_recipe_rtmp_input_reads_the_pipe(flv: Path) -> None:
    spec = spec_from_info(rtmp_info(), "rtmp")
    r, w = os.pipe()
    g = Graph()
    src = g.add(input_source(IngressLaunch(spec, "ws://x", "t", flv_fd=r)))
    v, a = g.add(Collect("v")), g.add(Collect("a"))
    g.link(src.out("video"), v)
    g.link(src.out("audio"), a)

    def write() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(flv.read_bytes())

    await asyncio.gather(asyncio.to_thread(write), g.run())
    assert len(v.items) == 50 and v.items[0].width == 320  # type: ignore[attr-defined]
    assert abs(sum(f.samples for f in a.items) / 44100 - 2.0) < 0.05  # type: ignore[attr-defined]


async def test_recipe_url_input_is_paced(flv: Path) -> None:
    url = rtmp_info(input_type=lk.IngressInput.URL_INPUT, stream_key="", url=str(flv))
    g = Graph()
    src = g.add(input_source(IngressLaunch(spec_from_info(url, "url"), "ws://x", "t")))
    v = g.add(Collect("v"))
    g.link(src.out("video"), v)
    t0 = time.monotonic()
    await g.run()
    assert len(v.items) == 50 and time.monotonic() - t0 > 1.7  # real time, not as fast as it reads
    with pytest.raises(ValueError, match="relay or FLV pipe"):
        input_source(IngressLaunch(spec_from_info(rtmp_info(), "rtmp"), "ws://x", "t"))
    relay = input_source(IngressLaunch(spec_from_info(rtmp_info(), "rtmp"), "ws://x", "t",
                                       relay_url="http://127.0.0.1:9/rtmp/RT_x", relay_headers="Authorization: x\r\n"))
    assert relay.options == {"headers": "Authorization: x\r\n", **LIVE_PROBE}  # type: ignore[attr-defined]
