"""The coordinator's decisions over plain data: filtering, cutoff, state transitions, idempotency."""

from collections import Counter

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from services.coordinator import core, filtering
from services.coordinator.report import build_report, render_markdown
from services.coordinator.rewards import histogram
from shared import keys
from shared.runconfig import parse_run_config
from shared.seeds import derive_seed


def _samples(problem_ids, k):
    return [
        {
            "sample_id": f"i1/{pid}/{i}",
            "problem_id": pid,
            "prompt": f"P {pid}",
            "completion": f"c{i} The answer is {i}.",
        }
        for pid in problem_ids
        for i in range(k)
    ]


def test_cutoff_holds_and_only_correct_samples_are_kept():
    samples = _samples(["a", "b", "c"], 8)
    correct = {s["sample_id"] for s in samples if s["problem_id"] == "a" or s["sample_id"].endswith("/3")}
    verdicts = [{"sample_id": s["sample_id"], "correct": s["sample_id"] in correct} for s in samples]
    kept, stats = filtering.select_kept(samples, verdicts, problem_ids=["a", "b", "c"], cutoff=4, seed=1)
    per_problem = Counter(k["problem_id"] for k in kept)
    assert per_problem == {"a": 4, "b": 1, "c": 1}
    assert all(k["sample_id"] in correct for k in kept)
    assert (stats.samples, stats.correct, stats.problems_solved, stats.kept) == (24, 10, 3, 6)
    assert all(k["weight"] == 1.0 and k["prompt"] == f"P {k['problem_id']}" for k in kept)


def test_selection_is_reproducible_and_independent_of_arrival_order():
    samples = _samples(["a"], 8)
    verdicts = [{"sample_id": s["sample_id"], "correct": True} for s in samples]
    first, _ = filtering.select_kept(samples, verdicts, problem_ids=["a"], cutoff=3, seed=7)
    again, _ = filtering.select_kept(samples[::-1], verdicts[::-1], problem_ids=["a"], cutoff=3, seed=7)
    other, _ = filtering.select_kept(samples, verdicts, problem_ids=["a"], cutoff=3, seed=8)
    assert first == again
    assert {k["sample_id"] for k in first} != {k["sample_id"] for k in other}


def test_duplicate_completions_are_dropped_before_the_cutoff():
    samples = [
        {"sample_id": f"s{i}", "problem_id": "a", "prompt": "p", "completion": "The answer is 5." + " " * i}
        for i in range(5)
    ] + [{"sample_id": "s9", "problem_id": "a", "prompt": "p", "completion": "5. The answer is 5."}]
    verdicts = [{"sample_id": s["sample_id"], "correct": True} for s in samples]
    kept, stats = filtering.select_kept(samples, verdicts, problem_ids=["a"], cutoff=4, seed=0)
    assert len(kept) == 2 and stats.duplicates_dropped == 4


CFG_YAML = (
    "task: {arithmetic: {train: 20, validation: 4, test: 6}}\nem: {iterations: 1, shard_size: 8, cutoff: 2}\n"
)


def _started():
    cfg = parse_run_config(CFG_YAML)
    run, decision = core.new_run("demo-abc123", cfg, CFG_YAML, base_model_key="models/base")
    return cfg, run, decision


def test_a_whole_iteration_of_decisions():
    cfg, run, d = _started()
    assert [j.job_type for j in d.jobs] == ["prepare"]
    splits = {"validation": 32, "test": 64}
    train_ids = [f"train-{i:05d}" for i in range(20)]
    d = core.on_prepare_done(run, cfg, ev.PrepareDone(run_id=run.run_id), splits)
    assert [j.message.checkpoint_key for j in d.jobs] == ["models/base", "models/base"]
    for split in splits:
        d = core.on_eval_done(
            run,
            cfg,
            ev.EvalDone(run_id=run.run_id, iteration=0, split=split, pass_at_1=0.0),
            splits,
            train_ids,
        )
    # iteration 1 samples from the base, in 3 shards of <= 8 problems with the iteration's seed (the
    # sampler derives each sample's own from it, the problem and the index: shard-independent)
    assert run.phase == pb.PHASE_SAMPLING and run.iteration == 1
    assert [len(j.message.problem_ids) for j in d.jobs] == [8, 8, 4]
    assert {j.message.params.seed for j in d.jobs} == {derive_seed(cfg.sampling.seed, 1)}
    assert {j.message.policy_key for j in d.jobs} == {"models/base"}
    for shard in range(3):
        done = ev.SampleDone(
            iteration=1,
            shard=shard,
            samples_key=keys.samples_key(run.run_id, 1, shard),
            num_samples=64,
            num_tokens=100,
        )
        d = core.on_sample_done(run, cfg, done)
        assert [j.job_type for j in d.jobs] == ["verify"]
        assert d.jobs[0].message.reward == "binary"  # the run's em.reward, for every verdict row
        assert core.on_sample_done(run, cfg, done).jobs == []  # a redelivered event changes nothing
    assert run.iterations[-1].samples == 192 and run.phase == pb.PHASE_VERIFYING
    for shard in range(3):
        d = core.on_verify_done(run, ev.VerifyDone(iteration=1, shard=shard, num_samples=64, num_correct=2))
    assert d.needs_filter and run.phase == pb.PHASE_FILTERING
    stats = core.FilterStats(
        samples=192,
        correct=6,
        problems_total=20,
        problems_solved=3,
        kept=5,
        duplicates_dropped=0,
        sample_rewards=histogram([1.0] * 6 + [0.0] * 186),
        kept_rewards=histogram([1.0] * 5),
        kept_weight=5.0,
    )
    d = core.on_filtered(run, cfg, 1, stats, splits)
    train = d.jobs[0].message
    assert train.base_key == "models/base"  # the M-step always starts from the base
    assert train.kept_key == keys.kept_key(run.run_id, 1)
    d = core.on_train_done(run, cfg, ev.TrainDone(iteration=1, checkpoint_key="ck1", steps=2), splits)
    assert {j.message.checkpoint_key for j in d.jobs} == {"ck1"}
    core.on_eval_done(
        run, cfg, ev.EvalDone(iteration=1, split="validation", pass_at_1=0.5), splits, train_ids
    )
    d = core.on_eval_done(run, cfg, ev.EvalDone(iteration=1, split="test", pass_at_1=0.4), splits, train_ids)
    assert d.finished and run.status == pb.RUN_STATUS_SUCCEEDED and run.best_iteration == 1
    report = build_report(run)
    assert report["iterations"][1]["test_pass_at_1"] == 0.4
    assert report["iterations"][1]["train_pass_rate"] == pytest.approx(6 / 192)
    assert set(report["iterations"][1]["phase_seconds"]) >= {
        "sampling",
        "verifying",
        "training",
        "evaluating",
    }
    md = render_markdown(report)
    assert "| 1 | 3.1 % | 3/20 | 5 | 50.0 % | 40.0 % |" in md
    # a binary run's reward distribution: its two ends
    assert report["iterations"][0]["rewards"] is None
    assert report["iterations"][1]["rewards"]["samples"] == stats.sample_rewards
    assert (
        "| 1 | all | 186 | 0 | 0 | 0 | 0 | 6 | – |" in md and "| 1 | kept | 0 | 0 | 0 | 0 | 0 | 5 | 5 |" in md
    )


def test_an_empty_kept_set_skips_training_and_carries_the_policy():
    cfg, run, _ = _started()
    core.on_prepare_done(run, cfg, ev.PrepareDone(), {"test": 64})
    core.on_eval_done(run, cfg, ev.EvalDone(iteration=0, split="test"), {"test": 64}, ["t1"])
    core.on_sample_done(run, cfg, ev.SampleDone(iteration=1, shard=0, num_samples=8))
    core.on_verify_done(run, ev.VerifyDone(iteration=1, shard=0, num_samples=8))
    stats = core.FilterStats(
        samples=8, correct=0, problems_total=1, problems_solved=0, kept=0, duplicates_dropped=0
    )
    d = core.on_filtered(run, cfg, 1, stats, {"test": 64})
    assert run.iterations[-1].train.skipped and [j.job_type for j in d.jobs] == ["eval"]
    assert d.jobs[0].message.checkpoint_key == "models/base"


def test_events_of_a_finished_or_other_iteration_are_ignored():
    cfg, run, _ = _started()
    core.on_job_failed(run, ev.JobFailed(job_id="x", job_type="prepare", reason="boom"))
    assert run.status == pb.RUN_STATUS_FAILED and "boom" in run.error
    assert core.on_prepare_done(run, cfg, ev.PrepareDone(), {"test": 64}).jobs == []
    core.finish(run, pb.RUN_STATUS_CANCELLED)
    assert run.status == pb.RUN_STATUS_FAILED  # the first ending stands


def test_best_iteration_uses_validation_never_test():
    run = pb.Run()
    for i, (val, test) in enumerate([(0.1, 0.9), (0.6, 0.2), (0.6, 0.7), (0.3, 0.99)]):
        it = run.iterations.add(iteration=i)
        it.evals.add(split="validation", pass_at_1=val)
        it.evals.add(split="test", pass_at_1=test)
    assert core.choose_best_iteration(run) == 1


def test_job_ids_are_deterministic():
    assert keys.job_id("sample", "r-1", 2, 3) == keys.job_id("sample", "r-1", 2, 3) == "sample.r-1.i2.3"
    with pytest.raises(ValueError):
        keys.samples_key("../etc", 1, 0)


def test_the_sft_baseline_runs_beside_the_em_loop_and_the_run_waits_for_it():
    text = CFG_YAML + "baseline: {sft: true}\n"
    cfg = parse_run_config(text)
    run, _ = core.new_run("demo-abc123", cfg, text, base_model_key="models/base")
    splits, train_ids = {"test": 64}, ["t1"]
    d = core.on_prepare_done(run, cfg, ev.PrepareDone(), splits)
    sft_job = next(j.message for j in d.jobs if j.job_type == "train")
    assert sft_job.variant == "sft" and sft_job.base_key == "models/base"
    assert sft_job.kept_key == keys.sft_prefix(run.run_id) + "/train.jsonl"
    d = core.on_sft_train_done(
        run, cfg, ev.TrainDone(variant="sft", checkpoint_key="sft-ck", examples=20), splits
    )
    assert [(j.message.variant, j.message.checkpoint_key) for j in d.jobs] == [("sft", "sft-ck")]
    assert (
        d.jobs[0].job_id != core._eval_jobs(run, cfg, 0, "x", splits)[0].job_id
    )  # never deduplicated against EM evals
    # The EM loop finishes first: the run waits for the baseline's evaluation.
    core.on_eval_done(run, cfg, ev.EvalDone(iteration=0, split="test"), splits, train_ids)
    core.on_sample_done(run, cfg, ev.SampleDone(iteration=1, shard=0, num_samples=8))
    core.on_verify_done(run, ev.VerifyDone(iteration=1, shard=0, num_samples=8))
    stats = core.FilterStats(
        samples=8, correct=0, problems_total=1, problems_solved=0, kept=0, duplicates_dropped=0
    )
    core.on_filtered(run, cfg, 1, stats, splits)
    d = core.on_eval_done(run, cfg, ev.EvalDone(iteration=1, split="test", pass_at_1=0.1), splits, train_ids)
    assert (
        not d.finished and run.status == pb.RUN_STATUS_RUNNING and run.progress.unit == "baseline evaluations"
    )
    d = core.on_sft_eval_done(run, ev.EvalDone(variant="sft", split="test", pass_at_1=0.3), splits)
    assert d.finished and run.status == pb.RUN_STATUS_SUCCEEDED
    report = build_report(run)
    assert report["sft_baseline"]["test_pass_at_1"] == 0.3
    assert "| SFT on reference solutions |" in render_markdown(report)
