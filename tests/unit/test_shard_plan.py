"""Balanced E-step shards: with `sampler_slots`, an iteration is cut into a multiple of the slots
(jobs of at most `em.shard_size` problems, sizes within one of each other), so the sampler replicas
finish the last round together; the count is recorded with the iteration and every later decision
plans the same shards."""

from __future__ import annotations

import pytest
from restem.events.v1 import events_pb2 as ev

from services.coordinator import core
from services.coordinator.filtering import plan_shards, shard_count
from shared.runconfig import parse_run_config

CFG = parse_run_config("task: {name: arithmetic}\nem: {shard_size: 8, iterations: 1}\nsampling: {n: 4}\n")


@pytest.mark.parametrize(
    ("problems", "size", "slots", "want"),
    [
        (7500, 8, 64, 960),  # 938 jobs would be 14.7 rounds on 64 replicas; 960 are 15 whole ones
        (7500, 8, 0, 938),  # no slots: jobs of exactly shard_size
        (7500, 8, 1, 938),
        (7504, 8, 2, 938),  # already a multiple
        (64, 8, 64, 8),  # one round or less: shard_size kept (the jobs run at once already)
        (520, 8, 64, 128),  # 65 jobs: two whole rounds of 4-5 problems, not one job in a second round
        (130, 1, 64, 130),  # never more jobs than problems (130 one-problem jobs are all there is)
        (1, 8, 64, 1),
    ],
)
def test_shard_count(problems: int, size: int, slots: int, want: int) -> None:
    assert shard_count(problems, size, slots) == want


@pytest.mark.parametrize(("problems", "size", "slots"), [(7500, 8, 64), (100, 7, 6), (520, 8, 64), (9, 2, 3)])
def test_balanced_shards_cover_the_ids_in_order_with_sizes_within_one(
    problems: int, size: int, slots: int
) -> None:
    ids = [f"p{i}" for i in range(problems)]
    count = shard_count(problems, size, slots)
    shards = plan_shards(ids, size, count)
    assert len(shards) == count
    assert [p for s in shards for p in s] == ids
    sizes = {len(s) for s in shards}
    assert max(sizes) <= size and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_the_chunk_count_plans_chunks_of_shard_size() -> None:
    ids = [f"p{i}" for i in range(10)]
    assert plan_shards(ids, 4, 3) == plan_shards(ids, 4) == [ids[0:4], ids[4:8], ids[8:10]]


def _started(slots: int, window: int = 0) -> tuple[core.pb.Run, list[core.Job], list[str]]:
    ids = [f"p{i}" for i in range(100)]
    run, _ = core.new_run("run-bal", CFG, "", base_model_key="m")
    core.on_prepare_done(run, CFG, ev.PrepareDone(), {"test": 64})
    d = core.on_eval_done(run, CFG, ev.EvalDone(iteration=0, split="test"), {"test": 64}, ids, window, slots)
    return run, d.jobs, ids


def test_an_iteration_is_cut_for_the_slots_and_records_the_count() -> None:
    run, jobs, ids = _started(slots=6)  # 13 chunks of 8 -> 18 jobs of 5 or 6 problems
    assert run.iterations[-1].shards_total == len(jobs) == 18
    assert [p for j in jobs for p in j.message.problem_ids] == ids
    assert {len(j.message.problem_ids) for j in jobs} == {5, 6}


def test_later_shards_follow_the_recorded_plan_whatever_the_slots_now() -> None:
    # fair share lets 4 out; the rest go out as shards finish, planned from the recorded count
    # (a coordinator restarted with other sampler_slots must not re-cut a running E-step)
    run, jobs, ids = _started(slots=6, window=4)
    assert [j.message.shard for j in jobs] == [0, 1, 2, 3]
    want = plan_shards(ids, 8, 18)
    d = core.on_sample_done(run, CFG, ev.SampleDone(iteration=1, shard=0), ids, 4)
    nxt = [j.message for j in d.jobs if j.job_type == "sample"]
    assert [(m.shard, list(m.problem_ids)) for m in nxt] == [(4, want[4])]
    again = core.windowed_jobs(run, CFG, ids, 8, 0)  # a restart with a larger window
    assert [(j.message.shard, list(j.message.problem_ids)) for j in again] == [
        (s, want[s]) for s in range(1, 9)
    ]
