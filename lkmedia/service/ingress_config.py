"""The Go ingress's service configuration, read so that a Go ingress config file starts
``lkmedia ingress`` unchanged.

Key names and defaults follow livekit/ingress ``pkg/config/config.go`` (``ServiceConfig``,
``CPUCostConfig``, ``InitDefaults``), livekit/mediatransportutil ``rtcconfig.RTCConfig``
(``rtc_config:``) and livekit/protocol ``redis``/``logger`` (shared with the egress config).
As for the egress: an unknown key is a warning naming its dotted path, a value that cannot
work stops start-up with a ``ConfigError`` naming the key, secrets never appear in errors,
warnings or ``repr`` (log ``redacted()``).

Sources, as the Go ingress's ``cmd/server/main.go`` resolves them: a body (``--config-body``
or ``INGRESS_CONFIG_BODY``) wins over a file (``--config`` or ``INGRESS_CONFIG_FILE``).
``LIVEKIT_API_KEY``/``_SECRET``/``_WS_URL`` fill ``api_key``, ``api_secret``, ``ws_url`` when
the YAML does not set them.

Where lkmedia differs: the per-input CPU costs, which the Go code leaves at 0 (and then
warns), default to the values its README documents (2.0; 0.1 for WHIP without transcoding);
``rtmps:`` is lkmedia's own (a TLS RTMP listener, which the Go ingress lacks).
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .config import LoggingConfig, RedisConfig, check_connection_values, decode_service_config
from .config_yaml import (
    ConfigError,
    Seconds,
    _checked,
    _Decoder,
    _non_negative,
    _partial,
    _port,
    _redact,
    _secret,
    read_source,
)

DEFAULT_RTMP_PORT = 1935
DEFAULT_WHIP_PORT = 8080
DEFAULT_HTTP_RELAY_PORT = 9090
DEFAULT_WHIP_UDP_PORT = 7885  # InitWhipConf: one muxed UDP port when none is configured
DEFAULT_MIN_IDLE_RATIO = 0.3


def _listen_port(v: int) -> str | None:
    return None if v == -1 or 0 <= v <= 65535 else "must be a port number 1-65535, or -1 to turn it off"


def _port_range(v: str) -> str | None:
    """mediatransportutil ``PortRange``: ``7885`` or ``"50000-60000"``."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", v)
    if not m:
        return "must be a port (7885) or a range (\"50000-60000\")"
    start, end = int(m.group(1)), int(m.group(2) or 0)
    if not 0 <= start <= 65535 or not 0 <= end <= 65535:
        return "ports must be 0-65535"
    if m.group(2) is not None and end <= start:
        return f"end port {end} must be greater than start port {start}"
    return None


def _node_ip(v: str) -> str | None:
    parts = [p.strip() for p in v.split(",")] if v.strip() else []
    if len(parts) > 2:
        return "must be an IPv4 address, an IPv6 address, or both separated by a comma"
    versions = []
    for p in parts:
        try:
            versions.append(ipaddress.ip_address(p).version)
        except ValueError:
            return f"{p!r} is not an IP address"
    if len(versions) == 2 and versions[0] == versions[1]:
        return f"two IPv{versions[0]} addresses given"
    return None


def _ratio(v: float) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


@dataclass
class IncludesExcludes:
    includes: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)


@dataclass
class BatchIOConfig:
    batch_size: int = _checked(0, _non_negative)
    max_flush_interval: Seconds = _checked(Seconds(0.0), _non_negative)


@dataclass
class RTCConfig:
    """``rtc_config:`` (mediatransportutil ``rtcconfig.RTCConfig``), used for WHIP ICE."""
    udp_port: str = _checked("", _port_range)  # a port or "start-end"
    tcp_port: int = _checked(0, _port)
    port_range_start: int = _checked(0, _port)
    port_range_end: int = _checked(0, _port)
    use_stun_port_as_ice: bool = False
    node_ip: str = _checked("", _node_ip)
    additional_host_ips: list[str] = field(default_factory=list)
    stun_servers: list[str] = field(default_factory=list)
    use_external_ip: bool = False
    require_ipv4: bool = False
    skip_external_ip_validation: bool = False
    advertise_internal_ip: bool = False
    use_ice_lite: bool = False
    interfaces: IncludesExcludes = field(default_factory=IncludesExcludes)
    ips: IncludesExcludes = field(default_factory=IncludesExcludes)
    enable_loopback_candidate: bool = False
    use_mdns: bool = False
    external_ip_only: bool = False
    batch_io: BatchIOConfig = field(default_factory=BatchIOConfig)
    sctp_min_cwnd: int = 0
    sctp_fast_rtx_wnd: int = 0
    sctp_cwnd_ca_step: int = 0
    host_acceptance_min_wait: Seconds = _checked(Seconds(0.0), _non_negative)
    srflx_acceptance_min_wait: Seconds = _checked(Seconds(0.0), _non_negative)
    prflx_acceptance_min_wait: Seconds = _checked(Seconds(0.0), _non_negative)
    relay_acceptance_min_wait: Seconds = _checked(Seconds(0.0), _non_negative)
    force_tcp: bool = False

    def udp_ports(self) -> tuple[int, int]:
        """(start, end) of ``udp_port``; end 0 for a single port, (0, 0) when unset."""
        if not self.udp_port.strip():
            return 0, 0
        start, _, end = self.udp_port.partition("-")
        return int(start), int(end or 0)


@dataclass
class IngressCPUCost:
    """``cpu_cost:``: what admission reserves per session, in CPUs."""
    rtmp_cpu_cost: float = _checked(0.0, _non_negative)
    whip_cpu_cost: float = _checked(0.0, _non_negative)
    whip_bypass_transcoding_cpu_cost: float = _checked(0.0, _non_negative)
    url_cpu_cost: float = _checked(0.0, _non_negative)
    rtmp_passthrough_cpu_cost: float = _checked(0.0, _non_negative)  # lkmedia's: RTMP with rtmp_passthrough
    min_idle_ratio: float = _checked(0.0, _ratio)  # kept idle for the node's own work; 0 = 0.3


@dataclass
class RTMPSConfig:
    """lkmedia's ``rtmps:``: an RTMP listener behind TLS (``rtmps://``), off unless ``port`` is set."""
    port: int = _checked(0, _port)  # 0 = off
    cert_file: str = ""  # PEM certificate chain
    key_file: str = _secret()  # PEM private key (a path; shown redacted all the same)


@dataclass
class IngressConfig:
    api_key: str = _partial()
    api_secret: str = _secret()
    ws_url: str = ""
    redis: RedisConfig | None = None
    health_port: int = _checked(0, _port)
    debug_handler_port: int = _checked(0, _port)
    prometheus_port: int = _checked(0, _port)
    rtmp_port: int = _checked(0, _listen_port)  # 0 = 1935, -1 = no RTMP
    whip_port: int = _checked(0, _listen_port)  # 0 = 8080, -1 = no WHIP
    http_relay_port: int = _checked(0, _port)  # 0 = 9090
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    development: bool = False
    whip_proxy_enabled: bool = False  # WHIP without transcoding goes to livekit-server's own WHIP endpoint
    rtc_config: RTCConfig = field(default_factory=RTCConfig)
    cpu_cost: IngressCPUCost = field(default_factory=IngressCPUCost)
    enable_stream_latency_reduction: bool = False
    enable_udp_url_pull: bool = False
    multicast_interface: str = ""
    # lkmedia's own keys
    rtmps: RTMPSConfig = field(default_factory=RTMPSConfig)
    #: RTMP video into the room as the publisher encoded it (H.264 without B-frames; no
    #: simulcast, audio still re-encoded to Opus); a stream that cannot pass ends ERROR saying why
    rtmp_passthrough: bool = False
    # legacy and internal keys the Go ingress reads
    log_level: str = ""  # older README: use logging.level
    service_name: str = ""
    node_id: str = ""  # overwritten at start, as in Go
    # not from YAML
    source: str = field(default="", metadata={"internal": True})
    warnings: list[str] = field(default_factory=list, metadata={"internal": True})

    def redacted(self) -> dict[str, object]:
        """A plain dict fit for logs: secrets replaced, identifiers shortened."""
        out: dict[str, object] = _redact(self)
        return out


_MIN_COST = (("rtmp_cpu_cost", 1.0, 2.0), ("whip_cpu_cost", 1.0, 2.0), ("url_cpu_cost", 1.0, 2.0),
             ("whip_bypass_transcoding_cpu_cost", 0.05, 0.1), ("rtmp_passthrough_cpu_cost", 0.05, 0.2))  # (key, Go's warning threshold, default)


def _apply_defaults(c: IngressConfig, d: _Decoder) -> None:
    """Go's ``InitDefaults``/``InitWhipConf`` and the monitor's cost checks, then the checks
    that span keys."""
    if c.log_level:
        d.warn("log_level is deprecated: use logging.level")
        if "logging" not in d.present:
            c.logging.level = c.log_level
    c.rtmp_port = c.rtmp_port or DEFAULT_RTMP_PORT
    c.whip_port = c.whip_port or DEFAULT_WHIP_PORT
    c.http_relay_port = c.http_relay_port or DEFAULT_HTTP_RELAY_PORT
    rtc = c.rtc_config
    if c.whip_port > 0 and rtc.udp_ports()[0] == 0 and rtc.port_range_start == 0:
        rtc.udp_port = str(DEFAULT_WHIP_UDP_PORT)
    if rtc.port_range_start and rtc.port_range_end and rtc.port_range_end <= rtc.port_range_start:
        raise ConfigError(f"rtc_config.port_range_end: must be greater than port_range_start "
                          f"({rtc.port_range_start}), got {rtc.port_range_end}")
    cc = c.cpu_cost
    cc.min_idle_ratio = cc.min_idle_ratio or DEFAULT_MIN_IDLE_RATIO
    for key, minimum, default in _MIN_COST:
        value = getattr(cc, key)
        if value == 0:
            setattr(cc, key, default)
        elif value < minimum:
            d.warn(f"cpu_cost.{key} {value:g} is below {minimum:g}: sessions may be admitted beyond what "
                   f"the node can run (recommended {default:g})")
    _check_rtmps(c)
    check_connection_values(c)


def _check_rtmps(c: IngressConfig) -> None:
    r = c.rtmps
    if not r.port:
        return
    if r.port in (c.rtmp_port, c.whip_port, c.health_port, c.prometheus_port):
        raise ConfigError(f"rtmps.port: {r.port} is already used by another listener of this config")
    for key in ("cert_file", "key_file"):
        path = getattr(r, key)
        if not path:
            raise ConfigError(f"rtmps.{key}: required when rtmps.port is set")
        if not os.access(path, os.R_OK):
            raise ConfigError(f"rtmps.{key}: cannot read {path if key == 'cert_file' else 'the file'}")


def parse_ingress_config(text: str, *, source: str = "<body>", env: Mapping[str, str] | None = None,
                         require_connection: bool = True) -> IngressConfig:
    """YAML text → validated ``IngressConfig`` with Go's defaults; ``ConfigError`` names the bad key."""
    conf = decode_service_config(IngressConfig, text, source, env, _apply_defaults, require_connection)
    conf.service_name = conf.service_name or "ingress"
    return conf


def load_ingress_config(config_file: str | None = None, config_body: str | None = None, *,
                        env: Mapping[str, str] | None = None, require_connection: bool = True) -> IngressConfig:
    """The ingress config from flags or env, resolved the way the Go ingress resolves them."""
    env = os.environ if env is None else env
    text, source = read_source(config_file, config_body, env, "INGRESS")
    return parse_ingress_config(text, source=source, env=env, require_connection=require_connection)
