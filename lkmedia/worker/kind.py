"""What the worker core knows of a job kind (egress now, ingress next), and nothing more.

The service side of a kind (``JobKind``) turns nothing into media: it says what a validated
spec costs, how its Info reads (id, final or not) and how an Info is ended from outside
(queue expiry, a lost worker). The child side (``Runner``, a module named by
``JobKind.runner``) runs one spec in its own process: ``job(spec, info, report)`` gives a
``Job`` the child drives, ``recover(spec, info, cause, report)`` reports a job whose
process died. A spec is a dataclass (lkmedia.worker.codec) validated once, in the service.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from ..core.errors import LkmediaError

Report = Callable[[Message], Awaitable[None]]
InfoT = TypeVar("InfoT", bound=Message)


class JobError(LkmediaError):
    """An error that reaches the API caller with a psrpc code, in plain words."""

    code = "internal"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


@dataclass(frozen=True)
class Costs:
    """What admission reserves for a job, and the label it is counted under."""
    cpu: float
    memory: float  # GB
    is_web: bool  # needs Chrome (and a PulseAudio client)
    request_type: str  # metrics label: room_composite, web, participant, track_composite, track, ...
    estimated: float = 0.0  # the request's own estimate: what admission checks for (it reserves ``cpu``)


class Job(Protocol):
    """A job as its child process drives it."""

    async def run(self) -> None: ...

    async def stop(self, reason: str) -> None: ...

    async def kill(self, error: str) -> None: ...

    async def request(self, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """A kind's own control call (UpdateStream, a WHIP session's SDP answer); its answer
        (JSON values) or None; raises JobError to refuse it."""
        ...


class Runner(Protocol):
    """The module a kind's ``runner`` names, as the child process uses it."""

    spec_type: type[Any]
    info_type: type[Message]

    def job(self, spec: Any, info: Message, report: Report) -> Job: ...

    async def recover(self, spec: Any, info: Message, cause: str, report: Report) -> Message: ...


class JobKind(Protocol[InfoT]):
    """The service side of a job kind; ``InfoT`` its Info message (EgressInfo)."""

    name: str  # "egress": queue keys, logs, messages
    runner: str  # the child module (a Runner)
    info_type: type[InfoT]

    def job_id(self, spec: Any) -> str: ...

    def info_id(self, info: InfoT) -> str: ...

    def decode_spec(self, data: Any) -> Any:
        """A spec from its encoded form (the queue, a job record)."""
        ...

    def launch(self, spec: Any) -> Any:
        """What the job process is given: the spec with this node's settings and secrets
        (a Runner's ``spec_type``). Never stored: the queue and job records hold the spec."""
        ...

    def costs(self, spec: Any) -> Costs: ...

    def dedup_key(self, spec: Any) -> str:
        """Requests with the same key within the dedup window are one job."""
        ...

    def is_final(self, info: InfoT) -> bool: ...

    def started(self, info: InfoT) -> bool:
        """The job has reported its start (it is no longer starting up)."""
        ...

    def taken(self, info: InfoT) -> InfoT:
        """A copy of a queued ``info`` now that a worker has taken it (no queue position)."""
        ...

    def queued(self, info: InfoT, position: int) -> InfoT:
        """A copy of ``info`` saying it waits at ``position``."""
        ...

    def ended(self, info: InfoT, outcome: str, error: str = "", details: str = "") -> InfoT:
        """A copy of ``info`` ended from outside its job: ``outcome`` "failed" or "aborted"."""
        ...

    def result(self, info: InfoT) -> str:
        """The handler result a final Info counts as (completed, aborted, process_error...)."""
        ...

    def describe(self, spec: Any) -> dict[str, Any]:
        """What the health endpoint shows of a running job (no secrets)."""
        ...
