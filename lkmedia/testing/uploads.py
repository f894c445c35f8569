"""Watching a job's local directory while it uploads: whenever a file disappears, the
storage is asked at once for the same key. A file gone locally before its object exists
(at full size) would be a file deleted before a confirmed upload."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


class LocalWatcher:
    """``run()`` in a thread until ``stop()``; ``vanished``: key -> (last local size, the
    stored object's size when the local file was found gone, None if there was none)."""

    def __init__(self, root: Path, stored_size: Callable[[str], int | None]) -> None:
        self.root = root
        self.stored_size = stored_size
        self.seen: dict[str, int] = {}
        self.vanished: dict[str, tuple[int, int | None]] = {}
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
            for name, size in self.seen.items():
                # size 0: the file sink's writability probe, removed before media arrives
                if name not in now and size > 0:
                    self.vanished[name] = (size, self._size(name))
            self.seen = now
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop = True
