"""CPU time of running processes and of the whole machine, from /proc (Linux).

    before = sample(pids); ...; used = since(before)     # {pid: CPU seconds (user + system, all threads)}
    used.machine_busy, used.stolen                       # shares of all cores' time: busy here, and stolen

/proc/PID/stat fields 14 and 15 (utime, stime) in clock ticks (`os.sysconf("SC_CLK_TCK")`, 100 here: 10 ms
resolution, so measure over seconds, not milliseconds). /proc/stat's first line is every core's time by state.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from dataclasses import dataclass

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds `pid` has used so far (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    return (int(fields[11]) + int(fields[12])) * TICK_S


def machine_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) clock ticks of all cores since boot (idle and iowait count as not busy; steal is
    time a hypervisor gave this VM's cores to someone else: it counts in total, not in busy)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    steal = values[7] if len(values) > 7 else 0
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle - steal, total, steal


def children_cpu_s() -> float:
    """CPU seconds of this process's terminated, waited-for children (for short-lived tools such as wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sample:
    processes: dict[int, float]
    machine: tuple[int, int, int]
    children_s: float


def sample(pids: Iterable[int]) -> Sample:
    return Sample({pid: cpu for pid in pids if (cpu := process_cpu_s(pid)) is not None}, machine_ticks(),
                  children_cpu_s())


@dataclass
class Used:
    processes: dict[int, float]  # pid -> CPU seconds over the interval
    machine_busy: float  # 0..1 of all cores
    children_s: float  # CPU seconds of children that ended in the interval
    stolen: float = 0.0  # 0..1 of all cores' time the hypervisor took (a shared host: numbers run slow)

    def total_s(self) -> float:
        return sum(self.processes.values())


def since(before: Sample) -> Used:
    after = sample(before.processes)
    busy = after.machine[0] - before.machine[0]
    total = after.machine[1] - before.machine[1]
    steal = after.machine[2] - before.machine[2]
    return Used({pid: max(0.0, after.processes[pid] - cpu) for pid, cpu in before.processes.items()
                 if pid in after.processes},
                busy / total if total > 0 else 0.0, after.children_s - before.children_s,
                steal / total if total > 0 else 0.0)
