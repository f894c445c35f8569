"""psrpc channel names and IDs, exactly as livekit-server builds them on Redis.

Redis carries psrpc's "legacy" channel names: parts joined with ``|``, each part
sanitised character by character (``[0-9A-Za-z_]`` kept, other code points below
U+10000 as ``u+xxxx``, the rest as ``U+xxxxxxxx``, lowercase hex). Empty parts add
nothing, so topic ``[""]`` and no topic give the same name. The joining below mirrors
psrpc v0.7.2 ``appendChannelParts`` including its quirk: an empty *last* element of
a non-empty topic list leaves a doubled delimiter (``a||REQ``), which Go produces too.
"""
from __future__ import annotations

import secrets
import string
from collections.abc import Sequence

_KEEP = frozenset(string.ascii_letters + string.digits + "_")
_ID_ALPHABET = string.ascii_letters + string.digits

Topic = Sequence[str] | str | None


def sanitize(part: str) -> str:
    """One channel part with every character outside ``[0-9A-Za-z_]`` escaped."""
    out = []
    for ch in part:
        if ch in _KEEP:
            out.append(ch)
        elif ord(ch) < 0x10000:
            out.append(f"u+{ord(ch):04x}")
        else:
            out.append(f"U+{ord(ch):08x}")
    return "".join(out)


def _append(buf: list[str], delim: str, parts: Sequence[str | Sequence[str]]) -> None:
    """Go's appendChannelParts on a list of string pieces (``buf`` is appended to)."""
    prefix = False
    for part in parts:
        if prefix:
            buf.append(delim)
        before = sum(len(s) for s in buf)
        if isinstance(part, str):
            buf.append(sanitize(part))
        else:
            _append(buf, delim, list(part))
        prefix = sum(len(s) for s in buf) > before


def format_channel(delim: str, *parts: str | Sequence[str]) -> str:
    """Parts (strings or topic lists) joined the way psrpc joins them."""
    buf: list[str] = []
    _append(buf, delim, parts)
    return "".join(buf)


def topic_list(topic: Topic) -> list[str]:
    """A topic given as None, one string or a list of strings, as a list."""
    if topic is None:
        return []
    if isinstance(topic, str):
        return [topic]
    return [str(t) for t in topic]


def request_channel(service: str, method: str, topic: Topic = None) -> str:
    """Where clients publish Requests and servers listen: ``Svc|Method|topic…|REQ``."""
    return format_channel("|", service, method, topic_list(topic), "REQ")


def claim_response_channel(service: str, method: str, topic: Topic = None) -> str:
    """Where the client announces the chosen server: ``Svc|Method|topic…|RCLAIM``."""
    return format_channel("|", service, method, topic_list(topic), "RCLAIM")


def response_channel(service: str, client_id: str) -> str:
    """Where servers publish Responses for one client: ``Svc|CLI_x|RES``."""
    return format_channel("|", service, client_id, "RES")


def claim_request_channel(service: str, client_id: str) -> str:
    """Where servers offer to handle a client's request: ``Svc|CLI_x|CLAIM``."""
    return format_channel("|", service, client_id, "CLAIM")


def stream_channel(service: str, node_id: str) -> str:
    """Client-side stream channel (not used by egress/ingress, kept for completeness)."""
    return format_channel("|", service, node_id, "STR")


def _new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def new_client_id() -> str:
    """``CLI_`` + 12 chars of ``[A-Za-z0-9]``, one per client instance."""
    return _new_id("CLI_")


def new_server_id() -> str:
    """``SRV_`` + 12 chars, one per server instance."""
    return _new_id("SRV_")


def new_request_id() -> str:
    """``REQ_`` + 12 chars, new for every attempt."""
    return _new_id("REQ_")
