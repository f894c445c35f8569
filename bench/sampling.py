"""CPU and memory of a process tree over an interval, for the benches: each process's own
user + sys time as last seen (sampled every ``interval``), so that processes which die in
the interval and are reaped by nobody in the tree (Chromium's, when their parent is
killed) still count; and the tree's peak memory (the sum of PSS)."""
from __future__ import annotations

import threading

from lkmedia.worker.sampler import process_tree

_TCK = 100.0


def _own_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TCK  # utime + stime, own


def _rss(pid: int) -> int:
    """The process's proportional share of resident memory (PSS: pages shared by N
    processes count 1/N in each, so a tree's sum is what it really holds)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class TreeSampler:
    """The CPU of a process tree over an interval, processes that die in it included."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root, self.interval = root, interval
        self.base = {p: c for p in process_tree(root) if (c := _own_cpu(p)) is not None}
        self.last: dict[int, float] = dict(self.base)
        self.peak_rss = 0  # bytes: the most the tree held at once (sum of PSS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        rss = 0
        for p in process_tree(self.root):
            c = _own_cpu(p)
            if c is not None:
                self.last[p] = max(c, self.last.get(p, 0.0))
            rss += _rss(p)
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> float:
        self._sample()
        self._stop.set()
        self._thread.join()
        return sum(c - self.base.get(p, 0.0) for p, c in self.last.items())
