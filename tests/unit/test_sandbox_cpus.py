"""CPU budget and pinning decisions from the affinity set and a cgroup CPU quota."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.verifier.sandbox.cpus import cfs_quota, cpu_budget, should_pin


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cfs_quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cfs_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    assert cfs_quota(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cfs_quota(tmp_path) is None
    assert cfs_quota(tmp_path / "missing") is None


def test_a_pod_limited_to_two_cpus_on_a_64_cpu_node_sizes_for_two_and_does_not_pin() -> None:
    node = tuple(range(64))
    assert cpu_budget(node, 2.0) == 2 and cpu_budget(node, 0.5) == 1 and cpu_budget(node, 2.2) == 3
    assert should_pin("auto", node, 2.0) is False  # its cores are every other pod's too
    assert should_pin("on", node, 2.0) is True


def test_own_cpus_are_pinned_by_default() -> None:
    assert cpu_budget((0, 1), None) == 2
    assert should_pin("auto", (0, 1), None) is True  # a VM or a bare machine
    assert should_pin("auto", (4, 5), 2.0) is True  # static CPU manager: a cpuset as wide as the limit
    assert should_pin("off", (0, 1), None) is False


def test_a_bad_mode_says_what_to_use() -> None:
    with pytest.raises(ValueError, match="use one of auto, on, off"):
        should_pin("yes", (0,), None)
