"""IngressState as the Go ingress changes and stamps it (``params.SetStatus`` and the
handler's end rules): one set of rules for the service side (the front door, UpdateIngress /
DeleteIngress, a session ended from outside) and the job's (lkmedia.ingress.session).

BUFFERING (``started_at``, ``resource_id``) -> PUBLISHING (once per track kind ready) ->
INACTIVE (a reusable RTMP/WHIP ingress, which can be pushed to again) / COMPLETE (a URL
pull at its end) / ERROR (any failure, with its reason). Every change gets a fresh
``updated_at``; ``ended_at`` is set once, at the first final status.
"""
from __future__ import annotations

import time

from livekit.protocol import ingress as lk

S = lk.IngressState.Status
FINAL = frozenset({S.ENDPOINT_INACTIVE, S.ENDPOINT_COMPLETE, S.ENDPOINT_ERROR})
LIVE = frozenset({S.ENDPOINT_BUFFERING, S.ENDPOINT_PUBLISHING})


def set_status(state: lk.IngressState, status: int, error: str = "") -> lk.IngressState:
    """Move ``state`` to ``status`` (``error`` for ENDPOINT_ERROR), stamped."""
    now = time.time_ns()
    state.status = status  # type: ignore[assignment]
    state.updated_at = max(now, state.updated_at + 1)  # strictly increasing, as livekit-server orders by it
    if status == S.ENDPOINT_BUFFERING and not state.started_at:
        state.started_at = state.updated_at
    if status == S.ENDPOINT_ERROR:
        state.error = error or state.error or "ingress failed"
    if status in FINAL and not state.ended_at and state.started_at:
        state.ended_at = state.updated_at
    return state


def buffering(resource_id: str) -> lk.IngressState:
    """A new session's first state."""
    state = lk.IngressState(resource_id=resource_id)
    return set_status(state, S.ENDPOINT_BUFFERING)


def ended(state: lk.IngressState, reusable: bool, error: str = "") -> lk.IngressState:
    """A copy of ``state`` at the session's end: ERROR with ``error``, else INACTIVE or COMPLETE."""
    out = lk.IngressState.FromString(state.SerializeToString())
    if error:
        return set_status(out, S.ENDPOINT_ERROR, error)
    return set_status(out, S.ENDPOINT_INACTIVE if reusable else S.ENDPOINT_COMPLETE)
