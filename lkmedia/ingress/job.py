"""One ingress session in its job process (a lkmedia.worker.kind.Job), from the BUFFERING
state the service reported to INACTIVE / COMPLETE / ERROR.

The job owns the session's IngressInfo: it runs an IngressSession (lkmedia.ingress.session)
from the input the spec names (lkmedia.ingress.recipe: the service's relay for RTMP, the URL
for a URL pull) and sends every state change, in order, through ``report``; the service
alone stores it (IOInfo.UpdateIngressState). ``stop`` (UpdateIngress, DeleteIngress, a drain)
ends it as its end of stream; ``kill`` ends it ERROR.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from livekit.protocol import ingress as lk

from ..core import LkmediaError, Source
from ..worker.kind import JobError, Report
from .errors import IngressError
from .recipe import input_source
from .session import IngressSession
from .spec import IngressLaunch
from .state import FINAL, ended

log = logging.getLogger("lkmedia.ingress")


class IngressJob:
    def __init__(self, launch: IngressLaunch, info: lk.IngressInfo, report: Report) -> None:
        self.launch, self.info, self.report = launch, info, report
        self.session: IngressSession | None = None
        self._states: asyncio.Queue[lk.IngressState | None] = asyncio.Queue()  # a session's few states
        self._stopped = ""  # why it was stopped (or killed) before its session existed
        self._kill_error = ""
        #: WHIP with transcoding: the SDP answer (or why there is none), for the service's "answer"
        self._answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        spec = self.launch.spec
        sender = asyncio.get_running_loop().create_task(self._send_all(), name="ingress-states")
        pc: Any = None
        try:
            try:
                if spec.input == "whip":
                    pc, source = await self._answer_offer()
                else:
                    source = input_source(self.launch)
            except (ValueError, OSError, LkmediaError) as e:
                if not self._answer.done():
                    self._answer.set_exception(e)
                self._on_state(ended(self.info.state, spec.reusable, str(e)))
                return
            self.session = IngressSession(self.info, source, self.launch.ws_url, self.launch.token,
                                          resource_id=spec.resource_id, state=self.info.state,
                                          on_state=self._on_state)
            if pc is not None:
                session = self.session

                @pc.on("connectionstatechange")
                async def _changed() -> None:  # the client is gone (or never connected)
                    if pc.connectionState in ("failed", "closed"):
                        await session.stop()

            if self._stopped:
                await self.session.stop(self._kill_error)
            final = await self.session.run()
            log.info("ingress %s: session %s ended %s%s", spec.ingress_id, spec.resource_id,
                     lk.IngressState.Status.Name(final.status), f" ({final.error})" if final.error else "")
        finally:
            if pc is not None:
                await pc.close()
            if not self._answer.done():
                self._answer.set_exception(IngressError("the session ended before it answered", "unavailable"))
            if not self._answer.cancelled():
                self._answer.exception()  # retrieved: the service may never ask for it
            self._states.put_nowait(None)
            await sender

    async def _answer_offer(self) -> tuple[Any, Source]:
        """WHIP with transcoding: aiortc answers the client's offer here, in the session's
        own process; the service asks for the answer ("answer") and returns it to the client."""
        from ..sources.webrtc import RtcTrackSource
        from .whip import answer_offer

        if not self.launch.whip_offer:
            raise ValueError(f"{self.launch.spec.ingress_id}: a WHIP session needs the client's offer")
        pc, answer, tracks = await answer_offer(self.launch.whip_offer)
        self._answer.set_result(answer)
        return pc, RtcTrackSource(tracks, name="whip")

    def _on_state(self, state: lk.IngressState) -> None:
        self._states.put_nowait(state)

    async def _send_all(self) -> None:
        """The states to the service, one at a time and in the order the session set them."""
        while (state := await self._states.get()) is not None:
            self.info.state.CopyFrom(state)
            try:
                await self.report(self.info)
            except Exception:  # the service went away: the session ends all the same
                log.exception("ingress %s: state not sent", self.info.ingress_id)

    # -- control (lkmedia.worker.kind.Job) -----------------------------------------------------
    async def stop(self, reason: str) -> None:
        self._stopped = self._stopped or reason
        if self.session is not None and self.info.state.status not in FINAL:
            log.info("ingress %s: stopping (%s)", self.info.ingress_id, reason)
            await self.session.stop()

    async def kill(self, error: str) -> None:
        self._stopped = self._stopped or error
        self._kill_error = self._kill_error or error
        if self.session is not None:
            await self.session.stop(error)

    async def request(self, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        if op != "answer":
            raise IngressError(f"unknown request {op!r}", "invalid_argument")
        try:
            return {"sdp": await asyncio.shield(self._answer)}
        except JobError:
            raise
        except LkmediaError as e:  # the offer was refused (WhipRefused): in plain words
            raise IngressError(str(e), "invalid_argument") from None


async def recover(launch: IngressLaunch, info: lk.IngressInfo, cause: str, report: Report) -> lk.IngressInfo:
    """A session whose process died: it ends ERROR with the cause (a live input has nothing
    on disk to save)."""
    out = lk.IngressInfo.FromString(info.SerializeToString())
    if out.state.status not in FINAL or not out.state.ended_at:
        out.state.CopyFrom(ended(out.state, launch.spec.reusable, cause))
    with contextlib.suppress(Exception):
        await report(out)
    return out
