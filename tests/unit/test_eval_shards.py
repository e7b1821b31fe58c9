"""Evaluation in shards: a split larger than `evaluation.shard_size` becomes several eval jobs, the
coordinator merges their results into the split's one record (the numbers one job would give), a
redelivered shard changes nothing, and a restarted coordinator re-publishes only missing shards."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from services.coordinator import core, eval_shards
from services.coordinator.events import _read_rows
from services.coordinator.jobs import eval_shard_bounds
from services.coordinator.reconcile import outstanding
from services.evaluator.core import split_summary
from services.evaluator.events import shard_of
from shared import keys
from shared.bus import PermanentError
from shared.runconfig import parse_run_config
from shared.store import LocalStore
from shared.tasks import dumps_jsonl

CFG = parse_run_config(
    "task: {arithmetic: {train: 8, validation: 4, test: 600}}\nem: {iterations: 1}\n"
    "evaluation: {samples: 4, shard_size: 256}\n"
)
SPLITS = {"validation": 4, "test": 600}


@pytest.mark.parametrize(("problems", "size"), [(600, 256), (512, 256), (1, 256), (5000, 256), (7, 3)])
def test_shard_bounds_cover_the_split_with_sizes_within_one(problems: int, size: int) -> None:
    bounds = eval_shard_bounds(problems, size)
    assert len(bounds) == -(-problems // size)
    assert [o for o, _ in bounds] == [sum(c for _, c in bounds[:i]) for i in range(len(bounds))]
    assert sum(c for _, c in bounds) == problems
    counts = {c for _, c in bounds}
    assert max(counts) <= size and max(counts) - min(counts) <= 1


def _evaluating() -> tuple[pb.Run, list[core.Job]]:
    run, _ = core.new_run("r-ev", CFG, "", base_model_key="models/base")
    return run, core.on_prepare_done(run, CFG, ev.PrepareDone(run_id="r-ev"), SPLITS).jobs


def test_a_large_split_is_evaluated_in_shard_jobs_and_a_small_one_whole() -> None:
    run, jobs = _evaluating()
    msgs = [j.message for j in jobs]
    assert [(m.split, m.shard, m.num_shards, m.problem_offset, m.problem_count) for m in msgs] == [
        ("validation", 0, 1, 0, 0),
        ("test", 0, 3, 0, 200),
        ("test", 1, 3, 200, 200),
        ("test", 2, 3, 400, 200),
    ]
    # a split in one job keeps its id and file; shards get their own, and every shard samples
    assert msgs[0].output_key == keys.eval_key("r-ev", 0, "validation")
    assert msgs[0].job_id == keys.job_id("eval", "r-ev", 0, "validation")
    assert len({m.job_id for m in msgs}) == 4
    assert [m.output_key.rsplit("/", 1)[-1] for m in msgs[1:]] == [
        f"test.shard-0000{i}.jsonl" for i in range(3)
    ]
    assert all(m.sample_params.n == 4 for m in msgs[1:])
    assert run.progress.total == 4


def test_the_sampled_evaluation_takes_its_own_top_k_not_the_e_steps() -> None:
    """pass@k and maj@k sample at T 1.0, top-p 0.95 and no top-k (the paper), while the E-step keeps
    its top-k 40; `evaluation.top_k` sets the evaluation's."""
    _, jobs = _evaluating()
    sampled = jobs[1].message.sample_params
    assert (sampled.top_k, sampled.temperature, round(sampled.top_p, 6)) == (0, 1.0, 0.95)
    assert not sampled.greedy
    assert CFG.sampling.top_k == 40
    cfg = parse_run_config(
        "task: {arithmetic: {train: 8, validation: 4, test: 6}}\nevaluation: {samples: 4, top_k: 20}\n"
    )
    run, _ = core.new_run("r-k", cfg, "", base_model_key="models/base")
    msgs = [j.message for j in core.on_prepare_done(run, cfg, ev.PrepareDone(run_id="r-k"), {"test": 6}).jobs]
    assert [m.sample_params.top_k for m in msgs if m.split == "test"] == [20]


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        samples = [
            {"extracted": str(rng.randint(0, 3)), "correct": rng.random() < 0.4, "num_tokens": 5}
            for _ in range(4)
        ]
        rows.append(
            {"problem_id": f"q{i:04d}", "correct": rng.random() < 0.3, "num_tokens": 7, "samples": samples}
        )
    return rows


def _done(split: str, shard: int, shards: int, rows: list[dict], key: str) -> ev.EvalDone:
    s = split_summary(rows, "arithmetic")
    return ev.EvalDone(
        run_id="r-ev", iteration=0, split=split, shard=shard, num_shards=shards, results_key=key,
        num_problems=s["num_problems"], num_correct=s["num_correct"], pass_at_1=s["pass_at_1"],
        metrics=s["metrics"],
    )  # fmt: skip


def test_merged_shards_give_the_numbers_of_one_job_and_redeliveries_change_nothing() -> None:
    run, jobs = _evaluating()
    rows = _rows(600, seed=3)
    whole = split_summary(rows, "arithmetic")
    test_jobs = [j.message for j in jobs if j.message.split == "test"]
    dones = [
        _done("test", m.shard, 3, rows[m.problem_offset : m.problem_offset + m.problem_count], m.output_key)
        for m in test_jobs
    ]
    it = run.iterations[-1]
    for d in (dones[2], dones[0], dones[2]):  # out of order, one redelivered
        core.on_eval_done(run, CFG, d, SPLITS, ["a"])
    assert [e.split for e in it.evals] == [] and len(it.eval_shards) == 2 and run.progress.done == 2
    assert not outstanding(run, "eval", test_jobs[0]) and outstanding(run, "eval", test_jobs[1])
    core.on_eval_done(run, CFG, dones[1], SPLITS, ["a"])
    (merged,) = it.evals
    assert list(it.eval_shards) == [] and run.progress.done == 3
    assert merged.num_problems == 600 and merged.num_correct == whole["num_correct"]
    assert merged.pass_at_1 == pytest.approx(whole["pass_at_1"])
    assert set(merged.metrics) == set(whole["metrics"]) and {"pass@4", "maj@4"} <= set(merged.metrics)
    for name, value in whole["metrics"].items():
        assert merged.metrics[name] == pytest.approx(value, abs=1e-12), name
    assert list(merged.results_keys) == [m.output_key for m in test_jobs] and not merged.results_key
    assert core.on_eval_done(run, CFG, dones[1], SPLITS, ["a"]).jobs == []  # after the merge, too
    assert len(it.evals) == 1 and not any(outstanding(run, "eval", m) for m in test_jobs)
    assert run.phase == pb.PHASE_EVALUATING  # validation is still out
    d = core.on_eval_done(
        run, CFG, ev.EvalDone(iteration=0, split="validation", num_problems=4), SPLITS, ["a"]
    )
    assert run.phase == pb.PHASE_SAMPLING and d.jobs and d.jobs[0].job_type == "sample"


def test_the_report_reads_a_split_from_its_shard_files_in_order(tmp_path) -> None:
    store = LocalStore(tmp_path)
    parts = ["e/test.shard-00000.jsonl", "e/test.shard-00001.jsonl"]
    store.put_bytes(parts[0], dumps_jsonl([{"problem_id": "a"}, {"problem_id": "b"}]))
    assert _read_rows(store, parts) is None  # a shard missing: no half a split
    store.put_bytes(parts[1], dumps_jsonl([{"problem_id": "c"}]))
    assert [r["problem_id"] for r in _read_rows(store, parts) or []] == ["a", "b", "c"]
    assert eval_shards.result_keys(pb.EvalResult(results_key="e/x.jsonl")) == ["e/x.jsonl"]


def test_an_evaluator_takes_its_slice_of_the_split_sorted_by_id() -> None:
    dataset = {f"p{i:02d}": {"id": f"p{i:02d}"} for i in reversed(range(10))}
    whole = SimpleNamespace(num_shards=1, shard=0, problem_offset=0, problem_count=0, split="test")
    assert [p["id"] for p in shard_of(dataset, whole)] == [f"p{i:02d}" for i in range(10)]
    part = SimpleNamespace(num_shards=3, shard=1, problem_offset=4, problem_count=3, split="test")
    assert [p["id"] for p in shard_of(dataset, part)] == ["p04", "p05", "p06"]
    beyond = SimpleNamespace(num_shards=3, shard=2, problem_offset=8, problem_count=4, split="test")
    with pytest.raises(PermanentError, match="eval shard 2 of test"):
        shard_of(dataset, beyond)
