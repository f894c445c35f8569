"""What an egress request costs in CPUs and memory, as the Go egress counts it
(``pkg/config`` ``costsForRequest``, ``validateCPUConfig``): the ``cpu_cost:`` section."""
from __future__ import annotations

from typing import Any

from ..nodes.layouts import LAYOUTS
from ..service.config import ConfigError, CPUCostConfig
from ..worker.kind import Costs

PASSTHROUGH = 8  # livekit.EncodingOptionsPreset.PASSTHROUGH


def _native(req: Any) -> bool:
    """No Chrome: a built-in layout (or none) and no custom base URL. (Go ``ShouldUseSDKSource``
    is the audio-only case; lkmedia composes the built-in video layouts too.)"""
    return not req.custom_base_url and (not req.layout or req.layout in LAYOUTS)


def request_costs(c: CPUCostConfig, req: Any, estimated_cpu: float = 0.0) -> Costs:
    """What one request costs, by type (Go ``costsForRequest``); ``estimated_cpu`` (the
    rpc request's, when set) is what admission checks for, as Go does."""
    costs = _type_costs(c, req)
    if estimated_cpu > 0:
        return Costs(costs.cpu, costs.memory, costs.is_web, costs.request_type, estimated=estimated_cpu)
    return costs


def _type_costs(c: CPUCostConfig, req: Any) -> Costs:
    name = req.DESCRIPTOR.name
    mem = c.memory_cost
    if name == "RoomCompositeEgressRequest" or name == "TemplateSource":
        rtype = "room_composite" if name == "RoomCompositeEgressRequest" else "template"
        if _native(req):  # lkmedia composes the built-in layouts itself: no Chrome
            if req.audio_only:
                return Costs(c.sdk_audio_room_composite_cpu_cost, c.sdk_audio_room_composite_memory_cost,
                             False, rtype)
            return Costs(c.native_room_composite_cpu_cost, mem, False, rtype)
        if not req.audio_only:
            return Costs(c.room_composite_cpu_cost, mem, True, rtype)
        return Costs(c.audio_room_composite_cpu_cost, mem, True, rtype)
    if name in ("WebEgressRequest", "WebSource"):
        return Costs(c.audio_web_cpu_cost if req.audio_only else c.web_cpu_cost, mem, True, "web")
    if name == "ParticipantEgressRequest":
        return Costs(c.participant_cpu_cost, mem, False, "participant")
    if name == "TrackCompositeEgressRequest":
        return Costs(c.track_composite_cpu_cost, mem, False, "track_composite")
    if name == "TrackEgressRequest":
        return Costs(c.track_cpu_cost, mem, False, "track")
    if name in ("StartEgressRequest", "ExportReplayRequest"):  # v2: the source decides
        passthrough = req.WhichOneof("encoding") == "preset" and req.preset == PASSTHROUGH
        source = req.WhichOneof("source")
        if source in ("template", "web"):
            costs = _type_costs(c, getattr(req, source))
            rtype = "track" if passthrough else costs.request_type
            return Costs(costs.cpu, costs.memory, costs.is_web, rtype)
        if source == "media":
            if passthrough:
                return Costs(c.track_cpu_cost, mem, False, "track")
            return Costs(c.participant_cpu_cost, mem, False, "media")
        return Costs(0.0, mem, False, "unknown")  # Go: no cost, unknown type
    raise ValueError(f"not an egress request: {name}")


def check_cpu_costs(c: CPUCostConfig, num_cpus: float) -> list[str]:
    """Go ``validateCPUConfig``: fail if no request type fits this machine; warn if some do not."""
    keys = ("room_composite_cpu_cost", "audio_room_composite_cpu_cost", "sdk_audio_room_composite_cpu_cost",
            "web_cpu_cost", "audio_web_cpu_cost", "participant_cpu_cost", "track_composite_cpu_cost", "track_cpu_cost")
    costs = {k: getattr(c, k) for k in keys}
    low, high = min(costs.values()), max(costs.values())
    if num_cpus < low:
        raise ConfigError(f"cpu_cost: not enough CPU: {num_cpus:g} available, the cheapest request type "
                          f"needs {low:g} (recommended at least {max(high, 3):g})")
    too_big = sorted(k for k, v in costs.items() if v > num_cpus)
    return [f"cpu_cost.{k} = {costs[k]:g} exceeds the {num_cpus:g} CPUs here: never accepted"
            for k in too_big]
