"""``template_port``: lkmedia's room template page, where the Go egress serves its default
template (``template_base`` defaults to ``http://localhost:<template_port>/``). Static
files only: ``/`` (index.html), ``/template.js``, ``/livekit-client.umd.js``."""
from __future__ import annotations

import logging
import os

from aiohttp import web

from ..template import HERE, livekit_client_js
from .health import HttpEndpoint

log = logging.getLogger("lkmedia.service.template")

TYPES = {".html": "text/html", ".js": "text/javascript"}


class TemplateServer(HttpEndpoint):
    def __init__(self, port: int, host: str | None = None) -> None:
        super().__init__(port, self._serve, host=host, name="template")
        self.client_js = livekit_client_js()
        if self.client_js is None:
            log.warning("template: livekit-client is not installed (scripts/setup.sh installs it): the "
                        "template page cannot join rooms")

    def _file(self, path: str) -> str | None:
        if path in ("/", "/index.html"):
            return os.path.join(HERE, "index.html")
        if path == "/template.js":
            return os.path.join(HERE, "template.js")
        if path == "/livekit-client.umd.js":
            return self.client_js
        return None

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="method not allowed")
        path = self._file(request.path)
        if path is None or not os.path.isfile(path):
            return web.Response(status=404, text="not found")
        ctype = TYPES.get(os.path.splitext(path)[1], "application/octet-stream")
        return web.FileResponse(path, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})
