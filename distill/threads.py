"""Torch's CPU thread count, chosen from the CPUs this process may use and what other processes leave free.

torch starts one OpenMP thread per core. When another process keeps a core busy, a step's threads wait
at every barrier for the one that shares its core with the other process, and training slows far more
than the share of the machine it lost (measured: 14.5 steps/s alone, a third of that beside one busy
process, on 2 cores). ``CpuShare`` looks at the CPU time the other processes used on this process's
cores since its last look and keeps torch's threads to the cores they leave free; the trainer asks it
again every few seconds, so a competitor that comes or goes is followed.

A thread count the user set (``OMP_NUM_THREADS``) wins: ``CpuShare.governs()`` is false then.
"""

from __future__ import annotations

import logging
import math
import os
import time

import psutil
import torch

log = logging.getLogger(__name__)
TAKEN = 0.75  # a core counts as taken when other processes keep this much of it busy


def available_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity; every CPU where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def free_threads(cpus: int, others_busy: float) -> int:
    """Threads for ``cpus`` cores of which other processes keep ``others_busy`` cores' worth busy: the cores
    they leave free, at least one. A core counts as taken from ``TAKEN`` of it busy: a busy process holds a
    whole core, while the servers and the flow process around a stage take a fraction now and then."""
    taken = math.floor(max(0.0, others_busy) + 1 - TAKEN)
    return max(1, min(cpus, cpus - taken))


class CpuShare:
    """Follows the CPU time other processes take on this process's cores and sets torch's threads to match."""

    def __init__(self, every_s: float = 5.0):
        self.cpus = available_cpus()
        self.most = max(1, min(len(self.cpus), torch.get_num_threads()))  # torch's own choice: physical cores
        self.every_s = every_s
        self.me = psutil.Process()
        self._last = self._sample()

    @staticmethod
    def governs() -> bool:
        """False where the user chose the thread count (``OMP_NUM_THREADS``)."""
        return "OMP_NUM_THREADS" not in os.environ

    def _sample(self) -> tuple[float, float, float]:
        """(wall clock, busy CPU seconds of our cores, this process's CPU seconds)."""
        per_cpu = psutil.cpu_times(percpu=True)
        busy = 0.0
        for index in self.cpus:
            if index < len(per_cpu):
                times = per_cpu[index]
                busy += sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "guest", 0.0) \
                    - getattr(times, "guest_nice", 0.0)
        mine = self.me.cpu_times()
        return time.monotonic(), busy, mine.user + mine.system

    def others_busy(self) -> float:
        """Cores' worth of CPU the other processes used on our cores since the last look."""
        now = self._sample()
        wall = now[0] - self._last[0]
        others = ((now[1] - self._last[1]) - (now[2] - self._last[2])) / wall if wall > 0 else 0.0
        self._last = now
        return max(0.0, others)

    def apply(self, settle_s: float = 0.3) -> int:
        """Look now (over ``settle_s`` when the last look is that recent) and set torch's threads; returns them."""
        if not self.governs():
            return torch.get_num_threads()
        wait = settle_s - (time.monotonic() - self._last[0])
        if wait > 0:
            time.sleep(wait)
        others = self.others_busy()
        threads = min(self.most, free_threads(len(self.cpus), others))
        if threads != torch.get_num_threads():
            log.info("torch threads %d -> %d: other processes keep %.2f of this process's %d cores busy",
                     torch.get_num_threads(), threads, others, len(self.cpus))
            torch.set_num_threads(threads)
        return threads

    @classmethod
    def follow(cls, device: str, world: int = 1) -> CpuShare | None:
        """A share that has set torch's threads for work on this CPU; None on a GPU, under torchrun (each rank
        has its share) or where the user chose the count."""
        if device != "cpu" or world > 1 or not cls.governs():
            return None
        share = cls()
        share.apply()
        return share

    def maybe_apply(self) -> int:
        """``apply`` when ``every_s`` have passed since the last look (cheap to call every step)."""
        if time.monotonic() - self._last[0] >= self.every_s:
            return self.apply(settle_s=0)
        return torch.get_num_threads()
