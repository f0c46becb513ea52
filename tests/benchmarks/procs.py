"""Process-tree sampling for the benchmarks: CPU seconds and peak memory of a tool's processes."""

from __future__ import annotations

import os
import threading

import psutil


class TreeSampler:
    """CPU seconds and peak memory of process trees, sampled every ``period_s`` in a thread.

    ``roots()`` gives the processes to follow (with their descendants) at each sample; ``exclude`` the pids
    never counted (an image server). CPU = the sum over every pid seen of its last user + system time
    (a process that exits between samples loses at most ``period_s`` of CPU); ``peak`` = the largest sum
    of the trees' resident sets (``memory="rss"``) or proportional set sizes (``"pss"``: shared pages split
    between processes, so Ray's shared-memory object store counts once, not once per worker) at one
    sample, in bytes.
    """

    def __init__(self, roots, exclude: set[int] = frozenset(), period_s: float = 0.1, memory: str = "rss") -> None:
        self.roots, self.exclude, self.period_s, self.memory = roots, exclude, period_s, memory
        self.cpu: dict[int, float] = {}
        self.base: dict[int, float] = {}
        self.peak = 0
        self.names: dict[int, str] = {}
        self._stop = threading.Event()

    def _sample(self) -> None:
        rss = 0
        for root in self.roots():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for q in procs:
                if q.pid in self.exclude:
                    continue
                try:
                    t = q.cpu_times()
                    self.cpu[q.pid] = t.user + t.system
                    rss += q.memory_full_info().pss if self.memory == "pss" else q.memory_info().rss
                    old = self.names.get(q.pid, "")
                    if not old.startswith("ray::") or old.startswith("ray::IDLE"):  # a worker's title comes late
                        self.names[q.pid] = _kind(q)
                except psutil.Error:
                    pass
        self.peak = max(self.peak, rss)

    def __enter__(self) -> TreeSampler:
        self._sample()
        self.base = dict(self.cpu)  # CPU already spent before the measured work (the driver's imports)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def cpu_s(self) -> float:
        return sum(v - self.base.get(pid, 0.0) for pid, v in self.cpu.items())

    def cpu_by_kind(self) -> dict[str, float]:
        """CPU seconds per kind of process (Ray worker title up to its first '(' — the last one seen —, else the
        executable's name)."""
        out: dict[str, float] = {}
        for pid, v in self.cpu.items():
            k = self.names.get(pid, "?")
            out[k] = out.get(k, 0.0) + v - self.base.get(pid, 0.0)
        return out


def _kind(q: psutil.Process) -> str:
    cmd = q.cmdline()
    title = cmd[0] if cmd else q.name()
    if title.startswith("ray::"):
        return title.split("(", 1)[0] + ("(" + title.split("(", 2)[1].rstrip(")") + ")" if title.count("(") > 1 else "")
    if q.pid == os.getpid():
        return "driver (this process)"
    return os.path.basename(title) + (" " + os.path.basename(cmd[1]) if len(cmd) > 1 and "python" in title else "")
