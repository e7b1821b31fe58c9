"""The verifier's sandbox settings reach both pools by field name, with PoolConfig's defaults.

Generated from the models: a SandboxSettings field named like a PoolConfig field that did not reach
the pools, or whose default differed, would fail here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args, get_origin

import pytest

from services.verifier.checkers import Checkers
from services.verifier.config import SandboxSettings
from services.verifier.math_checks import math_pool_config
from services.verifier.sandbox.pool import PoolConfig

SHARED = sorted({f.name for f in dataclasses.fields(PoolConfig)} & set(SandboxSettings.model_fields))


def _other(name: str, value: Any) -> Any:
    annotation = SandboxSettings.model_fields[name].annotation
    if get_origin(annotation) is Literal:
        return next(v for v in get_args(annotation) if v != value)
    return value + 3


def test_the_shared_fields_are_the_pool_settings() -> None:
    assert SHARED == ["mode", "pin_cpus", "queue_size", "recycle_after", "tmp_mb", "uid_base", "workers"]


@pytest.mark.parametrize("name", SHARED)
def test_a_setting_has_the_pools_default_and_reaches_both_pools(name: str) -> None:
    default = getattr(SandboxSettings(), name)
    assert default == getattr(PoolConfig(), name)
    checkers = Checkers(SandboxSettings(**{name: _other(name, default)}))
    code, math = checkers._code_config(), checkers._math_config()
    assert getattr(code, name) == _other(name, default)
    if name == "workers":  # the math pool sizes itself from math_workers
        assert math.workers == math_pool_config(SandboxSettings().math_workers).workers
    elif name == "uid_base":
        assert math.uid_base == code.uid_base + 512  # the math pool's uids never overlap the code pool's
    else:
        assert getattr(math, name) == _other(name, default)
