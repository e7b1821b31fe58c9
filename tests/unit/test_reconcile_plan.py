"""Which recorded jobs a restarted coordinator re-publishes: the open ones of the current phase only."""

from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from services.coordinator import core
from services.coordinator.reconcile import open_jobs, outstanding
from shared import keys
from shared.runconfig import parse_run_config

CFG = parse_run_config("task: {arithmetic: {train: 12, validation: 4, test: 4}}\nem: {shard_size: 4}\n")
IDS = [f"p{i}" for i in range(12)]


def _sampling_run() -> tuple[pb.Run, list[core.Job]]:
    run, decision = core.new_run("r-1", CFG, "", base_model_key="models/base")
    jobs = list(decision.jobs)
    decision = core.on_prepare_done(run, CFG, ev.PrepareDone(run_id="r-1"), {"validation": 32, "test": 64})
    jobs += decision.jobs
    for split in ("validation", "test"):
        done = ev.EvalDone(run_id="r-1", iteration=0, split=split, num_problems=4)
        jobs += core.on_eval_done(run, CFG, done, {"validation": 32, "test": 64}, IDS).jobs
    return run, jobs


def _types(jobs: list[core.Job]) -> list[str]:
    return sorted(j.job_id for j in jobs)


def test_sampling_reopens_unsampled_shards_and_verifies_of_sampled_ones():
    run, jobs = _sampling_run()
    assert run.phase == pb.PHASE_SAMPLING and run.iterations[-1].shards_total == 3
    assert _types(open_jobs(run, jobs)) == [keys.job_id("sample", "r-1", 1, s) for s in range(3)]
    done = ev.SampleDone(run_id="r-1", iteration=1, shard=1, num_samples=32)
    jobs += core.on_sample_done(run, CFG, done).jobs
    assert _types(open_jobs(run, jobs)) == sorted(
        [
            keys.job_id("sample", "r-1", 1, 0),
            keys.job_id("sample", "r-1", 1, 2),
            keys.job_id("verify", "r-1", 1, 1),
        ]
    )
    jobs += core.on_verify_done(run, ev.VerifyDone(run_id="r-1", iteration=1, shard=1)).jobs
    assert keys.job_id("verify", "r-1", 1, 1) not in _types(open_jobs(run, jobs))


def test_earlier_phases_and_iterations_are_never_reopened():
    run, jobs = _sampling_run()
    # prepare (phase passed) and iteration 0's evals (other iteration) are recorded but closed
    assert not any(j.job_type in ("prepare", "eval") for j in open_jobs(run, jobs))
    evaluating, _ = core.new_run("r-2", CFG, "", base_model_key="m")
    prepare = core.Job("prepare", ev.PrepareJob(run_id="r-2"), "prepare.r-2")
    assert outstanding(evaluating, "prepare", prepare.message)


def test_a_finished_run_has_no_open_jobs():
    run, jobs = _sampling_run()
    core.finish(run, pb.RUN_STATUS_CANCELLED, "cancelled by request")
    assert open_jobs(run, jobs) == []


def test_evaluating_reopens_only_splits_without_a_result():
    run, _ = core.new_run("r-3", CFG, "", base_model_key="m")
    jobs = core.on_prepare_done(run, CFG, ev.PrepareDone(run_id="r-3"), {"validation": 32, "test": 64}).jobs
    assert _types(open_jobs(run, jobs)) == [keys.job_id("eval", "r-3", 0, s) for s in ("test", "validation")]
    core.on_eval_done(
        run, CFG, ev.EvalDone(run_id="r-3", iteration=0, split="test"), {"validation": 32, "test": 64}, IDS
    )
    assert _types(open_jobs(run, jobs)) == [keys.job_id("eval", "r-3", 0, "validation")]


def test_the_sft_baseline_train_job_stays_open_until_its_checkpoint_is_known():
    cfg = parse_run_config("task: {arithmetic: {train: 8, validation: 0, test: 4}}\nbaseline: {sft: true}\n")
    run, _ = core.new_run("r-4", cfg, "", base_model_key="m")
    run.sft_enabled = True
    jobs = core.on_prepare_done(run, cfg, ev.PrepareDone(run_id="r-4"), {"test": 64}).jobs
    sft = [j for j in jobs if j.job_type == "train"]
    assert len(sft) == 1 and open_jobs(run, sft) == sft
    run.sft.checkpoint_key = "runs/r-4/sft/checkpoint"
    assert open_jobs(run, sft) == []
