"""The Chrome engine's pure parts: the template URL (the Go egress's query parameters),
addresses shown without their token, and the Chrome flags."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from livekit.protocol import egress as lk

from lkmedia.chrome.procs import chrome_args
from lkmedia.chrome.session import shown_url
from lkmedia.egress.config import egress_config
from lkmedia.egress.spec import ChromeSettings, EgressLaunch, EgressSpec
from lkmedia.egress.web import page_url


def _launch(req: object, template_base: str = "http://localhost:7980/") -> EgressLaunch:
    cfg = egress_config("EG_1", "RM_1", req)
    spec = EgressSpec("EG_1", "RM_1", "room_composite", req, cfg)  # type: ignore[arg-type]
    return EgressLaunch(spec, "ws://lk:7880", "key", "secret", "/tmp", chrome=ChromeSettings(template_base))


def test_template_url_carries_layout_url_and_token_and_keeps_the_bases_own_query() -> None:
    req = lk.RoomCompositeEgressRequest(room_name="r", layout="speaker", custom_base_url="https://t.example/rec?theme=dark&token=old",
                                        file_outputs=[lk.EncodedFileOutput(filepath="x.mp4")])
    launch = _launch(req)
    url = page_url(launch.spec.config, launch, "TOKEN")
    q = parse_qs(urlsplit(url).query)
    assert url.startswith("https://t.example/rec?")
    assert q == {"theme": ["dark"], "layout": ["speaker"], "url": ["ws://lk:7880"], "token": ["TOKEN"]}


def test_a_layout_that_is_not_built_in_loads_from_template_base() -> None:
    req = lk.RoomCompositeEgressRequest(room_name="r", layout="my-layout",
                                        file_outputs=[lk.EncodedFileOutput(filepath="x.mp4")])
    launch = _launch(req, "http://localhost:7981")
    assert page_url(launch.spec.config, launch, "T").startswith("http://localhost:7981/?layout=my-layout&")


def test_shown_url_drops_query_and_user_info() -> None:
    assert shown_url("https://u:pw@h.example:8443/p/a?token=secret#x") == "https://h.example:8443/p/a"


def test_chrome_flags_follow_the_go_egress_and_the_config() -> None:
    args = chrome_args(1280, 720, "/tmp/p", sandbox=False, insecure=True,
                       flags={"disable-gpu-vsync": True, "lang": "de", "kiosk-printing": False})
    assert "--no-sandbox" in args and "--kiosk" in args and "--window-size=1280,720" in args
    assert "--disable-web-security" in args and "--autoplay-policy=no-user-gesture-required" in args
    assert "--disable-gpu-vsync" in args and "--lang=de" in args and not any("kiosk-printing" in a for a in args)
    assert args[-1] == "about:blank"
    assert "--no-sandbox" not in chrome_args(640, 360, "/tmp/p", sandbox=True, insecure=False, flags={})
