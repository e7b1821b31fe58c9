"""Reverification: re-judge a finished run's samples with the checkers the verifiers run today.

`ReverifyRun` adds a `Reverification` to the run (number k = 1, 2, ...) and publishes one verify
job per sample shard of each chosen iteration, writing into `iter-<n>/reverify-<k>/verdicts/`; the
run's own verdicts, kept sets and results are never touched. As the verdicts come back (`on_done`)
the reverification counts them; after the last one the coordinator compares old and new
(`changes`): verdicts flipped each way, the kept set the new verdicts give (the filter re-run with
the run's seed and cutoff, written beside them) and the problems whose kept set would differ. A
fork from such an iteration (`fork.py`) trains on those verdicts.

The verifier's shared cache makes this cheap where a checker did not change: a verdict of the same
checker version for the same problem and completion is read, not re-run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from shared import keys
from shared.runconfig import RunConfig
from shared.store import ArtifactStore

from . import filter_io
from .core import FINISHED, Decision, Job
from .jobs import samples_prefix, verdicts_prefix, verify_job

MAX_FLIPS_LISTED = 200


class CannotReverify(ValueError):
    """The run is in no state to be re-verified; the message says why."""


def pending(run: pb.Run) -> pb.Reverification | None:
    return next((r for r in run.reverifications if not r.done), None)


def start(run: pb.Run, cfg: RunConfig, iteration: int = 0) -> tuple[pb.Reverification, Decision]:
    """Add the run's next reverification and the verify jobs of every shard it re-judges."""
    if run.status not in FINISHED:
        raise CannotReverify(f"run {run.run_id} is still going; re-verify it once it has finished")
    busy = pending(run)
    if busy is not None:
        raise CannotReverify(f"run {run.run_id} is being re-verified already (reverification {busy.number})")
    chosen = [
        it
        for it in run.iterations
        if it.iteration > 0 and it.shards_total > 0 and len(it.shards_verified) == it.shards_total
    ]
    if iteration:
        chosen = [it for it in chosen if it.iteration == iteration]
    if not chosen:
        which = f"iteration {iteration}" if iteration else "any iteration"
        raise CannotReverify(f"run {run.run_id} has no verified samples in {which} to re-verify")
    rv = run.reverifications.add(number=len(run.reverifications) + 1)
    rv.started.FromDatetime(datetime.now(UTC))
    jobs = []
    for it in chosen:
        prefix = keys.verdicts_prefix(run.run_id, it.iteration, rv.number)
        rv.iterations.add(iteration=it.iteration, verdicts_prefix=prefix, shards_total=it.shards_total)
        jobs += [verify_job(run, cfg, it, shard, prefix, rv.number) for shard in range(it.shards_total)]
    return rv, Decision(jobs=jobs)


def open_jobs(run: pb.Run, cfg: RunConfig) -> list[Job]:
    """The pending reverification's jobs whose verdicts have not come back (a restarted coordinator)."""
    rv = pending(run)
    if rv is None:
        return []
    by_number = {it.iteration: it for it in run.iterations}
    return [
        verify_job(run, cfg, by_number[part.iteration], shard, part.verdicts_prefix, rv.number)
        for part in rv.iterations
        for shard in range(part.shards_total)
        if shard not in part.shards_done
    ]


def complete(rv: pb.Reverification) -> bool:
    return all(len(p.shards_done) == p.shards_total for p in rv.iterations)


@dataclass
class Done:
    """What the orchestrator does after a reverification's verdict: compute its changes."""

    number: int


def on_done(run: pb.Run, done: ev.VerifyDone) -> Done | None:
    """Count one re-judged shard; a `Done` once the reverification's last shard is in."""
    rv = next((r for r in run.reverifications if r.number == done.reverification), None)
    if rv is None or rv.done:
        return None
    part = next((p for p in rv.iterations if p.iteration == done.iteration), None)
    if part is None or done.shard in part.shards_done:
        return None
    part.shards_done.append(done.shard)
    part.samples += done.num_samples
    part.correct_samples += done.num_correct
    return Done(rv.number) if complete(rv) else None


# --- the changes (I/O, in a worker thread) --------------------------------------------------------


def _rows(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def _flips(store: ArtifactStore, before: str, after: str, shards: int) -> dict[str, Any]:
    flips: list[dict[str, Any]] = []
    up = down = 0
    old_versions: set[str] = set()
    new_versions: set[str] = set()
    for shard in range(shards):
        old = {r["sample_id"]: r for r in _rows(store.get_bytes(keys.shard_key(before, shard)))}
        for new in _rows(store.get_bytes(keys.shard_key(after, shard))):
            was = old.get(new["sample_id"])
            old_versions.add(str(was.get("checker_version", ""))) if was else None
            new_versions.add(str(new.get("checker_version", "")))
            if was is None or bool(was["correct"]) == bool(new["correct"]):
                continue
            up, down = (up + 1, down) if new["correct"] else (up, down + 1)
            if len(flips) < MAX_FLIPS_LISTED:
                flips.append({
                    "sample_id": new["sample_id"], "problem_id": new.get("problem_id", ""),
                    "before": {k: was.get(k) for k in ("correct", "rule", "checker_version")},
                    "after": {k: new.get(k) for k in ("correct", "rule", "checker_version")},
                })  # fmt: skip
    return {
        "flipped_to_correct": up,
        "flipped_to_wrong": down,
        "flips": flips,
        "checkers_before": sorted(old_versions - {""}),
        "checkers_after": sorted(new_versions - {""}),
    }


def _kept_by_problem(store: ArtifactStore, key: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    if key and store.exists(key):
        for row in _rows(store.get_bytes(key)):
            out[row["problem_id"]].add(row["sample_id"])
    return out


def _iteration_changes(
    store: ArtifactStore, run: pb.Run, cfg: RunConfig, it: pb.Iteration, part: pb.ReverifiedIteration,
    train_ids: Sequence[str],
) -> dict[str, Any]:  # fmt: skip
    flips = _flips(store, verdicts_prefix(run, it), part.verdicts_prefix, it.shards_total)
    kept_key = f"{part.verdicts_prefix.rsplit('/', 1)[0]}/kept.jsonl"
    source = filter_io.ShardSource(samples_prefix(run, it), part.verdicts_prefix)
    out = filter_io.filter_iteration(
        store, run.run_id, it.iteration, shards=it.shards_total, rounds_done=it.sampling_rounds,
        cfg=cfg, problem_ids=train_ids, source=source, kept_key=kept_key, plan_rounds=False,
    )  # fmt: skip
    before, after = _kept_by_problem(store, it.kept_key), _kept_by_problem(store, kept_key)
    differ = sorted(p for p in set(before) | set(after) if before.get(p, set()) != after.get(p, set()))
    assert out.stats is not None
    return {
        "iteration": it.iteration,
        "samples": part.samples,
        "correct_before": it.correct_samples,
        "correct_after": part.correct_samples,
        **flips,
        "kept_before": it.kept,
        "kept_after": out.stats.kept,
        "kept_key": kept_key,
        "kept_sets_differ": len(differ),
        "problems_kept_differ": differ[:MAX_FLIPS_LISTED],
    }


def changes(
    store: ArtifactStore, run: pb.Run, cfg: RunConfig, number: int, train_ids: Sequence[str]
) -> dict[str, Any]:
    """Compare reverification `number` with the run's verdicts; written to its changes key."""
    rv = next(r for r in run.reverifications if r.number == number)
    by_number = {it.iteration: it for it in run.iterations}
    parts = [_iteration_changes(store, run, cfg, by_number[p.iteration], p, train_ids) for p in rv.iterations]
    doc = {"run_id": run.run_id, "reverification": number, "iterations": parts, "summary": summary(parts)}
    store.put_bytes(keys.reverify_changes_key(run.run_id, number), json.dumps(doc, indent=1).encode())
    return doc


def summary(parts: Sequence[dict[str, Any]]) -> str:
    return "; ".join(
        f"iteration {p['iteration']}: {p['flipped_to_correct'] + p['flipped_to_wrong']} verdicts flipped "
        f"({p['flipped_to_correct']} to correct, {p['flipped_to_wrong']} to wrong), "
        f"{p['kept_sets_differ']} kept sets differ"
        for p in parts
    )


def apply_changes(run: pb.Run, number: int, doc: dict[str, Any]) -> None:
    """Record the computed changes on the run's reverification and mark it done."""
    rv = next(r for r in run.reverifications if r.number == number)
    by_iteration = {p["iteration"]: p for p in doc["iterations"]}
    for part in rv.iterations:
        got = by_iteration[part.iteration]
        part.flipped_to_correct, part.flipped_to_wrong = got["flipped_to_correct"], got["flipped_to_wrong"]
        part.kept_sets_differ, part.kept, part.kept_key = (
            got["kept_sets_differ"],
            got["kept_after"],
            got["kept_key"],
        )
        part.checkers_before[:] = got["checkers_before"]
        part.checkers_after[:] = got["checkers_after"]
    rv.changes_key = keys.reverify_changes_key(run.run_id, number)
    rv.summary = doc["summary"]
    rv.done = True
    rv.finished.FromDatetime(datetime.now(UTC))
