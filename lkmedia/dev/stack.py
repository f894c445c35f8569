"""A LiveKit dev stack on loopback: redis-server and livekit-server, on free ports.

The demo (the main job), the tests and the benchmarks drive the real server rather than
mocks. livekit-server comes from ``scripts/install_livekit.sh`` (built into
``~/.cache/lkmedia/bin``, or ``$LKMEDIA_CACHE/bin``); redis-server is the Debian package,
started here as a private instance, never as the system service.

    async with DevStack() as stack:
        async with stack.api() as lk:
            await lk.room.list_rooms(api.ListRoomsRequest())
        token = stack.token("alice", "room1")
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

CACHE_BIN = Path(os.environ.get("LKMEDIA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "lkmedia") / "bin"
DEV_KEY = "devkey"
#: The dev stack's own API secret, long enough for HS256 (livekit-server's dev default,
#: "secret", is 6 bytes, and PyJWT warns about it on every token): not a real credential.
DEV_SECRET = "lkmedia-dev-stack-secret-not-for-production"


class StackError(RuntimeError):
    """A part of the dev stack is missing or did not come up."""


#: Below Linux's ephemeral range (32768-60999): a port handed out here is never taken by an
#: outgoing connection (the test's own HTTP/Redis clients) before its server binds it, as
#: the kernel's bind(0) choice was, seconds later, in a child that was still starting.
PORT_RANGE = (20000, 32767)


_GIVEN: set[int] = set()  # ports this process handed out (their servers may not be up yet)


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port nobody uses right now, outside the kernel's ephemeral range, never the same
    one twice in a process (two asked for in a row, e.g. health and Prometheus, are bound
    later: both could otherwise be the same). A TCP port is also tried on IPv6's ``::``,
    where the services listen (CI: a service's Prometheus port was free on 127.0.0.1 and
    in use there)."""
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        if port in _GIVEN or not _bindable(kind, host, port):
            continue
        _GIVEN.add(port)
        return port
    raise StackError(f"no free port in {PORT_RANGE[0]}-{PORT_RANGE[1]} after 200 tries")


def _bindable(kind: int, host: str, port: int) -> bool:
    tries = [(socket.AF_INET, host)]
    if kind == socket.SOCK_STREAM and socket.has_ipv6:
        tries.append((socket.AF_INET6, "::"))
    for family, addr in tries:
        with socket.socket(family, kind) as s:
            try:
                s.bind((addr, port))
            except OSError as e:
                if family == socket.AF_INET6 and e.errno == errno.EADDRNOTAVAIL:
                    continue  # (no IPv6 here)
                return False
    return True


def find_binary(name: str, *fallbacks: str) -> str:
    """``name`` from LKMEDIA_LIVEKIT_BIN or the build cache (~/.cache/lkmedia/bin), else
    the first of ``fallbacks`` on PATH."""
    for d in (os.environ.get("LKMEDIA_LIVEKIT_BIN"), str(CACHE_BIN)):
        if d and os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    for f in fallbacks:
        p = shutil.which(f)
        if p:
            return p
    raise StackError(f"{name!r} not found in {CACHE_BIN}: run scripts/setup.sh")


def _tail(path: Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


class _Process:
    """A child process whose output goes to a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise StackError(f"{self.name} exited with code {code}; log {self.log_path}:\n{_tail(self.log_path)}")

    def stop(self, timeout: float = 5.0, signals: Iterable[int] = (signal.SIGTERM,)) -> int | None:
        """SIGTERM (each of ``signals`` in turn, a second apart), then SIGKILL at ``timeout``."""
        p = self.proc
        deadline = time.monotonic() + timeout
        for sig in signals:
            if p.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(min(1.0, max(0.0, deadline - time.monotonic())))
        if p.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
        self._log.close()
        return p.returncode


def _wait(what: str, ok: Any, proc: _Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proc.check_alive()
        try:
            if ok():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not answer within {timeout:g} s; log {proc.log_path}:\n"
                             f"{_tail(proc.log_path)}")
        time.sleep(0.05)


class RedisServer:
    """A private redis-server on a free loopback port. ``persistent``: an append-only file
    fsynced on every write (as production should run it for the start queue), so that a
    restart keeps every key; otherwise no persistence."""

    def __init__(self, workdir: Path, port: int | None = None, *, persistent: bool = False) -> None:
        self.workdir = workdir
        self.persistent = persistent
        self.starts = 0
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._proc: _Process | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _ping(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def start(self, timeout: float = 10.0) -> None:
        exe = find_binary("redis-server", "redis-server")
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        argv = [exe, "--port", str(self.port), "--bind", self.host, "--save", "", *persist,
                "--dir", str(self.workdir), "--protected-mode", "yes"]
        self.starts += 1
        log_name = "redis.log" if self.starts == 1 else f"redis-{self.starts}.log"
        self._proc = _Process("redis-server", argv, self.workdir / log_name)
        _wait(f"redis-server on {self.address}", self._ping, self._proc, timeout)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(timeout=5.0)
            self._proc = None


class DevStack:
    """redis-server + livekit-server (dev mode, key devkey and DEV_SECRET) on loopback.

    webhook_urls: livekit-server posts its webhooks there (signed with api_key).
    redis_address: use this Redis instead of starting one.
    config: extra livekit-server YAML keys merged over the generated config.
    """

    def __init__(
        self,
        *,
        webhook_urls: Sequence[str] = (),
        redis_address: str | None = None,
        config: dict[str, Any] | None = None,
        workdir: str | Path | None = None,
        start_timeout: float = 30.0,
        redis_persistent: bool = False,
    ) -> None:
        self.api_key = DEV_KEY
        self.api_secret = DEV_SECRET
        self.webhook_urls = list(webhook_urls)
        self.extra_config = config or {}
        self.start_timeout = start_timeout
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="lkm-devstack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis: RedisServer | None = None
        self._redis_address = redis_address
        self.redis_persistent = redis_persistent
        self._server: _Process | None = None
        self.http_port = 0
        self.rtc_tcp_port = 0
        self.rtc_udp_port = 0
        self.host = "127.0.0.1"

    @staticmethod
    def check_installed() -> None:
        """StackError naming livekit-server or redis-server if either is missing."""
        find_binary("server", "livekit-server")
        find_binary("redis-server", "redis-server")

    # -- addresses ---------------------------------------------------------
    @property
    def url(self) -> str:
        """The signalling URL clients join with (ws://)."""
        return f"ws://{self.host}:{self.http_port}"

    @property
    def http_url(self) -> str:
        """The Twirp API base URL server SDKs call."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def redis_address(self) -> str:
        if self._redis_address is not None:
            return self._redis_address
        assert self.redis is not None, "stack not started"
        return self.redis.address

    @property
    def log_path(self) -> Path:
        return self.workdir / "livekit-server.log"

    def server_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "port": self.http_port,
            "bind_addresses": [self.host],
            "keys": {self.api_key: self.api_secret},
            "redis": {"address": self.redis_address},
            "rtc": {
                "tcp_port": self.rtc_tcp_port,
                "udp_port": self.rtc_udp_port,
                "node_ip": self.host,
                "use_external_ip": False,
                "enable_loopback_candidate": True,
                # loopback only: with node_ip mapping every interface's socket to 127.0.0.1,
                # two sockets share one advertised candidate, and a client that tries only one
                # (FFmpeg's WHIP muxer) reached the wrong one about half the time
                "interfaces": {"includes": ["lo"]},
            },
            "logging": {"level": "info"},
        }
        if self.webhook_urls:
            conf["webhook"] = {"api_key": self.api_key, "urls": self.webhook_urls}
        for k, v in self.extra_config.items():
            if isinstance(v, dict) and isinstance(conf.get(k), dict):
                conf[k] = {**conf[k], **v}
            else:
                conf[k] = v
        return conf

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> DevStack:
        """Start both processes and wait until livekit-server answers HTTP."""
        exe = find_binary("server", "livekit-server")
        try:
            if self._redis_address is None:
                self.redis = RedisServer(self.workdir, persistent=self.redis_persistent)
                self.redis.start()
            for attempt in range(3):  # a free port can be taken between probe and bind
                self.http_port = free_port()
                self.rtc_tcp_port = free_port()
                self.rtc_udp_port = free_port(socket.SOCK_DGRAM)
                body = yaml.safe_dump(self.server_config(), sort_keys=False)
                # The config (it holds the secret) goes by environment, not argv.
                self._server = _Process("livekit-server", [exe, "--dev"], self.log_path, {"LIVEKIT_CONFIG": body})
                try:
                    _wait(f"livekit-server on {self.http_url}", self._http_ok, self._server, self.start_timeout)
                    return self
                except StackError:
                    log = _tail(self.log_path, 200)
                    self._server.stop(timeout=2.0)
                    self._server = None
                    if "address already in use" not in log or attempt == 2:
                        raise
        except BaseException:
            self.stop()
            raise
        return self

    def restart_redis(self, down: float = 1.0) -> None:
        """Stop our redis-server, wait ``down`` seconds, start it again on the same port."""
        assert self.redis is not None, "this stack did not start a Redis"
        self.redis.stop()
        time.sleep(down)
        self.redis.start()

    def _http_ok(self) -> bool:
        with urllib.request.urlopen(self.http_url + "/", timeout=1.0) as r:
            return r.status == 200

    def stop(self) -> None:
        """SIGTERM (twice: the second skips waiting for participants), then SIGKILL."""
        if self._server is not None:
            self._server.stop(timeout=8.0, signals=(signal.SIGTERM, signal.SIGTERM))
            self._server = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def cleanup(self) -> None:
        """Stop and remove the work dir (logs included) if this stack made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.proc.poll() is None

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def __aenter__(self) -> DevStack:
        import asyncio

        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)

    # -- clients -----------------------------------------------------------
    def api(self) -> Any:
        """A ``livekit.api.LiveKitAPI`` for this server (call inside the event loop;
        ``async with`` it or ``await .aclose()``)."""
        from livekit import api

        return api.LiveKitAPI(self.http_url, self.api_key, self.api_secret)

    def token(
        self,
        identity: str,
        room: str,
        grants: Any = None,
        *,
        name: str | None = None,
        ttl_seconds: int = 3600,
    ) -> str:
        """A join token. ``grants``: a ``livekit.api.VideoGrants`` (default: join ``room``,
        publish and subscribe)."""
        import datetime

        from livekit import api

        if grants is None:
            grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True)
        elif not grants.room:
            grants.room = room
        tok = (api.AccessToken(self.api_key, self.api_secret).with_identity(identity)
               .with_grants(grants).with_ttl(datetime.timedelta(seconds=ttl_seconds)))
        if name:
            tok = tok.with_name(name)
        return tok.to_jwt()
