"""Evaluation in shards (pure): a split larger than `evaluation.shard_size` is evaluated by several
eval jobs at once, and their results are merged into the split's one `EvalResult`.

The shards' `EvalDone`s wait in `Iteration.eval_shards` (a redelivered one changes nothing); the
split's last shard merges them: problems and correct answers are summed, pass@1 is their ratio, and
every pass@k / maj@k is the problem-weighted mean of the shards' (each shard's is a mean over its
problems, so the merge is the whole split's number, the same as one job's up to float rounding).
The result rows stay in the shards' files (`results_keys`, in shard order), read as one by the report.
"""

from __future__ import annotations

from collections.abc import Sequence

from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev


def merge(shards: Sequence[pb.EvalResult]) -> pb.EvalResult:
    """One split's result from all its shards (in any order)."""
    ordered = sorted(shards, key=lambda s: s.shard)
    problems = sum(s.num_problems for s in ordered)
    correct = sum(s.num_correct for s in ordered)
    names = set.intersection(*(set(s.metrics) for s in ordered)) if ordered else set()
    metrics = {
        name: sum(s.metrics[name] * s.num_problems for s in ordered) / problems if problems else 0.0
        for name in sorted(names)
    }
    return pb.EvalResult(
        split=ordered[0].split,
        num_problems=problems,
        num_correct=correct,
        pass_at_1=correct / problems if problems else 0.0,
        metrics=metrics,
        results_keys=[s.results_key for s in ordered],
    )


def record(it: pb.Iteration, done: ev.EvalDone) -> bool:
    """Record a finished eval job in `it` (an EM iteration or the SFT baseline); False when it was
    recorded before. A whole split's goes to `evals`; a shard waits in `eval_shards` until its
    split's last shard merges them into `evals`."""
    if any(e.split == done.split for e in it.evals):
        return False
    result = pb.EvalResult(
        split=done.split,
        num_problems=done.num_problems,
        num_correct=done.num_correct,
        pass_at_1=done.pass_at_1,
        results_key=done.results_key,
        metrics=dict(done.metrics),
        shard=done.shard,
    )
    if done.num_shards <= 1:
        result.ClearField("shard")
        it.evals.append(result)
        return True
    if any(s.split == done.split and s.shard == done.shard for s in it.eval_shards):
        return False
    it.eval_shards.append(result)
    mine = [s for s in it.eval_shards if s.split == done.split]
    if len(mine) == done.num_shards:
        it.evals.append(merge(mine))
        others = [s for s in it.eval_shards if s.split != done.split]
        del it.eval_shards[:]
        it.eval_shards.extend(others)
    return True


def jobs_done(it: pb.Iteration) -> int:
    """Eval jobs of `it` finished so far (a merged split counts its shards)."""
    return len(it.eval_shards) + sum(len(e.results_keys) or 1 for e in it.evals)


def result_keys(result: pb.EvalResult) -> list[str]:
    """The files of a split's result rows, in order."""
    return list(result.results_keys) or ([result.results_key] if result.results_key else [])
