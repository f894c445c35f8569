"""lkmedia's room template page (index.html, template.js) and where livekit-client's UMD
build is found: ``$LKMEDIA_LIVEKIT_CLIENT_JS``, else the npm install scripts/setup.sh makes
under ``$LKMEDIA_CACHE/npm`` (``~/.cache/lkmedia/npm``), else the Docker image's copy."""
from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
LIVEKIT_CLIENT_VERSION = "2.23.0"  # pinned in scripts/setup.sh too
_UMD = os.path.join("node_modules", "livekit-client", "dist", "livekit-client.umd.js")


def cache_dir() -> str:
    base = os.environ.get("LKMEDIA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lkmedia")
    return base


def livekit_client_js() -> str | None:
    """The path of livekit-client.umd.js, or None when it is not installed."""
    candidates = [os.environ.get("LKMEDIA_LIVEKIT_CLIENT_JS", ""),
                  os.path.join(cache_dir(), "npm", _UMD), os.path.join("/usr/share/lkmedia", _UMD)]
    return next((p for p in candidates if p and os.path.isfile(p)), None)
