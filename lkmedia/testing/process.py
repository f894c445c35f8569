"""Stopping the servers tests start (nginx, MinIO): a signal, a wait, then SIGKILL."""
from __future__ import annotations

import signal
import subprocess


def stop_process(p: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send ``sig`` and wait up to ``timeout`` s; SIGKILL if it is still running."""
    if p is None or p.poll() is not None:
        return
    p.send_signal(sig)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def kill_process(p: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL now (connections are reset mid-request; files stay as written)."""
    if p is not None and p.poll() is None:
        p.kill()
        p.wait()
