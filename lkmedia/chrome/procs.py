"""The processes behind one Chrome capture: an Xvfb display, a PulseAudio daemon with one
null sink, and Chromium itself. Each is a child of the job process in a process group of
its own; ``close`` kills the group, so nothing they started outlives the job.

One PulseAudio daemon per job (a runtime directory of its own, started with ``-n``: only
the native protocol and the sink are loaded) rather than one per node: no
``module-suspend-on-idle`` (an idle sink would deliver almost nothing), no sink to reap
when a job dies, no job that can take another's audio down.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
from collections.abc import Mapping, Sequence

from ..core import LkmediaError

log = logging.getLogger("lkmedia.chrome")

SINK = "lkmedia"  # the null sink's name in each job's own daemon
XVFB_LOCK = "/tmp/.lkmedia-xvfb.lock"
FIRST_DISPLAY = 10  # as the Go egress (10 + a random number)
CHROME = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


class ProcessError(LkmediaError):
    """A capture process would not start: the message names it and why."""


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """(In the child, before exec.) SIGKILL when the job process dies, even by SIGKILL:
    a killed job leaves no display, sound server or browser behind (Chromium's own
    helpers end when their browser process goes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Child:
    """One started process (its own process group) and its name for messages."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name, self.proc = name, proc

    @classmethod
    async def start(cls, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
                    pass_fds: Sequence[int] = (), stderr: int | None = asyncio.subprocess.DEVNULL,
                    stdout: int | None = asyncio.subprocess.DEVNULL) -> Child:
        exe = shutil.which(argv[0]) or argv[0]
        if not os.path.exists(exe):
            raise ProcessError(f"{name} is not installed ({argv[0]} not found; scripts/setup.sh installs it)")
        proc = await asyncio.create_subprocess_exec(
            exe, *argv[1:], env=dict(env) if env is not None else None, pass_fds=tuple(pass_fds),
            stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            start_new_session=True, preexec_fn=_die_with_parent)
        return cls(name, proc)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def close(self, grace: float = 2.0) -> None:
        """SIGTERM the group, SIGKILL what is left after ``grace``: the process and every
        child it made (Chromium's renderers outlive their parent otherwise)."""
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await self.proc.wait()
        except TimeoutError:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        await self.proc.wait()


async def start_xvfb(width: int, height: int, depth: int = 24, timeout: float = 10.0) -> tuple[Child, str]:
    """An Xvfb display of ``width`` x ``height`` on a free display number from
    ``FIRST_DISPLAY`` up; no TCP listener. Returns it and ``":N"`` once it accepts clients.

    lkmedia picks the number itself, under a lock file shared by every job process, and
    lets the next job choose only once this display answers: Xvfb's own ``-displayfd``
    choice handed two concurrent jobs the same number (one display then answers nobody).
    """
    loop = asyncio.get_running_loop()
    lock = os.open(XVFB_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        await loop.run_in_executor(None, fcntl.flock, lock, fcntl.LOCK_EX)
        tries = 0
        for n in range(FIRST_DISPLAY, FIRST_DISPLAY + 1000):
            if os.path.exists(f"/tmp/.X{n}-lock") or os.path.exists(f"/tmp/.X11-unix/X{n}"):
                continue
            xvfb = await Child.start("Xvfb", ["Xvfb", f":{n}", "-screen", "0", f"{width}x{height}x{depth}", "-ac",
                                              "-nolisten", "tcp", "-noreset"])
            if await _x_ready(n, xvfb, timeout):
                return xvfb, f":{n}"
            exited = not xvfb.alive  # on its own: the number was taken by someone else, try the next
            await xvfb.close()
            tries += 1
            if not exited:
                raise ProcessError(f"Xvfb did not open display :{n} within {timeout:g} s")
            if tries >= 10:
                break
        raise ProcessError(f"Xvfb could not start a display (exit status {xvfb.proc.returncode})")
    finally:
        os.close(lock)  # (releases the lock)


async def _x_ready(n: int, xvfb: Child, timeout: float) -> bool:
    """Whether display ``n`` accepts connections within ``timeout`` (False: Xvfb exited)."""
    path = f"/tmp/.X11-unix/X{n}"
    deadline = asyncio.get_running_loop().time() + timeout
    while xvfb.alive and asyncio.get_running_loop().time() < deadline:
        if os.path.exists(path):
            try:
                _, w = await asyncio.open_unix_connection(path)
            except OSError:
                pass
            else:
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()
                return True
        await asyncio.sleep(0.02)
    return False


async def start_pulse(runtime_dir: str, rate: int = 48_000, channels: int = 2, timeout: float = 10.0
                      ) -> tuple[Child, str]:
    """A PulseAudio daemon of this job's own, with one null sink (``SINK``, s16le at
    ``rate``). Returns it and its server address for ``PULSE_SERVER``."""
    os.makedirs(runtime_dir, exist_ok=True)
    socket_path = os.path.join(runtime_dir, "native")
    env = {**os.environ, "PULSE_RUNTIME_PATH": runtime_dir, "HOME": runtime_dir, "XDG_CONFIG_HOME": runtime_dir}
    env.pop("DISPLAY", None)
    pa = await Child.start("PulseAudio", [
        "pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "--use-pid-file=no",
        "--disable-shm=yes", "--log-target=stderr", "--log-level=error",
        "-L", f"module-native-protocol-unix auth-anonymous=1 socket={socket_path}",
        "-L", f"module-null-sink sink_name={SINK} rate={rate} channels={channels} format=s16le "
              f"sink_properties=device.description=lkmedia"], env=env)
    deadline = asyncio.get_running_loop().time() + timeout
    while not os.path.exists(socket_path):
        if not pa.alive or asyncio.get_running_loop().time() > deadline:
            await pa.close()
            raise ProcessError(f"PulseAudio did not start (exit status {pa.proc.returncode})")
        await asyncio.sleep(0.02)
    return pa, f"unix:{socket_path}"


async def start_parec(server: str, rate: int = 48_000, channels: int = 2, timeout: float = 5.0) -> Child:
    """``parec`` reading the sink's monitor as raw s16le on its stdout, delivering.

    A null sink sleeps in 2 s blocks until a stream asks for less: the first recording
    stream of a fresh daemon gets nothing for up to 2 s. Suspending and resuming the sink
    once the stream is connected restarts it at the stream's 20 ms."""
    env = {**os.environ, "PULSE_SERVER": server}
    parec = await Child.start("parec", ["parec", "-d", f"{SINK}.monitor", "--raw", "--format=s16le",
                                        f"--rate={rate}", f"--channels={channels}", "--latency-msec=20"], env=env,
                              stdout=asyncio.subprocess.PIPE)
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _pactl(env, "list", "short", "source-outputs"):
        if not parec.alive or asyncio.get_running_loop().time() > deadline:
            await parec.close()
            raise ProcessError(f"parec did not connect to PulseAudio (exit status {parec.proc.returncode})")
        await asyncio.sleep(0.02)
    await _pactl(env, "suspend-sink", SINK, "1")
    await _pactl(env, "suspend-sink", SINK, "0")
    return parec


async def _pactl(env: Mapping[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec("pactl", *args, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return out.decode().strip()


def chrome_path() -> str:
    for p in CHROME:
        if os.path.exists(p):
            return p
    raise ProcessError("Chromium is not installed (/usr/bin/chromium not found; scripts/setup.sh installs it)")


def chrome_args(width: int, height: int, user_data_dir: str, *, sandbox: bool, insecure: bool,
                flags: Mapping[str, object]) -> list[str]:
    """The Go egress's Chrome flags (pkg/pipeline/source/web.go), headful on the job's
    display, with a DevTools port for Playwright; ``flags`` (config ``chrome_flags``) last:
    ``{name: value}``, a true value giving ``--name``, false leaving it out."""
    args = [
        f"--user-data-dir={user_data_dir}", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
        "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-infobars",
        "--disable-background-networking", "--enable-features=NetworkService,NetworkServiceInProcess",
        "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows", "--disable-breakpad",
        "--disable-client-side-phishing-detection", "--disable-default-apps", "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-features=AudioServiceOutOfProcess,site-per-process,Translate,TranslateUI,BlinkGenPropertyTrees",
        "--disable-hang-monitor", "--disable-ipc-flooding-protection", "--disable-popup-blocking",
        "--disable-prompt-on-repost", "--disable-renderer-backgrounding", "--disable-sync",
        "--force-color-profile=srgb", "--metrics-recording-only", "--safebrowsing-disable-auto-update",
        "--password-store=basic", "--use-mock-keychain", "--kiosk", "--disable-translate",
        "--autoplay-policy=no-user-gesture-required", "--window-position=0,0", f"--window-size={width},{height}",
    ]
    if insecure:
        args += ["--disable-web-security", "--allow-running-insecure-content"]
    if not sandbox:
        args.append("--no-sandbox")
    for name, value in flags.items():
        if value is True or value in ("", None):
            args.append(f"--{name}")
        elif value is not False:
            args.append(f"--{name}={value}")
    return [*args, "about:blank"]


async def devtools_port(user_data_dir: str, chrome: Child, timeout: float = 20.0) -> int:
    """The DevTools port Chromium chose (it writes it to DevToolsActivePort)."""
    path = os.path.join(user_data_dir, "DevToolsActivePort")
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(path) as f:
                return int(f.read().split()[0])
        if not chrome.alive:
            raise ProcessError(f"Chromium exited at start (status {chrome.proc.returncode})")
        if asyncio.get_running_loop().time() > deadline:
            raise ProcessError(f"Chromium did not open its DevTools port within {timeout:g} s")
        await asyncio.sleep(0.05)
