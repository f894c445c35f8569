"""The Chrome engine's side of a job: which page to open (a web egress's URL, or a room
template with ``layout``, ``url`` and ``token`` as the Go egress adds them), opening it in
the job's own ChromeSession, and waiting for its start signal.

A template page (custom_base_url, or a layout that is not built in: ``template_base``)
must log START_RECORDING (the Go egress's template protocol); a web egress waits for it
only with ``await_start_signal``. No signal within ``start_timeout``: "Start signal not
received", as the Go egress says it.
"""
from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..chrome.session import ChromeSession, PageError
from .config import EgressConfig
from .errors import EgressError
from .spec import EgressLaunch

START_SIGNAL_NOT_RECEIVED = "Start signal not received"


def page_url(cfg: EgressConfig, launch: EgressLaunch, token: str) -> str:
    if cfg.request_type == "web":
        return cfg.url
    base = cfg.custom_base_url or launch.chrome.template_base
    s = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(s.query, keep_blank_values=True) if k not in ("layout", "url", "token")]
    query += [("layout", cfg.layout), ("url", launch.ws_url), ("token", token)]
    return urlunsplit((s.scheme, s.netloc, s.path or "/", urlencode(query), s.fragment))


async def open_page(cfg: EgressConfig, launch: EgressLaunch, token: str, stopped: asyncio.Event,
                    work_dir: str) -> ChromeSession:
    """Chrome showing the page, its start signal received (if it needs one). Raises
    EgressError with the reason; nothing is left running then. A stop while it waits
    returns the session as it is (the caller ends the job ABORTED)."""
    e = cfg.encoding
    chrome = launch.chrome
    session = ChromeSession(e.width, e.height, audio=cfg.audio_enabled, sandbox=chrome.sandbox,
                            insecure=chrome.insecure, flags=chrome.flags, work_dir=work_dir)
    try:
        await session.open()
        await session.load(page_url(cfg, launch, token))
        if cfg.await_start_signal:
            await _start_signal(session, stopped, chrome.start_timeout)
        if session.failed.is_set():
            raise EgressError(session.failure, "failed_precondition")
    except PageError as err:
        await session.close()
        raise EgressError(str(err), "failed_precondition") from None
    except BaseException:
        await session.close()
        raise
    return session


async def _start_signal(session: ChromeSession, stopped: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.ensure_future(ev.wait()) for ev in (session.started, session.failed, stopped)]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    if session.failed.is_set() or session.started.is_set() or stopped.is_set():
        return
    raise EgressError(START_SIGNAL_NOT_RECEIVED, "failed_precondition")
