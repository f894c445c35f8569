"""The Go egress's service configuration, read so that a Go egress config file starts lkmedia unchanged.

Key names, defaults and the "zero means default" rules follow livekit/egress ``pkg/config``
(``base.go``, ``service.go``, ``storage.go``), livekit/protocol ``redis``/``logger`` and
livekit/storage. Where the Go service is lax we are too (it ignores unknown keys: we warn,
naming the dotted path); where a value cannot work we stop start-up with a ``ConfigError``
naming the key. Secret values never appear in errors, warnings or ``repr``; log ``redacted()``.

Sources, as ``cmd/server/main.go`` resolves them: a config body (``--config-body`` or
``EGRESS_CONFIG_BODY``) wins over a config file (``--config`` or ``EGRESS_CONFIG_FILE``; the
flag beats the variable). ``LIVEKIT_API_KEY``/``_SECRET``/``_WS_URL`` only fill ``api_key``,
``api_secret``, ``ws_url`` when the YAML does not set them (Go sets them first, then unmarshals).
"""
from __future__ import annotations

import logging
import os
import re
import secrets as _random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .config_yaml import (
    ConfigError,
    Seconds,
    _checked,
    _Decoder,
    _non_negative,
    _partial,
    _port,
    _positive,
    _redact,
    _secret,
    _utilization,
    compose,
    read_source,
)

log = logging.getLogger("lkmedia.service.config")
C = TypeVar("C")



@dataclass
class ProxyConfig:
    url: str = ""
    username: str = ""
    password: str = _secret()


@dataclass
class S3Config:
    access_key: str = _partial()
    secret: str = _secret()
    session_token: str = _secret()
    assume_role_arn: str = ""
    assume_role_external_id: str = ""
    region: str = ""
    endpoint: str = ""
    bucket: str = ""
    force_path_style: bool = False
    proxy_config: ProxyConfig | None = None
    max_retries: int = _checked(5, _non_negative)  # code default 5 (README says 3)
    max_retry_delay: Seconds = _checked(Seconds(5.0), _non_negative)
    min_retry_delay: Seconds = _checked(Seconds(0.1), _non_negative)  # code 100 ms (README 500 ms)
    metadata: dict[str, str] = field(default_factory=dict)
    tagging: str = ""
    content_disposition: str = ""
    aws_log_level: str = ""  # README key; read, unused
    proxy: str = ""  # deprecated plain proxy URL


@dataclass
class _UploadRetries:
    """lkmedia's keys for GCS, Azure and OSS (the Go egress has them for S3 only):
    the same retry policy, and the same defaults, as the S3 section."""
    max_retries: int = _checked(5, _non_negative)
    max_retry_delay: Seconds = _checked(Seconds(5.0), _non_negative)
    min_retry_delay: Seconds = _checked(Seconds(0.1), _non_negative)


@dataclass
class GCPConfig(_UploadRetries):
    credentials_json: str = _secret()
    bucket: str = ""
    proxy_config: ProxyConfig | None = None
    endpoint: str = ""  # lkmedia: the API root (an emulator); STORAGE_EMULATOR_HOST works too


@dataclass
class AzureConfig(_UploadRetries):
    account_name: str = ""
    account_key: str = _secret()
    container_name: str = ""
    endpoint: str = ""  # lkmedia: the blob endpoint, if not https://<account>.blob.core.windows.net


@dataclass
class AliOSSConfig(_UploadRetries):
    access_key: str = _partial()
    secret: str = _secret()
    region: str = ""  # README key (the Go struct has none)
    endpoint: str = ""
    bucket: str = ""


@dataclass
class StorageConfig:
    prefix: str = ""
    generate_presigned_url: bool = False
    s3: S3Config | None = None
    azure: AzureConfig | None = None
    gcp: GCPConfig | None = None
    alioss: AliOSSConfig | None = None

    def is_local(self) -> bool:
        return self.s3 is None and self.azure is None and self.gcp is None and self.alioss is None


@dataclass
class DebugConfig(StorageConfig):
    """``debug:`` with its storage keys inline (where dot files and pprof go)."""
    enable_profiling: bool = False
    enable_track_logging: bool = False
    enable_stream_logging: bool = False
    enable_chrome_logging: bool = False
    path_prefix: str = ""  # pre-1.9 name of prefix


@dataclass
class TLSConfig:
    enabled: bool = False
    insecure: bool = False
    server_name: str = ""
    ca_cert_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""


@dataclass
class RedisConfig:
    address: str = ""
    username: str = ""
    password: str = _secret()
    db: int = _checked(0, _non_negative)
    use_tls: bool = False
    tls: TLSConfig | None = None
    sentinel_master_name: str = ""
    sentinel_username: str = ""
    sentinel_password: str = _secret()
    sentinel_addresses: list[str] = field(default_factory=list)
    cluster_addresses: list[str] = field(default_factory=list)
    dial_timeout: int = _checked(0, _non_negative)  # milliseconds, as in Go
    read_timeout: int = _checked(0, _non_negative)
    write_timeout: int = _checked(0, _non_negative)
    max_redirects: int | None = None
    pool_timeout: Seconds = _checked(Seconds(0.0), _non_negative)
    pool_size: int = _checked(0, _non_negative)

    def is_configured(self) -> bool:
        return bool(self.address or self.sentinel_addresses or self.cluster_addresses)


_LEVELS = ("debug", "info", "warn", "warning", "error", "dpanic", "panic", "fatal")


@dataclass
class LoggingConfig:
    level: str = _checked("info", lambda v: None if v.lower() in _LEVELS else f"must be one of {_LEVELS}")
    json: bool = False
    sample: bool = False
    component_levels: dict[str, str] = field(default_factory=dict)
    sample_initial: int = 0
    sample_interval: int = 0
    item_sample_seconds: int = 0
    item_sample_initial: int = 0
    item_sample_interval: int = 0


@dataclass
class CPUCostConfig:
    """``cpu_cost:``; a zero or absent cost means the Go default (set in ``_apply_defaults``)."""
    max_cpu_utilization: float = _checked(0.0, _utilization)  # absent = 0.8
    max_memory: float = _checked(0.0, _non_negative)  # GB, 0 = no memory check
    memory_cost: float = _checked(0.0, _non_negative)  # GB
    room_composite_cpu_cost: float = _checked(0.0, _non_negative)
    audio_room_composite_cpu_cost: float = _checked(0.0, _non_negative)
    sdk_audio_room_composite_cpu_cost: float = _checked(0.0, _non_negative)
    sdk_audio_room_composite_memory_cost: float = _checked(0.0, _non_negative)
    web_cpu_cost: float = _checked(0.0, _non_negative)
    audio_web_cpu_cost: float = _checked(0.0, _non_negative)
    participant_cpu_cost: float = _checked(0.0, _non_negative)
    track_composite_cpu_cost: float = _checked(0.0, _non_negative)
    track_cpu_cost: float = _checked(0.0, _non_negative)
    native_room_composite_cpu_cost: float = _checked(0.0, _non_negative)  # lkmedia's: no Chrome
    max_pulse_clients: int = 0
    memory_source: str = ""  # proc_rss | cgroup
    memory_kill_grace_sec: int = _checked(0, _non_negative)
    cpu_kill_grace_sec: int = 0


@dataclass
class SessionLimits:
    file_output_max_duration: Seconds = _checked(Seconds(0.0), _non_negative)  # 0 = no limit
    file_output_max_size: int = _checked(0, _non_negative)  # bytes
    stream_output_max_duration: Seconds = _checked(Seconds(0.0), _non_negative)
    segment_output_max_duration: Seconds = _checked(Seconds(0.0), _non_negative)
    image_output_max_duration: Seconds = _checked(Seconds(0.0), _non_negative)


@dataclass
class LatencyConfig:
    jitter_buffer_latency: Seconds = _checked(Seconds(0.0), _non_negative)
    audio_mixer_latency: Seconds = _checked(Seconds(0.0), _non_negative)
    pipeline_latency: Seconds = _checked(Seconds(0.0), _non_negative)
    old_packet_threshold: Seconds = _checked(Seconds(0.0), _non_negative)
    # Go tags these three `ymal:` (typo), so YAML cannot set them there; we accept them.
    rtp_max_allowed_ts_diff: Seconds = _checked(Seconds(0.0), _non_negative)
    rtp_max_drift_adjustment: Seconds = _checked(Seconds(0.0), _non_negative)
    rtp_drift_adjustment_window_percent: float = 0.0


@dataclass
class AudioTempoController:
    enabled: bool = False
    adjustment_rate: float = 0.0


@dataclass
class QueueConfig:
    """lkmedia's own ``queue:`` section (lkmedia.worker.queue)."""
    enabled: bool = True
    max_wait: Seconds = _checked(Seconds(600.0), _non_negative)  # then FAILED; 0 = wait for ever
    dedup_window: Seconds = _checked(Seconds(30.0), _non_negative)  # 0 = no dedup


@dataclass
class JobsConfig:
    """lkmedia's own ``jobs:`` section: each egress runs in its own process under the service
    (lkmedia.worker.supervisor). Limits per job, beside the Go node-wide ``cpu_cost`` policy:
    a job over ``max_memory`` is killed (FAILED, outputs finalised), one above ``max_cpu`` for
    10 s is stopped (COMPLETE) and killed if still running ``cpu_cost.cpu_kill_grace_sec`` later."""
    max_memory: float = _checked(0.0, _non_negative)  # GB per job, 0 = no limit
    max_cpu: float = _checked(0.0, _non_negative)  # CPUs per job, 0 = no limit
    kill_timeout: Seconds = _checked(Seconds(20.0), _non_negative)  # a killed job's finalising, then SIGKILL
    calibrate: bool = False  # admit by the CPU each request type was measured to use here
    spare: bool = True  # keep one job process started and waiting: a job starts without the imports
    ping_interval: Seconds = _checked(Seconds(1.0), _positive)  # each job process's heartbeat (its Pong, unasked)
    ping_timeout: Seconds = _checked(Seconds(10.0), _positive)  # unanswered this long: hung, SIGKILL, FAILED
    max_starting: int = _checked(0, _non_negative)  # jobs starting at once (0: one per CPU); others queue
    light_per_process: int = _checked(25, _non_negative)  # track egresses sharing one process (0, 1: their own)
    freeze_timeout: Seconds = _checked(Seconds(30.0), _positive)  # an output taking no input this long: FAILED
    start_signal_timeout: Seconds = _checked(Seconds(60.0), _positive)  # Chrome: no START_RECORDING by then: FAILED


@dataclass
class ServiceConfig:
    api_key: str = _partial()
    api_secret: str = _secret()
    ws_url: str = ""
    redis: RedisConfig | None = None
    health_port: int = _checked(0, _port)
    template_port: int = _checked(0, _port)
    prometheus_port: int = _checked(0, _port)
    debug_handler_port: int = _checked(0, _port)
    template_base: str = ""
    cluster_id: str = ""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    enable_chrome_sandbox: bool = False
    insecure: bool = False
    chrome_flags: dict[str, Any] = field(default_factory=dict)
    max_upload_queue: int = 0  # minutes
    disallow_local_storage: bool = False
    io_create_timeout: Seconds = _checked(Seconds(0.0), _non_negative)
    io_update_timeout: Seconds = _checked(Seconds(0.0), _non_negative)
    io_selection_timeout: Seconds = _checked(Seconds(0.0), _non_negative)
    io_workers: int = 0
    session_limits: SessionLimits = field(default_factory=SessionLimits)
    storage: StorageConfig | None = None
    backup: StorageConfig | None = None
    s3_assume_role_key: str = _partial()
    s3_assume_role_secret: str = _secret()
    s3_assume_role_arn: str = ""
    s3_assume_role_external_id: str = ""
    cpu_cost: CPUCostConfig = field(default_factory=CPUCostConfig)
    pulse_sink_reap_grace_sec: int = 0
    debug: DebugConfig = field(default_factory=DebugConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    latency_overrides: dict[str, LatencyConfig] = field(default_factory=dict)
    video_encoder_threads: int = _checked(0, _non_negative)
    enable_one_shot_sender_report_sync: bool = False
    enable_sync_engine: bool = False
    audio_tempo_controller: AudioTempoController = field(default_factory=AudioTempoController)
    test_overrides: dict[str, Any] = field(default_factory=dict)
    # lkmedia's own keys
    output_roots: list[str] = field(default_factory=lambda: ["/"])  # where absolute output paths may go
    drain_timeout: Seconds = _checked(Seconds(0.0), _non_negative)  # SIGTERM: 0 = wait for every job
    queue: QueueConfig = field(default_factory=QueueConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    # legacy keys older Go releases read (mapped, with a warning)
    s3: S3Config | None = None
    azure: AzureConfig | None = None
    gcp: GCPConfig | None = None
    alioss: AliOSSConfig | None = None
    backup_storage: str = ""
    log_level: str = ""
    # not from YAML
    node_id: str = field(default="", metadata={"internal": True})
    source: str = field(default="", metadata={"internal": True})
    warnings: list[str] = field(default_factory=list, metadata={"internal": True})

    def redacted(self) -> dict[str, Any]:
        """A plain dict fit for logs: secrets replaced, identifiers shortened."""
        return _redact(self)


_ENV_KEYS = (("api_key", "LIVEKIT_API_KEY"), ("api_secret", "LIVEKIT_API_SECRET"), ("ws_url", "LIVEKIT_WS_URL"))
_LATENCY_TYPES = ("template", "web", "media", "room_composite", "participant", "track_composite", "track")
_ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # shortuuid's, as Go NewGuid


def _check_address(addr: str, path: str) -> None:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{path}: must be host:port (e.g. 127.0.0.1:6379), got {addr!r}")


def _apply_defaults(c: ServiceConfig, d: _Decoder) -> None:
    """Go's ``InitDefaults`` plus the legacy mappings, then the checks that span keys."""
    _legacy_keys(c, d)
    _io_defaults(c)
    _cpu_cost_defaults(c.cpu_cost, d)
    for lat in (c.latency, *c.latency_overrides.values()):
        _latency_defaults(lat)
    for key in c.latency_overrides:
        if key not in _LATENCY_TYPES:
            d.warn(f"latency_overrides.{key}: not a request type {_LATENCY_TYPES}, never used")
    atc = c.audio_tempo_controller
    if atc.enabled and not 0 < atc.adjustment_rate <= 0.2:
        atc.adjustment_rate = 0.05
    _check_addresses(c)


def _legacy_keys(c: ServiceConfig, d: _Decoder) -> None:
    if c.log_level:
        d.warn("log_level is deprecated: use logging.level")
        if "logging" not in d.present:
            c.logging.level = c.log_level
    legacy = [k for k in ("s3", "azure", "gcp", "alioss") if getattr(c, k) is not None]
    if legacy:
        d.warn(f"top-level {', '.join(legacy)} is deprecated: move it under storage:")
        if c.storage is None:
            c.storage = StorageConfig(s3=c.s3, azure=c.azure, gcp=c.gcp, alioss=c.alioss)
    if c.backup_storage:
        d.warn("backup_storage (a local path) is obsolete: use backup: with a storage config")
    for sc in (c.storage, c.backup, c.debug, StorageConfig(s3=c.s3) if c.s3 is not None else None):
        if sc is not None and sc.s3 is not None:  # zero means the upload code's default
            sc.s3.max_retries = sc.s3.max_retries or 5
            sc.s3.max_retry_delay = sc.s3.max_retry_delay or Seconds(5.0)
            sc.s3.min_retry_delay = sc.s3.min_retry_delay or Seconds(0.1)
    if c.debug.path_prefix and not c.debug.prefix:
        c.debug.prefix = c.debug.path_prefix


def _io_defaults(c: ServiceConfig) -> None:
    if not c.template_port:
        c.template_port = 7980
    if not c.template_base:
        c.template_base = f"http://localhost:{c.template_port}/"
    c.io_create_timeout = c.io_create_timeout or Seconds(15.0)
    c.io_update_timeout = c.io_update_timeout or Seconds(30.0)
    if c.io_workers <= 0:
        c.io_workers = 5
    if c.max_upload_queue <= 0:
        c.max_upload_queue = 60
    if c.pulse_sink_reap_grace_sec == 0:
        c.pulse_sink_reap_grace_sec = 30


def _cpu_cost_defaults(cc: CPUCostConfig, d: _Decoder) -> None:
    cc.max_cpu_utilization = cc.max_cpu_utilization or 0.8
    for name, default in (("room_composite_cpu_cost", 4.0), ("audio_room_composite_cpu_cost", 1.0),
                          ("web_cpu_cost", 4.0), ("audio_web_cpu_cost", 1.0), ("participant_cpu_cost", 2.0),
                          ("track_composite_cpu_cost", 1.0), ("track_cpu_cost", 0.5),
                          ("native_room_composite_cpu_cost", 1.5)):
        if getattr(cc, name) <= 0:
            setattr(cc, name, default)
    cc.sdk_audio_room_composite_cpu_cost = (cc.sdk_audio_room_composite_cpu_cost
                                            or cc.audio_room_composite_cpu_cost)
    cc.sdk_audio_room_composite_memory_cost = cc.sdk_audio_room_composite_memory_cost or cc.memory_cost
    if cc.max_pulse_clients == 0:
        cc.max_pulse_clients = 60
    if cc.cpu_kill_grace_sec <= 0:
        cc.cpu_kill_grace_sec = 30
    if cc.memory_source not in ("", "proc_rss", "cgroup"):
        d.warn(f"cpu_cost.memory_source {cc.memory_source!r} unknown, using proc_rss (as the Go egress does)")
        cc.memory_source = ""
    cc.memory_source = cc.memory_source or "proc_rss"


def _check_addresses(c: ServiceConfig) -> None:
    check_connection_values(c)
    for i, root in enumerate(c.output_roots):
        if not isinstance(root, str) or not root.startswith("/"):
            raise ConfigError(f"output_roots[{i}]: must be an absolute directory, got {root!r}")


def check_connection_values(c: Any) -> None:
    """``redis`` addresses and ``ws_url`` of any service config (egress, ingress) that can work."""
    if c.redis is not None:
        if c.redis.address:
            _check_address(c.redis.address, "redis.address")
        for key in ("sentinel_addresses", "cluster_addresses"):
            for i, addr in enumerate(getattr(c.redis, key)):
                _check_address(addr, f"redis.{key}[{i}]")
    if c.ws_url and not re.match(r"(?i)^(wss?|https?)://[^/\s]+", c.ws_url):
        raise ConfigError(f"ws_url: must be a ws://, wss://, http:// or https:// URL, got {c.ws_url!r}")


def _latency_defaults(lat: LatencyConfig) -> None:
    lat.jitter_buffer_latency = lat.jitter_buffer_latency or Seconds(2.0)
    lat.audio_mixer_latency = lat.audio_mixer_latency or Seconds(2.75)
    lat.pipeline_latency = lat.pipeline_latency or Seconds(3.0)
    lat.rtp_max_allowed_ts_diff = Seconds(max(lat.rtp_max_allowed_ts_diff or 5.0, lat.jitter_buffer_latency))
    lat.rtp_max_drift_adjustment = lat.rtp_max_drift_adjustment or Seconds(0.005)
    lat.old_packet_threshold = lat.old_packet_threshold or Seconds(2.2)


def new_node_id() -> str:
    """``NE_`` + 12 characters, the shape of the Go egress's node IDs."""
    return "NE_" + "".join(_random.choice(_ID_ALPHABET) for _ in range(12))


def parse_config(text: str, *, source: str = "<body>", env: Mapping[str, str] | None = None,
                 require_connection: bool = True) -> ServiceConfig:
    """YAML text → validated ``ServiceConfig`` with Go's defaults; ``ConfigError`` names the bad key."""
    return decode_service_config(ServiceConfig, text, source, env, _apply_defaults, require_connection)


def decode_service_config(cls: type[C], text: str, source: str, env: Mapping[str, str] | None,
                          apply_defaults: Callable[[C, _Decoder], None], require_connection: bool) -> C:
    """What every service's config goes through (egress, ingress), as the Go services read
    theirs: YAML over the ``LIVEKIT_*`` environment, then the defaults and checks of
    ``apply_defaults``, then the connection keys; a new node ID."""
    env = os.environ if env is None else env
    root = compose(text, source)
    d = _Decoder()
    conf: Any = cls() if root is None else d.struct(cls, root, "")  # a dataclass with the common keys
    for key, var in _ENV_KEYS:
        if key not in d.present and env.get(var):
            setattr(conf, key, env[var])
    apply_defaults(conf, d)
    if require_connection:
        _check_connection(conf)
    conf.node_id = new_node_id()
    conf.source = source
    conf.warnings = d.warnings
    out: C = conf
    return out


def _check_connection(c: Any) -> None:
    missing = [f"{k} (or {v})" for k, v in _ENV_KEYS if not getattr(c, k)]
    if c.redis is None or not c.redis.is_configured():
        missing.append("redis.address (the Redis livekit-server uses)")
    if missing:
        raise ConfigError("required config missing: " + ", ".join(missing))


def load_config(config_file: str | None = None, config_body: str | None = None, *,
                env: Mapping[str, str] | None = None, require_connection: bool = True) -> ServiceConfig:
    """The service config from flags or env, resolved the way the Go egress resolves them."""
    env = os.environ if env is None else env
    text, source = read_source(config_file, config_body, env, "EGRESS")
    return parse_config(text, source=source, env=env, require_connection=require_connection)


def embedded_default(env: Mapping[str, str] | None = None) -> ServiceConfig:
    """The local dev stack: ``livekit-server --dev`` keys, its URL and a local Redis."""
    body = ("api_key: devkey\napi_secret: secret\nws_url: ws://127.0.0.1:7880\n"
            "redis:\n  address: 127.0.0.1:6379\n")
    return parse_config(body, source="<embedded default>", env={} if env is None else env)
