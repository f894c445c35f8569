"""One Chrome capture: the job's display, audio sink and Chromium, and the page in it.

``ChromeSession.open`` starts Xvfb, PulseAudio and Chromium (lkmedia.chrome.procs) and
attaches Playwright to Chromium over its DevTools port (Chromium is launched by us, with
the Go egress's flags and in kiosk mode, not by Playwright). ``load`` opens the page as
the Go egress does: 30 s page-load timeout, up to 3 tries on a timeout or a dropped
connection, HTTP >= 400 and a template's ``div.error`` fail it. Then the page speaks the
template protocol through console messages: ``START_RECORDING`` sets ``started``,
``END_RECORDING`` sets ``ended``. A page that crashes, closes, navigates to another
document, or a Chromium that exits, sets ``failure`` to the reason. ``close`` ends all of
it, whatever state it is in.

URLs carry the room token: messages name a page by its address without the query.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .procs import (
    SINK,
    Child,
    ProcessError,
    chrome_args,
    chrome_path,
    devtools_port,
    start_parec,
    start_pulse,
    start_xvfb,
)

log = logging.getLogger("lkmedia.chrome")

PAGE_LOAD_TIMEOUT = 30.0  # the Go egress's
PAGE_LOAD_TRIES = 3
RETRIED = ("Timeout", "ERR_CONNECTION_CLOSED", "ERR_CERT_VERIFIER_CHANGED")


class PageError(RuntimeError):
    """The page could not be loaded or used: the message says why, in plain words."""


def shown_url(url: str) -> str:
    """A page's address fit for a log or an EgressInfo: no query (it holds the token), no
    user info."""
    s = urlsplit(url)
    host = s.hostname or ""
    if s.port:
        host = f"{host}:{s.port}"
    return urlunsplit((s.scheme, host, s.path, "", ""))


class ChromeSession:
    """Xvfb + PulseAudio + Chromium for one job. A capture (lkmedia.sources.screen) reads
    ``display`` and the sound ``take_audio`` hands over."""

    def __init__(self, width: int, height: int, *, audio: bool = True, sandbox: bool = False,
                 insecure: bool = False, flags: Mapping[str, Any] | None = None, work_dir: str | None = None) -> None:
        """``work_dir`` (a new temporary directory by default) holds the profile and the
        sound server's socket; it is removed on close."""
        self.width, self.height, self.audio = width, height, audio
        self.sandbox, self.insecure, self.flags = sandbox, insecure, dict(flags or {})
        self.work_dir = work_dir or tempfile.mkdtemp(prefix="lkmedia-chrome-")
        self.display = ""
        self.pulse_server = ""
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.failed = asyncio.Event()
        self.failure = ""
        self._children: list[Child] = []
        self._pw: Any = None
        self._browser: Any = None
        self._page: Any = None
        self._loaded = False
        self._watch: asyncio.Task[None] | None = None
        self._closing = False
        self._parec: Child | None = None
        self._drain: asyncio.Task[None] | None = None
        self._chrome_log: Any = None

    @property
    def children(self) -> list[Child]:
        return list(self._children)

    def _fail(self, reason: str) -> None:
        if not (self.failed.is_set() or self._closing):
            self.failure = reason
            self.failed.set()
            log.warning("chrome: %s", reason)

    # -- start -------------------------------------------------------------------------------
    async def open(self) -> None:
        os.makedirs(self.work_dir, exist_ok=True)
        xvfb, self.display = await start_xvfb(self.width, self.height)
        self._children.append(xvfb)
        env = {**os.environ, "DISPLAY": self.display}
        if self.audio:
            pulse, self.pulse_server = await start_pulse(os.path.join(self.work_dir, "pulse"))
            self._children.append(pulse)
            env.update(PULSE_SERVER=self.pulse_server, PULSE_SINK=SINK)
            # The capture runs from now on, its output dropped until take_audio(): it
            # delivers from the first moment of the recording.
            self._parec = await start_parec(self.pulse_server)
            self._children.append(self._parec)
            self._drain = asyncio.create_task(self._discard(self._parec), name="chrome-audio-drain")
        else:
            env["PULSE_SERVER"] = "unix:/nonexistent"  # no sound anywhere
        user_dir = os.path.join(self.work_dir, "profile")
        args = chrome_args(self.width, self.height, user_dir, sandbox=self.sandbox, insecure=self.insecure,
                           flags=self.flags)
        self._chrome_log = open(os.path.join(self.work_dir, "chrome.log"), "wb")  # noqa: SIM115 (closed in close())
        chrome = await Child.start("Chromium", [chrome_path(), *args], env=env, stderr=self._chrome_log.fileno())
        self._children.append(chrome)
        try:
            port = await devtools_port(user_dir, chrome)
        except ProcessError as e:
            raise ProcessError(f"{e}: {self._log_tail()}") from None
        from playwright.async_api import async_playwright  # (imported by Chrome jobs only)

        self._pw = await async_playwright().start()
        self._browser = await self._pw.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
        self._browser.on("disconnected", lambda *_: self._fail("Chromium exited"))
        ctx = self._browser.contexts[0]
        self._page = ctx.pages[0] if ctx.pages else await ctx.new_page()
        page = self._page
        page.on("console", self._on_console)
        page.on("crash", lambda *_: self._fail("the page crashed"))
        page.on("close", lambda *_: self._fail("the page was closed"))
        page.on("domcontentloaded", self._on_document)
        self._watch = asyncio.create_task(self._watch_children(), name="chrome-watch")

    async def _watch_children(self) -> None:
        waits = {asyncio.ensure_future(c.proc.wait()): c for c in self._children}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for d in done:
                self._fail(f"{waits[d].name} exited (status {d.result()})")
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.work_dir, "chrome.log"), "rb") as f:
                lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        errors = [ln for ln in lines if "ERROR" in ln or "FATAL" in ln] or lines
        log.warning("chrome: its log:\n%s", "\n".join(lines[-20:]))
        return errors[0].strip()[:300] if errors else "no output"

    @staticmethod
    async def _discard(parec: Child) -> None:
        out = parec.proc.stdout
        assert out is not None
        while await out.read(65536):
            pass

    async def take_audio(self) -> asyncio.StreamReader:
        """The sink's sound from now on: raw s16le stereo 48 kHz (EOF if the capture ends)."""
        if self._parec is None or self._drain is None:
            raise ProcessError("this Chrome session captures no audio")
        self._drain.cancel()
        await asyncio.gather(self._drain, return_exceptions=True)
        out = self._parec.proc.stdout
        assert out is not None
        return out

    def _on_console(self, msg: Any) -> None:
        words = str(msg.text).split(" ")
        if "START_RECORDING" in words and not self.started.is_set():
            log.info("chrome: the page said START_RECORDING")
            self.started.set()
        if "END_RECORDING" in words and not self.ended.is_set():
            log.info("chrome: the page said END_RECORDING")
            self.ended.set()

    def _on_document(self, page: Any) -> None:
        if self._loaded:  # a second document: the page went somewhere else
            self._fail(f"the page navigated away (to {shown_url(page.url)})")

    async def load(self, url: str, timeout: float = PAGE_LOAD_TIMEOUT, tries: int = PAGE_LOAD_TRIES) -> None:
        """Open ``url``; PageError naming the address (without its query) if it fails."""
        assert self._page is not None, "open() first"
        where = shown_url(url)
        from playwright.async_api import Error as PlaywrightError

        for attempt in range(1, tries + 1):
            try:
                resp = await self._page.goto(url, timeout=timeout * 1000, wait_until="load")
            except PlaywrightError as e:
                text = str(e).splitlines()[0] if str(e) else type(e).__name__
                if attempt < tries and any(r in text for r in RETRIED):
                    log.warning("chrome: loading %s failed (%s), try %d of %d", where, text, attempt + 1, tries)
                    continue
                if "Timeout" in text:
                    raise PageError(f"page load timed out after {timeout:g} s: {where}") from None
                raise PageError(f"page load failed: {where}: {_net_error(text)}") from None
            if resp is not None and resp.status >= 400:
                raise PageError(f"page load failed: {where} answered HTTP {resp.status}")
            break
        self._loaded = True
        err = await self._page.evaluate("() => document.querySelector('div.error')?.innerText || ''")
        if err:
            raise PageError(f"template error: {err.strip()}")
        log.info("chrome: loaded %s", where)

    # -- end ---------------------------------------------------------------------------------
    async def close(self) -> None:
        """Everything this session started is gone when this returns (even half-opened)."""
        self._loaded, self._closing = False, True  # nothing after this is a failure
        if self._browser is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self._browser.close()
        if self._pw is not None:
            with contextlib.suppress(Exception):
                await self._pw.stop()
        self._browser = self._pw = self._page = None
        for child in reversed(self._children):  # Chromium first, its display last
            await child.close()
        if self._watch is not None:
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._drain is not None:
            self._drain.cancel()
            await asyncio.gather(self._drain, return_exceptions=True)
        self._children.clear()
        if self._chrome_log is not None:
            self._chrome_log.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _net_error(text: str) -> str:
    """Playwright's 'page.goto: net::ERR_CONNECTION_REFUSED at http://...' as its error name."""
    for word in text.split():
        if word.startswith("net::"):
            return word.removeprefix("net::")
    return text.split(": ", 1)[-1]


__all__ = ["ChromeSession", "PageError", "ProcessError", "shown_url"]
