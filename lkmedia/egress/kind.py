"""The egress job kind as the worker core sees it (lkmedia.worker.kind.JobKind): what a
spec costs, how an EgressInfo reads and is ended from outside, and what a job process is
given to run a spec (its launch: this node's connection, storage, limits and secrets).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from livekit.protocol import egress as lk

from ..service.config import ServiceConfig
from ..service.health import request_json
from ..storage.factory import settings_from_yaml
from ..worker import codec
from ..worker.kind import Costs
from .costs import request_costs
from .info import FINAL, ended, set_status
from .spec import ChromeSettings, EgressLaunch, EgressSpec, dedup_key

S = lk.EgressStatus
RESULTS = {S.EGRESS_COMPLETE: "completed", S.EGRESS_LIMIT_REACHED: "completed", S.EGRESS_ABORTED: "aborted",
           S.EGRESS_FAILED: "process_error"}


class EgressKind:
    name = "egress"
    runner = "lkmedia.egress.runner"
    info_type = lk.EgressInfo

    def __init__(self, conf: ServiceConfig, tmp_dir: str) -> None:
        self.conf, self.tmp_dir = conf, tmp_dir
        self._storage = _storage_sections(conf)
        # Checked at start-up (each job process reads it again): a bad key, or a provider
        # whose extra is not installed, stops the service with a message naming it.
        settings_from_yaml(self._storage)

    # -- specs ---------------------------------------------------------------------------
    def job_id(self, spec: EgressSpec) -> str:
        return spec.egress_id

    def info_id(self, info: lk.EgressInfo) -> str:
        return info.egress_id

    def decode_spec(self, data: Any) -> EgressSpec:
        return codec.decode(EgressSpec, data)

    def launch(self, spec: EgressSpec) -> EgressLaunch:
        c = self.conf
        return EgressLaunch(spec, ws_url=spec.ws_url or c.ws_url, api_key=c.api_key, api_secret=c.api_secret,
                            tmp_dir=self.tmp_dir, storage=self._storage, max_duration=self.max_duration(spec),
                            freeze_timeout=float(c.jobs.freeze_timeout),
                            chrome=ChromeSettings(c.template_base, c.enable_chrome_sandbox, c.insecure,
                                                  dict(c.chrome_flags), float(c.jobs.start_signal_timeout)))

    def max_duration(self, spec: EgressSpec) -> float:
        """The session limit for its outputs (the smallest that is set; 0: none)."""
        lim, cfg = self.conf.session_limits, spec.config
        values = []
        if cfg.file is not None:
            values.append(float(lim.file_output_max_duration or 0))
        if cfg.segments is not None:
            values.append(float(lim.segment_output_max_duration or 0))
        if cfg.stream is not None or cfg.websocket is not None:
            values.append(float(lim.stream_output_max_duration or 0))
        if cfg.images:
            values.append(float(lim.image_output_max_duration or 0))
        set_ = [v for v in values if v > 0]
        return min(set_) if set_ else 0.0

    def costs(self, spec: EgressSpec) -> Costs:
        return request_costs(self.conf.cpu_cost, spec.request, spec.estimated_cpu)

    def dedup_key(self, spec: EgressSpec) -> str:
        return dedup_key(spec)

    def describe(self, spec: EgressSpec) -> dict[str, Any]:
        return request_json(spec.kind, spec.request)

    # -- EgressInfo -----------------------------------------------------------------------
    def is_final(self, info: lk.EgressInfo) -> bool:
        return info.status in FINAL

    def started(self, info: lk.EgressInfo) -> bool:
        return info.status != S.EGRESS_STARTING

    def taken(self, info: lk.EgressInfo) -> lk.EgressInfo:
        out = lk.EgressInfo.FromString(info.SerializeToString())
        out.details = ""
        return set_status(out, S.EGRESS_STARTING)

    def queued(self, info: lk.EgressInfo, position: int) -> lk.EgressInfo:
        out = lk.EgressInfo.FromString(info.SerializeToString())
        out.details = f"queued, position {position}"
        return set_status(out, S.EGRESS_STARTING)

    def ended(self, info: lk.EgressInfo, outcome: str, error: str = "", details: str = "") -> lk.EgressInfo:
        return ended(info, outcome, error, details)

    def result(self, info: lk.EgressInfo) -> str:
        return RESULTS.get(info.status, "process_error")


def _storage_sections(conf: ServiceConfig) -> dict[str, Any]:
    """``storage:`` and ``backup:`` as YAML reads them: what a job process is given."""
    d: dict[str, Any] = {}
    for key in ("storage", "backup"):
        v = getattr(conf, key)
        if v is not None:
            d[key] = {k: x for k, x in dataclasses.asdict(v).items() if x not in (None, "", {}, [])}
    return d
