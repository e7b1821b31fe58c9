"""A verdict's reward under each `em.reward` mode (pure): what every verdict row's `reward` is.

- `binary`, the paper's reward and the default, for every task: 1.0 when the check passes (a
  program: every test), else 0.0.
- `fraction_of_tests`, for code tasks: the share of the problem's tests the program passes. Every
  test runs (grading does not stop at the first failure, which is what makes it cost more: a
  program that times out on every test costs every test's time limit). A program with nothing to
  run (no code, empty code) scores 0; a HumanEval problem is one test (its check()), so it scores 0
  or 1 as under binary.

The verdict is the same in both modes: `correct` means every test passed and `rule` names the
first failing test; only the reward differs.

Not here: running the tests (`code_grader`), what passing one means (`code_checks`), which samples
the filter keeps for a reward (`services.coordinator.selection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from shared.params import RewardMode
from shared.tasks import Verdict

from .code_checks import CodeVerdict, Status

REWARD_MODES: tuple[RewardMode, ...] = get_args(RewardMode)


@dataclass(frozen=True)
class Scored:
    """A verdict and the reward it gives."""

    verdict: Verdict
    reward: float


def binary(verdict: Verdict) -> Scored:
    return Scored(verdict, 1.0 if verdict.correct else 0.0)


def fraction_of_tests(verdict: CodeVerdict) -> float:
    """Passed tests / tests, from a verdict that ran every test (`stop_on_failure=False`)."""
    if not verdict.tests:  # nothing ran: an invalid program
        return 1.0 if verdict.correct else 0.0
    return sum(1 for t in verdict.tests if t.status is Status.PASSED) / len(verdict.tests)


def reward_mode(name: str) -> RewardMode:
    """A verify job's `reward`; empty (a job of an earlier coordinator) is binary."""
    for mode in REWARD_MODES:
        if name == mode:
            return mode
    if not name:
        return "binary"
    raise ValueError(f"unknown reward '{name}': use one of {', '.join(REWARD_MODES)}")
