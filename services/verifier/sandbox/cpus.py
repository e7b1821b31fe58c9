"""Which CPUs the sandbox pool may use, and whether to pin its workers to them.

A container sees every CPU of its node in its affinity set unless the kubelet's static CPU
manager gives it exclusive ones; its CPU *limit* is a CFS quota instead. Sizing the pool from
the affinity set alone would start two zygotes per node CPU in a pod limited to two, and pinning
to CPUs other pods also run on would tie workers to busy cores. So: the budget is the quota (when
one is set and narrower), and `auto` pins only when the pool has its CPUs to itself in that sense
(no quota narrower than the affinity set: a VM, a bare machine, a static-CPU-manager pod).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal, get_args

PinCpus = Literal["auto", "on", "off"]
PIN_MODES: tuple[PinCpus, ...] = get_args(PinCpus)


def usable_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (a container's cpuset, not the host's count)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def cfs_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time per period this cgroup may use (cgroup v2 `cpu.max`, v1
    `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None without a limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def cpu_budget(cpus: tuple[int, ...], quota: float | None) -> int:
    """How many CPUs the pool can keep busy: the affinity set, capped by the quota (rounded up)."""
    return max(1, min(len(cpus), math.ceil(quota))) if quota else max(1, len(cpus))


def should_pin(mode: str, cpus: tuple[int, ...], quota: float | None) -> bool:
    if mode not in PIN_MODES:
        raise ValueError(f"pin_cpus {mode!r}: use one of {', '.join(PIN_MODES)}")
    if mode != "auto":
        return mode == "on"
    return len(cpus) > 0 and cpu_budget(cpus, quota) >= len(cpus)
