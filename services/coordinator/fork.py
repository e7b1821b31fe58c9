"""Forking a finished run from iteration N (`StartRun` with `from_run`), usually with the verdicts
of a reverification: the fork keeps the source's iterations before N as they are (their records
point at the source's artifacts), re-filters iteration N's samples with the chosen verdicts, and
trains from the base again; later iterations sample from the fork's own checkpoints.

What a fork may change in the config is limited to what the copied iterations do not depend on
(`MAY_CHANGE`): a different task, model, sampling or filter would make them another run's.
The fork's lineage names both: iterations before N with the source's checkers, N with the new ones.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.runconfig import RunConfig
from shared.store import ArtifactStore

from . import core
from .jobs import samples_prefix, verdicts_prefix

# Settings a fork may set differently from its source (top-level section -> fields; None: all).
MAY_CHANGE: dict[str, set[str] | None] = {
    "name": None,
    "training": None,
    "tracking": None,
    "em": {"iterations", "early_stop_patience"},
}


class CannotFork(ValueError):
    """The fork cannot be made as asked; the message says what to change."""


def check_config(source: RunConfig, fork: RunConfig) -> None:
    """CannotFork naming the first setting that differs and that the copied iterations depend on."""
    before, after = source.model_dump(mode="json"), fork.model_dump(mode="json")
    for section in sorted(set(before) | set(after)):
        allowed = MAY_CHANGE.get(section, set())
        if allowed is None or before.get(section) == after.get(section):
            continue
        old, new = before.get(section) or {}, after.get(section) or {}
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in allowed)
        if changed or not isinstance(old, dict):
            what = f"{section}.{changed[0]}" if changed else section
            raise CannotFork(
                f"{what} differs from the source run's; a fork may only change name, training, tracking, "
                "em.iterations and em.early_stop_patience (start a new run for anything else)"
            )


def unnamed(config_yaml: str) -> str:
    import yaml

    doc = yaml.safe_load(config_yaml) or {}
    doc.pop("name", None)
    return yaml.safe_dump(doc, sort_keys=False)


def copy_inputs(store: ArtifactStore, source_id: str, fork_id: str) -> int:
    """Copy the source's datasets (and SFT train set) under the fork's prefix; objects copied."""
    copied = 0
    for prefix in (f"{keys.run_prefix(source_id)}/data/", f"{keys.sft_prefix(source_id)}/train.jsonl"):
        for key in store.list(prefix):
            store.put_bytes(
                keys.run_prefix(fork_id) + key[len(keys.run_prefix(source_id)) :], store.get_bytes(key)
            )
            copied += 1
    return copied


def _chosen_verdicts(source: pb.Run, iteration: int, reverification: int) -> tuple[str, int, Any]:
    """(verdicts prefix, reverification number, its part) the fork's iteration filters with."""
    done = [r for r in source.reverifications if r.done and not r.summary.startswith("failed")]
    if reverification:
        rv = next((r for r in source.reverifications if r.number == reverification), None)
        if rv is None or rv not in done:
            raise CannotFork(f"run {source.run_id} has no finished reverification {reverification}")
        done = [rv]
    for rv in reversed(done):
        part = next((p for p in rv.iterations if p.iteration == iteration), None)
        if part is not None:
            return part.verdicts_prefix, rv.number, part
    if reverification:
        raise CannotFork(
            f"reverification {reverification} of run {source.run_id} did not re-judge iteration {iteration}"
        )
    return "", 0, None


def fork_run(
    source: pb.Run, fork_id: str, cfg: RunConfig, config_yaml: str, iteration: int, reverification: int = 0
) -> pb.Run:
    """The fork's run record, in FILTERING at `iteration` (the caller asks for the filter)."""
    if source.status != pb.RUN_STATUS_SUCCEEDED:
        raise CannotFork(f"run {source.run_id} has not succeeded; only a finished run can be forked")
    sampled = {it.iteration: it for it in source.iterations if it.iteration > 0 and it.shards_total}
    if iteration not in sampled:
        raise CannotFork(
            f"run {source.run_id} sampled iterations {sorted(sampled)}; pick one of them with --iteration"
        )
    prefix, number, part = _chosen_verdicts(source, iteration, reverification)
    run = pb.Run(
        run_id=fork_id, name=cfg.name or fork_id, status=pb.RUN_STATUS_RUNNING,
        iterations_total=max(cfg.em.iterations, iteration), config_yaml=config_yaml,
        base_model_key=source.base_model_key, task=source.task, model_source=source.model_source,
        sft_enabled=source.sft_enabled, forked_from=source.run_id, forked_at=iteration,
        forked_reverification=number,
    )  # fmt: skip
    run.created.FromDatetime(datetime.now(UTC))
    run.sft.CopyFrom(source.sft)
    for it in source.iterations:
        if it.iteration >= iteration:
            break
        copy = run.iterations.add()
        copy.CopyFrom(it)
        copy.samples_prefix, copy.verdicts_prefix = samples_prefix(source, it), verdicts_prefix(source, it)
    src = sampled[iteration]
    it = run.iterations.add(
        iteration=iteration, policy_key=src.policy_key, shards_total=src.shards_total,
        samples=src.samples, tokens_generated=src.tokens_generated, sampling_rounds=src.sampling_rounds,
        samples_prefix=samples_prefix(source, src), verdicts_prefix=prefix or verdicts_prefix(source, src),
        correct_samples=part.correct_samples if part is not None else src.correct_samples,
    )  # fmt: skip
    it.shards_sampled.extend(range(src.shards_total))
    it.shards_verified.extend(range(src.shards_total))
    it.started.FromDatetime(datetime.now(UTC))
    run.iteration = iteration
    core.set_phase(run, pb.PHASE_FILTERING, total=1, unit="kept sets")
    return run
