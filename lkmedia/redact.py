"""One place that decides what of a URL or message may be logged or returned.

Stream keys, passwords, tokens and query strings never reach logs, errors, results or
EgressInfo. Keys are shown the way LiveKit's RedactIdentifier shows them: {abc...xyz}.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

_RTMP_SCHEMES = ("rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts")
_SECRET_PARAM = re.compile(
    r"((?:streamid|passphrase|token|access_token|key|secret|sig|signature|password)=)[^&\s'\"]+", re.IGNORECASE
)
_RTMP_KEY = re.compile(r"\b(rtmps?://[^\s'\"/]+(?:/[^\s'\"/]+)*/[^\s'\"/]+/)([^\s'\"/{][^\s'\"]*)")


def redact_key(key: str) -> str:
    """A few first and last characters, the rest hidden: {abc...xyz}."""
    for n in (3, 2, 1):
        if len(key) >= n * 3:
            return f"{{{key[:n]}...{key[-n:]}}}"
    return "{...}"


def redact_url(url: str) -> str:
    """``url`` fit for logs and errors: no credentials, no query, no RTMP stream key.
    Local paths are returned as they are."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if len(parts.scheme) <= 1 or parts.scheme == "file":  # a local path (or C:\...)
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    if parts.username or parts.password:
        host = f"***@{host}"
    path = parts.path
    segs = path.split("/")
    if parts.scheme in _RTMP_SCHEMES and len([s for s in segs if s]) >= 2 and segs[-1]:
        segs[-1] = redact_key(segs[-1])  # rtmp://host/app/<stream key>
        path = "/".join(segs)
    return f"{parts.scheme}://{host}{path}" + ("?***" if parts.query else "")


def redact_text(text: str) -> str:
    """Hide stream keys and secret parameters wherever they appear in free text."""
    text = _SECRET_PARAM.sub(r"\1***", text)
    return _RTMP_KEY.sub(lambda m: m.group(1) + redact_key(m.group(2)), text)
