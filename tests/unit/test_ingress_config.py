"""The Go ingress's config, read by lkmedia: a Go sample loads unchanged, the Go defaults,
env fills what YAML leaves out, unknown keys warn, bad values stop start-up naming the key,
secrets stay out."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lkmedia.service.config_yaml import ConfigError
from lkmedia.service.ingress_config import load_ingress_config, parse_ingress_config

ROOT = Path(__file__).resolve().parents[2]
GO_SAMPLE = ROOT / "configs" / "ingress-go-sample.yaml"
MINIMAL = "api_key: k\napi_secret: s\nws_url: ws://127.0.0.1:7880\nredis:\n  address: 127.0.0.1:6379\n"
ENV = {"LIVEKIT_API_KEY": "envkey", "LIVEKIT_API_SECRET": "envsecret", "LIVEKIT_WS_URL": "wss://env.example"}


def test_go_sample_loads_unchanged() -> None:
    c = load_ingress_config(str(GO_SAMPLE), env={})
    assert c.warnings == []
    assert c.api_key == "APIexampleKey123" and c.ws_url == "ws://127.0.0.1:7880"
    assert c.redis is not None and c.redis.address == "127.0.0.1:6379" and c.redis.password
    assert (c.health_port, c.prometheus_port, c.rtmp_port, c.whip_port, c.http_relay_port) == (
        8081, 9091, 1935, 8080, 9090)
    assert c.rtc_config.udp_ports() == (7885, 0) and c.rtc_config.stun_servers == ["stun.l.google.com:19302"]
    cc = c.cpu_cost
    assert (cc.rtmp_cpu_cost, cc.whip_cpu_cost, cc.whip_bypass_transcoding_cpu_cost, cc.url_cpu_cost,
            cc.min_idle_ratio) == (2.0, 2.0, 0.1, 2.0, 0.3)
    assert c.logging.level == "info" and not c.whip_proxy_enabled
    assert c.node_id.startswith("NE_") and c.service_name == "ingress" and c.source == str(GO_SAMPLE)


def test_go_defaults() -> None:
    c = parse_ingress_config(MINIMAL, env={})
    assert (c.rtmp_port, c.whip_port, c.http_relay_port, c.health_port, c.prometheus_port) == (1935, 8080, 9090, 0, 0)
    assert c.rtc_config.udp_port == "7885"  # WHIP on: one muxed UDP port, as InitWhipConf sets
    cc = c.cpu_cost
    assert (cc.rtmp_cpu_cost, cc.whip_cpu_cost, cc.whip_bypass_transcoding_cpu_cost, cc.url_cpu_cost,
            cc.min_idle_ratio) == (2.0, 2.0, 0.1, 2.0, 0.3)
    assert c.rtmps.port == 0 and c.warnings == []
    off = parse_ingress_config(MINIMAL + "rtmp_port: -1\nwhip_port: -1\n", env={})
    assert (off.rtmp_port, off.whip_port, off.rtc_config.udp_port) == (-1, -1, "")
    ranged = parse_ingress_config(MINIMAL + "rtc_config:\n  udp_port: 50000-50100\n  node_ip: 10.0.0.1,::1\n",
                                  env={})
    assert ranged.rtc_config.udp_ports() == (50000, 50100) and ranged.rtc_config.node_ip == "10.0.0.1,::1"
    ice = parse_ingress_config(MINIMAL + "rtc_config:\n  port_range_start: 40000\n  port_range_end: 41000\n", env={})
    assert ice.rtc_config.udp_port == ""  # an ICE port range replaces the default single port


def test_low_costs_warn_as_go_does(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lkmedia.service.config"):
        c = parse_ingress_config(MINIMAL + "cpu_cost:\n  rtmp_cpu_cost: 0.5\n  whip_bypass_transcoding_cpu_cost: 0.01\n",
                                 env={})
    assert c.cpu_cost.rtmp_cpu_cost == 0.5 and c.cpu_cost.whip_bypass_transcoding_cpu_cost == 0.01
    assert len(c.warnings) == 2 and "cpu_cost.rtmp_cpu_cost" in caplog.text
    assert "cpu_cost.whip_bypass_transcoding_cpu_cost" in caplog.text


def test_sources_and_env() -> None:
    c = parse_ingress_config("redis:\n  address: 127.0.0.1:6379\n", env=ENV)
    assert (c.api_key, c.api_secret, c.ws_url) == ("envkey", "envsecret", "wss://env.example")
    c = parse_ingress_config(MINIMAL, env=ENV)  # the YAML wins, as Go unmarshals over the env values
    assert (c.api_key, c.api_secret, c.ws_url) == ("k", "s", "ws://127.0.0.1:7880")


def test_body_beats_file_flag_beats_env(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(MINIMAL + "rtmp_port: 1001\n")
    b.write_text(MINIMAL + "rtmp_port: 1002\n")
    assert load_ingress_config(str(a), env={"INGRESS_CONFIG_FILE": str(b)}).rtmp_port == 1001
    assert load_ingress_config(None, env={"INGRESS_CONFIG_FILE": str(b)}).rtmp_port == 1002
    c = load_ingress_config(str(a), env={"INGRESS_CONFIG_BODY": MINIMAL + "rtmp_port: 1003\n"})
    assert c.rtmp_port == 1003 and c.source == "INGRESS_CONFIG_BODY"
    assert load_ingress_config(None, MINIMAL + "rtmp_port: 1004\n", env={}).source == "--config-body"
    with pytest.raises(ConfigError, match="INGRESS_CONFIG_FILE or INGRESS_CONFIG_BODY"):
        load_ingress_config(None, env={"EGRESS_CONFIG_BODY": MINIMAL})


def test_unknown_keys_warn_with_their_path(caplog: pytest.LogCaptureFixture) -> None:
    text = MINIMAL + "bogus: 1\nrtc_config:\n  udp_prot: 7885\ncpu_cost:\n  rtmp_cost: 1\n"
    with caplog.at_level(logging.WARNING, logger="lkmedia.service.config"):
        c = parse_ingress_config(text, env={})
    assert [w.split("'")[1] for w in c.warnings] == ["bogus", "rtc_config.udp_prot", "cpu_cost.rtmp_cost"]
    assert "rtc_config.udp_prot" in caplog.text


@pytest.mark.parametrize("text, key", [
    ("rtmp_port: -2", "rtmp_port"),
    ("rtmp_port: 70000", "rtmp_port"),
    ("rtmp_port: one", "rtmp_port"),
    ("whip_port: 1.5", "whip_port"),
    ("http_relay_port: -1", "http_relay_port"),
    ("health_port: 65536", "health_port"),
    ("whip_proxy_enabled: sometimes", "whip_proxy_enabled"),
    ("rtc_config:\n  udp_port: 7885-7000", "rtc_config.udp_port"),
    ("rtc_config:\n  udp_port: abc", "rtc_config.udp_port"),
    ("rtc_config:\n  node_ip: 1.2.3", "rtc_config.node_ip"),
    ("rtc_config:\n  node_ip: 1.1.1.1,2.2.2.2", "rtc_config.node_ip"),
    ("rtc_config:\n  use_external_ip: yes please", "rtc_config.use_external_ip"),
    ("rtc_config:\n  port_range_start: 5000\n  port_range_end: 4000", "rtc_config.port_range_end"),
    ("rtc_config: 7885", "rtc_config"),
    ("cpu_cost:\n  rtmp_cpu_cost: -1", "cpu_cost.rtmp_cpu_cost"),
    ("cpu_cost:\n  min_idle_ratio: 1.5", "cpu_cost.min_idle_ratio"),
    ("cpu_cost:\n  url_cpu_cost: lots", "cpu_cost.url_cpu_cost"),
    ("logging:\n  level: loud", "logging.level"),
    ("redis:\n  address: localhost", "redis.address"),
    ("ws_url: 127.0.0.1:7880", "ws_url"),
    ("rtmps:\n  port: 1936", "rtmps.cert_file"),
    ("rtmps:\n  port: 1935\n  cert_file: a\n  key_file: b", "rtmps.port"),
    ("rtmps:\n  port: 1936\n  cert_file: /nonexistent/cert.pem\n  key_file: /nonexistent/key.pem", "rtmps.cert_file"),
])
def test_bad_value_names_the_key(text: str, key: str) -> None:
    body = "api_key: k\napi_secret: s\n"
    body += "" if text.startswith("ws_url") else "ws_url: ws://127.0.0.1:7880\n"
    body += "" if text.startswith("redis") else "redis:\n  address: 127.0.0.1:6379\n"
    with pytest.raises(ConfigError) as e:
        parse_ingress_config(body + text + "\n", env={})
    assert str(e.value).startswith(key + ":"), str(e.value)


def test_required_connection_keys() -> None:
    with pytest.raises(ConfigError, match=r"api_secret \(or LIVEKIT_API_SECRET\).*redis.address"):
        parse_ingress_config("api_key: k\nws_url: ws://x:1\n", env={})
    assert parse_ingress_config("", env={}, require_connection=False).redis is None


def test_rtmps_with_readable_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("secret-key-material")
    c = parse_ingress_config(MINIMAL + f"rtmps:\n  port: 1936\n  cert_file: {cert}\n  key_file: {key}\n", env={})
    assert (c.rtmps.port, c.rtmps.cert_file, c.rtmps.key_file) == (1936, str(cert), str(key))
    assert c.redacted()["rtmps"] == {"port": 1936, "cert_file": str(cert), "key_file": "***"}


def test_secrets_never_shown() -> None:
    c = load_ingress_config(str(GO_SAMPLE), env={})
    shown = repr(c.redacted()) + repr(c)
    for s in ("example-secret-do-not-use-0123456789", "example-redis-password"):
        assert s not in shown
    red = c.redacted()
    assert red["api_secret"] == "***" and red["redis"]["password"] == "***" and red["api_key"] == "{API...123}"
    with pytest.raises(ConfigError) as e:
        parse_ingress_config(MINIMAL + "api_secret: [hunter2-secret]\n", env={})
    assert "hunter2" not in str(e.value)


def test_cli_checks_a_go_config_and_names_a_bad_key(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "lkmedia", "ingress", "--config", str(GO_SAMPLE), "--check"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "example-secret" not in ok.stdout + ok.stderr
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "INGRESS_CONFIG_BODY": MINIMAL + "rtmp_port: -5\n"}
    bad = subprocess.run([sys.executable, "-m", "lkmedia", "ingress", "--check"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert bad.returncode == 2 and "rtmp_port:" in bad.stderr and "Traceback" not in bad.stderr
