"""Which checkpoints the coordinator hints for prefetch, and how a replica acts on hints: the
policy of every E-step that follows (the base after import, each M-step's checkpoint but the last),
downloaded once per replica after its random delay; a failed prefetch is only logged."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from restem.events.v1 import events_pb2 as ev

from services.coordinator import core
from services.sampler.prefetch import PolicyPrefetch
from shared.runconfig import parse_run_config

CFG = parse_run_config(
    "task: {arithmetic: {train: 8, validation: 0, test: 4}}\nem: {iterations: 2, shard_size: 8}\n"
)
SPLITS = {"test": 4}


def test_the_policy_of_each_following_e_step_is_hinted() -> None:
    run, _ = core.new_run("r-p", CFG, "", base_model_key="models/base")
    assert core.on_prepare_done(run, CFG, ev.PrepareDone(), SPLITS).prefetch == ["models/base"]
    core.on_eval_done(run, CFG, ev.EvalDone(iteration=0, split="test"), SPLITS, ["a"])
    run.phase = core.pb.PHASE_TRAINING
    d = core.on_train_done(run, CFG, ev.TrainDone(iteration=1, checkpoint_key="ck/1"), SPLITS)
    assert d.prefetch == ["ck/1"] and [j.job_type for j in d.jobs] == ["eval"]
    core.on_eval_done(run, CFG, ev.EvalDone(iteration=1, split="test"), SPLITS, ["a"])
    run.phase = core.pb.PHASE_TRAINING
    last = core.on_train_done(run, CFG, ev.TrainDone(iteration=2, checkpoint_key="ck/2"), SPLITS)
    assert last.prefetch == []  # the last iteration: no E-step samples from it


class Fetches:
    def __init__(self, fail: bool = False) -> None:
        self.keys: list[str] = []
        self.fail = fail

    async def fetch(self, key: str) -> Path:
        self.keys.append(key)
        if self.fail:
            raise OSError("store unreachable")
        return Path("/cache") / key


def test_a_replica_downloads_each_hinted_policy_once_after_its_delay() -> None:
    async def scenario() -> tuple[list[str], list[tuple[float, float]]]:
        fetches, delays = Fetches(), []

        def delay(lo: float, hi: float) -> float:
            delays.append((lo, hi))
            return 0.01

        prefetch = PolicyPrefetch(fetches, 30.0, delay)
        for key in ("ck/1", "ck/1", "ck/2"):
            await prefetch("r", key)
        await asyncio.sleep(0.1)
        await prefetch.close()
        return fetches.keys, delays

    keys, delays = asyncio.run(scenario())
    assert keys == ["ck/1", "ck/2"] and delays == [(0.0, 30.0), (0.0, 30.0)]


def test_a_failed_prefetch_is_logged_and_close_cancels_the_waiting_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> list[str]:
        fetches = Fetches(fail=True)
        now = PolicyPrefetch(fetches, 0.0)
        await now("r", "ck/1")
        await asyncio.sleep(0.05)
        later = PolicyPrefetch(fetches, 3600.0, lambda lo, hi: hi)
        await later("r", "ck/2")
        await later.close()  # returns at once: the hour-long wait is cancelled
        return fetches.keys

    with caplog.at_level(logging.WARNING):
        keys = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert keys == ["ck/1"]
    assert "prefetch of ck/1 (run r) failed: store unreachable" in caplog.text
