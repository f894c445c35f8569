"""The Go egress's config, read by lkmedia: a Go sample loads unchanged, env fills what YAML leaves
out, unknown keys warn with their path, bad values stop start-up naming the key, secrets stay out."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lkmedia.service.config import ConfigError, embedded_default, load_config, parse_config
from lkmedia.service.config_yaml import parse_duration

ROOT = Path(__file__).resolve().parents[2]
GO_SAMPLE = ROOT / "configs" / "egress-go-sample.yaml"
MINIMAL = "api_key: k\napi_secret: s\nws_url: ws://127.0.0.1:7880\nredis:\n  address: 127.0.0.1:6379\n"
SECRETS = ("example-secret-do-not-use-0123456789", "example-redis-password", "example-s3-secret-key-do-not-use",
           "example-azure-key==", "AKIAEXAMPLEKEY0000000", "service_account")


def test_go_sample_loads_unchanged() -> None:
    c = load_config(str(GO_SAMPLE), env={})
    assert c.warnings == []
    assert c.api_key == "APIexampleKey123" and c.ws_url == "ws://127.0.0.1:7880"
    assert c.redis is not None and c.redis.address == "127.0.0.1:6379" and c.redis.db == 0
    assert (c.health_port, c.prometheus_port, c.template_port) == (8080, 9090, 7980)
    cc = c.cpu_cost
    assert (cc.room_composite_cpu_cost, cc.sdk_audio_room_composite_cpu_cost, cc.track_cpu_cost) == (3.0, 0.5, 1.0)
    assert cc.max_cpu_utilization == 0.8 and cc.memory_source == "proc_rss" and cc.max_pulse_clients == 60
    sl = c.session_limits
    assert (sl.file_output_max_duration, sl.stream_output_max_duration, sl.segment_output_max_duration) == (
        3600.0, 5400.0, 10800.0)
    assert c.storage is not None and c.storage.s3 is not None
    s3 = c.storage.s3
    assert (s3.bucket, s3.force_path_style, s3.max_retries, s3.min_retry_delay) == ("egress", True, 3, 0.5)
    assert c.storage.prefix == "recordings/"
    assert c.backup is not None and c.backup.azure is not None and c.backup.azure.container_name == "egress-backup"
    assert c.debug.gcp is not None and c.debug.gcp.bucket == "egress-debug"
    assert c.latency.audio_mixer_latency == 2.75 and c.chrome_flags == {"--disable-gpu": True}
    assert c.node_id.startswith("NE_") and len(c.node_id) == 15


def test_our_default_and_embedded_default() -> None:
    c = load_config(str(ROOT / "configs" / "egress.yaml"), env={})
    assert c.warnings == [] and c.api_key == "devkey" and c.redis and c.redis.address == "127.0.0.1:6379"
    e = embedded_default()
    assert (e.api_key, e.api_secret, e.ws_url) == ("devkey", "secret", "ws://127.0.0.1:7880")
    assert e.redis is not None and e.redis.address == "127.0.0.1:6379"


def test_go_defaults() -> None:
    c = parse_config(MINIMAL, env={})
    assert c.template_port == 7980 and c.template_base == "http://localhost:7980/"
    assert (c.io_create_timeout, c.io_update_timeout, c.io_workers, c.max_upload_queue) == (15.0, 30.0, 5, 60)
    cc = c.cpu_cost
    assert (cc.max_cpu_utilization, cc.room_composite_cpu_cost, cc.audio_room_composite_cpu_cost,
            cc.web_cpu_cost, cc.audio_web_cpu_cost, cc.participant_cpu_cost, cc.track_composite_cpu_cost,
            cc.track_cpu_cost) == (0.8, 4.0, 1.0, 4.0, 1.0, 2.0, 1.0, 0.5)
    assert cc.sdk_audio_room_composite_cpu_cost == 1.0 and cc.cpu_kill_grace_sec == 30
    assert c.logging.level == "info" and c.health_port == 0 and c.prometheus_port == 0
    lat = c.latency
    assert (lat.jitter_buffer_latency, lat.pipeline_latency, lat.old_packet_threshold,
            lat.rtp_max_allowed_ts_diff, lat.rtp_max_drift_adjustment) == (2.0, 3.0, 2.2, 5.0, 0.005)
    c2 = parse_config(MINIMAL + "cpu_cost:\n  audio_room_composite_cpu_cost: 0.7\n  memory_cost: 2\n"
                      "storage:\n  s3:\n    bucket: b\n    max_retries: 0\n", env={})
    assert c2.cpu_cost.sdk_audio_room_composite_cpu_cost == 0.7  # follows the audio cost, as in Go
    assert c2.cpu_cost.sdk_audio_room_composite_memory_cost == 2.0
    assert c2.storage and c2.storage.s3 and c2.storage.s3.max_retries == 5 and c2.storage.s3.max_retry_delay == 5.0


def test_env_fills_what_yaml_leaves_out_yaml_wins() -> None:
    env = {"LIVEKIT_API_KEY": "envkey", "LIVEKIT_API_SECRET": "envsecret", "LIVEKIT_WS_URL": "wss://env.example"}
    c = parse_config("redis:\n  address: 127.0.0.1:6379\n", env=env)
    assert (c.api_key, c.api_secret, c.ws_url) == ("envkey", "envsecret", "wss://env.example")
    c = parse_config(MINIMAL, env=env)  # Go sets the env values first, then the YAML overwrites them
    assert (c.api_key, c.api_secret, c.ws_url) == ("k", "s", "ws://127.0.0.1:7880")


def test_sources_body_beats_file_flag_beats_env(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(MINIMAL + "cluster_id: from-a\n")
    b.write_text(MINIMAL + "cluster_id: from-b\n")
    assert load_config(str(a), env={"EGRESS_CONFIG_FILE": str(b)}).cluster_id == "from-a"
    assert load_config(None, env={"EGRESS_CONFIG_FILE": str(b)}).cluster_id == "from-b"
    body_env = {"EGRESS_CONFIG_FILE": str(b), "EGRESS_CONFIG_BODY": MINIMAL + "cluster_id: from-body\n"}
    c = load_config(str(a), env=body_env)
    assert c.cluster_id == "from-body" and c.source == "EGRESS_CONFIG_BODY"
    with pytest.raises(ConfigError, match="no config"):
        load_config(None, env={})
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(str(tmp_path / "missing.yaml"), env={})


def test_unknown_keys_warn_with_their_path(caplog: pytest.LogCaptureFixture) -> None:
    text = MINIMAL + "bogus: 1\nstorage:\n  s3:\n    bucket: b\n    bukket: typo\nlatency_overrides:\n  nope: {}\n"
    with caplog.at_level(logging.WARNING, logger="lkmedia.service.config"):
        c = parse_config(text, env={})
    assert any("'bogus'" in w for w in c.warnings)
    assert any("'storage.s3.bukket'" in w and "line 10" in w for w in c.warnings)
    assert any("latency_overrides.nope" in w for w in c.warnings)
    assert "storage.s3.bukket" in caplog.text and c.storage and c.storage.s3 and c.storage.s3.bucket == "b"


@pytest.mark.parametrize("text, key", [
    ("health_port: -1", "health_port"),
    ("prometheus_port: 70000", "prometheus_port"),
    ("health_port: '8080'", "health_port"),
    ("health_port: 80.5", "health_port"),
    ("insecure: maybe", "insecure"),
    ("cpu_cost:\n  max_cpu_utilization: 1.5", "cpu_cost.max_cpu_utilization"),
    ("cpu_cost:\n  max_cpu_utilization: 0", "cpu_cost.max_cpu_utilization"),
    ("cpu_cost:\n  track_cpu_cost: -1", "cpu_cost.track_cpu_cost"),
    ("cpu_cost:\n  max_memory: lots", "cpu_cost.max_memory"),
    ("redis:\n  address: localhost", "redis.address"),
    ("redis:\n  address: 127.0.0.1:0", "redis.address"),
    ("redis:\n  address: 127.0.0.1:6379\n  cluster_addresses: [a:1, b]", "redis.cluster_addresses[1]"),
    ("redis:\n  address: 127.0.0.1:6379\n  db: -2", "redis.db"),
    ("session_limits:\n  file_output_max_duration: 3 hours", "session_limits.file_output_max_duration"),
    ("session_limits:\n  stream_output_max_duration: 3600", "session_limits.stream_output_max_duration"),
    ("session_limits:\n  segment_output_max_duration: -1h", "session_limits.segment_output_max_duration"),
    ("io_create_timeout: 15", "io_create_timeout"),
    ("storage:\n  s3:\n    max_retry_delay: soon", "storage.s3.max_retry_delay"),
    ("storage: [s3]", "storage"),
    ("logging:\n  level: loud", "logging.level"),
    ("ws_url: 127.0.0.1:7880", "ws_url"),
    ("health_port: 1\nhealth_port: 2", "health_port"),
])
def test_bad_value_names_the_key(text: str, key: str) -> None:
    body = "api_key: k\napi_secret: s\n"
    body += "" if text.startswith("ws_url") else "ws_url: ws://127.0.0.1:7880\n"
    body += "" if text.startswith("redis") else "redis:\n  address: 127.0.0.1:6379\n"
    with pytest.raises(ConfigError) as e:
        parse_config(body + text + "\n", env={})
    assert str(e.value).startswith(key + ":"), str(e.value)


def test_required_connection_keys() -> None:
    with pytest.raises(ConfigError, match=r"api_secret \(or LIVEKIT_API_SECRET\).*redis.address"):
        parse_config("api_key: k\nws_url: ws://x:1\n", env={})
    assert parse_config("", env={}, require_connection=False).redis is None


def test_secrets_never_shown() -> None:
    c = load_config(str(GO_SAMPLE), env={})
    shown = repr(c.redacted()) + repr(c)
    for s in SECRETS:
        assert s not in shown
    red = c.redacted()
    assert red["api_secret"] == "***" and red["redis"]["password"] == "***"
    assert red["storage"]["s3"]["secret"] == "***" and red["backup"]["azure"]["account_key"] == "***"
    assert red["api_key"] == "{API...123}" and red["storage"]["s3"]["bucket"] == "egress"
    assert "warnings" not in red
    # errors about secret keys never echo the value, nor does a YAML syntax error echo the line
    bad = [MINIMAL + "redis_x: 1\napi_secret: [hunter2-secret]\n",
           MINIMAL.replace("api_secret: s", "api_secret: 'hunter2-secret") + "x: ':\n",
           MINIMAL + "storage:\n  s3:\n    secret: {hunter2-secret: 1}\n",
           MINIMAL.replace("redis:\n  address: 127.0.0.1:6379", "redis:\n  password: [hunter2-secret]")]
    for text in bad:
        with pytest.raises(ConfigError) as e:
            parse_config(text, env={})
        assert "hunter2" not in str(e.value), str(e.value)


def test_legacy_keys_mapped_with_warnings() -> None:
    text = MINIMAL + "log_level: debug\ns3:\n  bucket: old\n  secret: x\nbackup_storage: /backup\n"
    c = parse_config(text, env={})
    assert c.logging.level == "debug"
    assert c.storage is not None and c.storage.s3 is not None and c.storage.s3.bucket == "old"
    assert len(c.warnings) == 3 and not any("unknown" in w for w in c.warnings)


def test_yaml_features_as_go_reads_them() -> None:
    text = (MINIMAL.replace("api_key: k", "api_key: 0123") + "x_costs: &c\n  track_cpu_cost: 0.25\n  web_cpu_cost: 2.5\n"
            "cpu_cost:\n  <<: *c\n  participant_cpu_cost: 1.5\n  track_cpu_cost: 0.3\nchrome_flags:\n  --foo: bar\n  --n: 3\n")
    c = parse_config(text, env={})
    assert c.api_key == "0123"  # a string key keeps its text, as yaml.v3 decodes into a Go string
    assert c.cpu_cost.web_cpu_cost == 2.5  # merged
    assert c.cpu_cost.track_cpu_cost == 0.3 and c.cpu_cost.participant_cpu_cost == 1.5  # merged, then overridden
    assert c.chrome_flags == {"--foo": "bar", "--n": 3}
    assert any("'x_costs'" in w for w in c.warnings)  # the anchor's holder is an unknown key, nothing more
    assert parse_config(MINIMAL + "health_port:\n", env={}).health_port == 0  # null leaves the default


@pytest.mark.parametrize("text, seconds", [
    ("3h", 10800.0), ("90m", 5400.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("150ms", 0.15), ("0", 0.0),
    ("2h45m30.5s", 9930.5), ("10us", 1e-5), ("1µs", 1e-6), ("-2s", -2.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "3", "h", "3 h", "3hours", "1.2.3s", "s3"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
