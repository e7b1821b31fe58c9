"""Fair share: with `sample_jobs_per_run`, a run keeps at most that many sample jobs out, and each
finished shard lets exactly the next one out."""

from __future__ import annotations

from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from services.coordinator import core
from shared.runconfig import parse_run_config

CFG = parse_run_config("task: {name: arithmetic}\nem: {shard_size: 2, iterations: 1}\nsampling: {n: 4}\n")
IDS = [f"p{i}" for i in range(20)]  # 10 shards


def started(window: int) -> tuple[pb.Run, list[core.Job]]:
    run, _ = core.new_run("run-fair", CFG, "", base_model_key="m")
    core.on_prepare_done(run, CFG, ev.PrepareDone(), {"test": 64})
    d = core.on_eval_done(run, CFG, ev.EvalDone(iteration=0, split="test"), {"test": 64}, IDS, window)
    return run, d.jobs


def test_a_window_keeps_that_many_shards_out_and_tops_up_one_per_finished_shard() -> None:
    run, jobs = started(window=3)
    assert [j.message.shard for j in jobs] == [0, 1, 2]
    published = [j.message.shard for j in jobs]
    for shard in (1, 0, 2, 4, 3, 5, 6, 7, 8, 9):  # out of order, as replicas finish
        assert shard in published
        d = core.on_sample_done(run, CFG, ev.SampleDone(iteration=1, shard=shard), IDS, 3)
        kinds = [j.job_type for j in d.jobs]
        assert kinds[0] == "verify" and all(k == "sample" for k in kinds[1:])
        published += [j.message.shard for j in d.jobs[1:]]
        out = len(published) - len(run.iterations[-1].shards_sampled)
        assert out == min(3, 10 - len(run.iterations[-1].shards_sampled))
    assert published == list(range(10))
    assert [list(j.message.problem_ids) for j in jobs] == [IDS[0:2], IDS[2:4], IDS[4:6]]
    # a redelivered SampleDone publishes nothing more
    assert core.on_sample_done(run, CFG, ev.SampleDone(iteration=1, shard=9), IDS, 3).jobs == []


def test_without_a_window_every_shard_goes_out_at_once() -> None:
    run, jobs = started(window=0)
    assert [j.message.shard for j in jobs] == list(range(10))
    d = core.on_sample_done(run, CFG, ev.SampleDone(iteration=1, shard=0), IDS, 0)
    assert [j.job_type for j in d.jobs] == ["verify"]


def test_a_verify_window_keeps_that_many_sampled_shards_in_verification() -> None:
    run, _ = started(window=0)
    verify_jobs: list[int] = []
    for shard in range(6):  # six shards sampled before any is verified
        d = core.on_sample_done(run, CFG, ev.SampleDone(iteration=1, shard=shard), IDS, 0, 2)
        verify_jobs += [j.message.shard for j in d.jobs if j.job_type == "verify"]
    assert verify_jobs == [0, 1]
    d = core.on_verify_done(run, ev.VerifyDone(iteration=1, shard=1), CFG, 2)
    assert [j.message.shard for j in d.jobs] == [2]
    d = core.on_verify_done(run, ev.VerifyDone(iteration=1, shard=1), CFG, 2)  # redelivered
    assert d.jobs == []
    for shard in (0, 2, 3):
        verify_jobs += [
            j.message.shard
            for j in core.on_verify_done(run, ev.VerifyDone(iteration=1, shard=shard), CFG, 2).jobs
        ]
    assert verify_jobs == [0, 1, 3, 4, 5]  # 2 came with the first verify_done above
    for shard in range(6, 10):  # later shards go straight out while the window has room
        d = core.on_sample_done(run, CFG, ev.SampleDone(iteration=1, shard=shard), IDS, 0, 2)
        verify_jobs += [j.message.shard for j in d.jobs if j.job_type == "verify"]
    assert verify_jobs == [0, 1, 3, 4, 5]  # 4 and 5 are out: no room
    for shard in (4, 5, 6, 7, 8, 9):
        core.on_verify_done(run, ev.VerifyDone(iteration=1, shard=shard), CFG, 2)
    assert run.phase == pb.PHASE_FILTERING


def test_a_window_that_grew_across_a_restart_leaves_no_gap() -> None:
    # Out with a window of 2, then the coordinator restarts with 5 (more replicas after an upgrade):
    # events alone would let out one shard per finished shard past index 5 and never shards 2-4.
    run, _ = started(window=2)
    core.on_sample_done(run, CFG, ev.SampleDone(iteration=1, shard=0), IDS, 2, 1)
    after_restart = core.windowed_jobs(run, CFG, IDS, 5, 3)
    samples = [j.message.shard for j in after_restart if j.job_type == "sample"]
    verifies = [j.message.shard for j in after_restart if j.job_type == "verify"]
    assert samples == [1, 2, 3, 4, 5]  # shard 0 is done; 1 and 2 were out already (deduplicated by id)
    assert verifies == [0]
    # with the same windows it names exactly what is out: nothing new
    assert [j.message.shard for j in core.windowed_jobs(run, CFG, IDS, 2, 1)] == [1, 2, 0]
    run.phase = pb.PHASE_TRAINING
    assert core.windowed_jobs(run, CFG, IDS, 5, 3) == []
