"""Watching a job's local directory while it uploads: whenever a file disappears, the
storage is asked at once for the same key. A file gone locally before its object exists
(at full size) would be a file deleted before a confirmed upload. Polling the storage's
listing beside it gives how long each file took from written to listed."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path


class LocalWatcher:
    """``run()`` in a thread until ``stop()``; ``vanished``: key -> (last local size, the
    stored object's size when the local file was found gone, None if there was none);
    ``appeared``: key -> ``time.monotonic()`` when the local file was first seen."""

    def __init__(self, root: Path, stored_size: Callable[[str], int | None]) -> None:
        self.root = root
        self.stored_size = stored_size
        self.seen: dict[str, int] = {}
        self.vanished: dict[str, tuple[int, int | None]] = {}
        self.appeared: dict[str, float] = {}
        self._stop = False

    def _scan(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                p = os.path.join(dirpath, f)
                try:
                    out[os.path.relpath(p, self.root)] = os.path.getsize(p)
                except OSError:
                    pass
        return out

    def _size(self, key: str) -> int | None:
        try:
            return self.stored_size(key)
        except Exception:
            return None

    def run(self) -> None:
        while not self._stop:
            now = self._scan()
            t = time.monotonic()
            for name in now.keys() - self.seen.keys():
                self.appeared.setdefault(name, t)
            for name, size in self.seen.items():
                # Size 0 too: a small file (the first HLS segment) can be written in one go when
                # it is closed and be uploaded and removed before the next scan sees its size.
                # The file sink's writability probe (size 0, same name as the file) vanishes
                # first; the real file vanishing later overwrites its entry.
                if name not in now:
                    self.vanished[name] = (size, self._size(name))
            self.seen = now
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop = True


class ObjectPoller:
    """``run()`` in a thread until ``stop()``: lists the storage every ``every`` seconds;
    ``listed``: key -> ``time.monotonic()`` when it was first listed. A listing that fails
    (the server is down) is skipped."""

    def __init__(self, list_keys: Callable[[], Iterable[str]], every: float = 0.05) -> None:
        self.list_keys = list_keys
        self.every = every
        self.listed: dict[str, float] = {}
        self._stop = False

    def run(self) -> None:
        while not self._stop:
            try:
                keys = list(self.list_keys())
            except Exception:
                keys = []
            t = time.monotonic()
            for k in keys:
                self.listed.setdefault(k, t)
            time.sleep(self.every)

    def stop(self) -> None:
        self._stop = True


def delays(appeared: dict[str, float], listed: dict[str, float]) -> list[float]:
    """Seconds from each local file seen to its key listed, for the keys seen in both."""
    return sorted(listed[k] - appeared[k] for k in appeared.keys() & listed.keys())
