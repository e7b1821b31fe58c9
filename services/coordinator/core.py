"""The coordinator's decisions, as pure functions over the `Run` message.

Each `on_*` function takes the run as it is stored and one event, mutates the run in place and
returns the jobs to publish next. Nothing here does I/O: the event adapter (`events.py`) loads the
run from the key-value store, calls these, publishes the jobs with their deterministic ids and
writes the run back. Re-applying an event that was already applied changes nothing and returns
no jobs, which is what makes redelivery harmless.

Not handled here: reading samples and verdicts for the filter (the adapter does the I/O and calls
`filtering.select_kept`), and the report's rendering (see `report.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from shared import keys
from shared.runconfig import RunConfig
from shared.tracking import settings_of

from . import adaptive, eval_shards
from .filtering import FilterStats, choose_best_iteration, plan_shards, shard_count
from .jobs import (
    Job,
    _eval_jobs,
    _verify_job,
    eval_job_count,
    prompt_format,
    sample_job,
    train_params_for,
    train_validation,
)

FINISHED = (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED, pb.RUN_STATUS_CANCELLED)
PHASE_NAMES = {
    pb.PHASE_PREPARING: "preparing",
    pb.PHASE_SAMPLING: "sampling",
    pb.PHASE_VERIFYING: "verifying",
    pb.PHASE_FILTERING: "filtering",
    pb.PHASE_TRAINING: "training",
    pb.PHASE_EVALUATING: "evaluating",
}


@dataclass
class Decision:
    jobs: list[Job] = field(default_factory=list)
    # The adapter must read the verdicts, select the kept set and call `on_filtered`.
    needs_filter: bool = False
    # The run just finished successfully: the adapter writes the report.
    finished: bool = False
    # Checkpoints the run's next E-step samples from: the adapter hints them to the samplers
    # (`shared.hints`), which download them while the run evaluates.
    prefetch: list[str] = field(default_factory=list)
    # Iterations (of this run) whose new checkpoint the adapter hashes into `checkpoint_sha256`,
    # the lineage's record of what the M-step wrote.
    digest: list[pb.Iteration] = field(default_factory=list)
    # A reverification's last verdicts are in: the adapter compares them with the run's (`reverify`).
    reverify_changes: int = 0


# --- state transitions --------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _flush_phase(run: pb.Run) -> None:
    """Add the time spent in the current phase to the current iteration's phase_seconds."""
    if run.phase in PHASE_NAMES and run.HasField("phase_started") and run.iterations:
        spent = (_now() - run.phase_started.ToDatetime(tzinfo=UTC)).total_seconds()
        name = PHASE_NAMES[run.phase]
        secs = run.iterations[-1].phase_seconds
        secs[name] = secs[name] + spent
    run.ClearField("phase_started")


def _set_phase(run: pb.Run, phase: int, *, done: int = 0, total: int = 0, unit: str = "") -> None:
    _flush_phase(run)
    now = _now()
    run.phase = phase  # type: ignore[assignment]
    run.phase_started.FromDatetime(now)
    run.progress.CopyFrom(pb.PhaseProgress(phase=phase, done=done, total=total, unit=unit))  # type: ignore[arg-type]
    run.updated.FromDatetime(now)


# For adapters that build a run in a given phase (a fork starts in FILTERING).
set_phase = _set_phase


def new_run(run_id: str, cfg: RunConfig, config_yaml: str, *, base_model_key: str) -> tuple[pb.Run, Decision]:
    run = pb.Run(
        run_id=run_id,
        name=cfg.name or run_id,
        status=pb.RUN_STATUS_RUNNING,
        iterations_total=cfg.em.iterations,
        config_yaml=config_yaml,
        base_model_key=base_model_key,
        task=cfg.task.name,
        model_source=cfg.model.base,
        sft_enabled=cfg.baseline.sft,
    )
    run.created.FromDatetime(_now())
    _set_phase(run, pb.PHASE_PREPARING, total=1, unit="models")
    job = ev.PrepareJob(
        run_id=run_id,
        job_id=keys.job_id("prepare", run_id),
        model_source=cfg.model.base,
        model_key=base_model_key,
    )
    return run, Decision(jobs=[Job("prepare", job, job.job_id)])


def on_prepare_done(run: pb.Run, cfg: RunConfig, done: ev.PrepareDone, splits: Mapping[str, int]) -> Decision:
    if run.status in FINISHED or run.phase != pb.PHASE_PREPARING:
        return Decision()
    it = run.iterations.add(iteration=0, checkpoint_key=run.base_model_key, policy_key=run.base_model_key)
    it.started.FromDatetime(_now())
    run.iteration = 0
    jobs = _eval_jobs(run, cfg, 0, run.base_model_key, splits)
    _set_phase(run, pb.PHASE_EVALUATING, total=len(jobs), unit="evaluations")
    if run.sft_enabled:
        # The SFT baseline runs beside the EM loop: the same trainer settings on reference solutions.
        run.sft.CopyFrom(pb.Iteration(iteration=0, policy_key=run.base_model_key))
        run.sft.started.FromDatetime(_now())
        job = ev.TrainJob(
            run_id=run.run_id,
            job_id=keys.job_id("train", run.run_id, None, "sft"),
            iteration=0,
            base_key=run.base_model_key,
            kept_key=f"{keys.sft_prefix(run.run_id)}/train.jsonl",
            params=train_params_for(cfg, 0),
            output_key=f"{keys.sft_prefix(run.run_id)}/checkpoint",
            variant="sft",
            prompt_format=prompt_format(cfg),
            validation=train_validation(run, cfg, splits),
            tracking=settings_of(cfg.tracking),
        )
        jobs.append(Job("train", job, job.job_id))
    return Decision(jobs=jobs, prefetch=[run.base_model_key] if run.iterations_total > 0 else [])


def queued_shards(shards: int, sampled: int, window: int) -> int:
    """How many of an iteration's first-round sample shards are published once `sampled` are done.

    `window` > 0 is fair share: a run keeps at most that many sample jobs out (queued or running);
    each finished shard lets the next one out, so a run started later queues behind `window` jobs
    of each earlier run instead of behind all their shards. 0: every shard at once.
    """
    return shards if window <= 0 else min(shards, sampled + window)


def _first_round(it: pb.Iteration, cfg: RunConfig, train_ids: Sequence[str]) -> list[list[str]]:
    """The shards of the E-step's first round, as planned when the iteration started (its count is
    recorded, so a coordinator restarted with other `sampler_slots` plans the same shards); [] once
    a later adaptive round started (the first is then sampled whole)."""
    return plan_shards(train_ids, cfg.em.shard_size, it.shards_total) if it.sampling_rounds <= 1 else []


def _start_iteration(
    run: pb.Run, cfg: RunConfig, train_ids: Sequence[str], window: int, slots: int
) -> Decision:
    _flush_phase(run)  # the evaluation time belongs to the previous iteration
    previous = run.iterations[-1]
    size = cfg.em.shard_size
    shards = plan_shards(train_ids, size, shard_count(len(train_ids), size, slots))
    n = previous.iteration + 1
    it = run.iterations.add(
        iteration=n,
        policy_key=previous.checkpoint_key,
        shards_total=len(shards),
        samples_prefix=keys.samples_prefix(run.run_id, n),
        verdicts_prefix=keys.verdicts_prefix(run.run_id, n),
    )
    it.started.FromDatetime(_now())
    it.sampling_rounds = 1 if cfg.sampling.adaptive.enabled else 0
    run.iteration = it.iteration
    _set_phase(run, pb.PHASE_SAMPLING, total=len(shards), unit="shards")
    first = shards[: queued_shards(len(shards), 0, window)]
    return Decision(jobs=[sample_job(run, cfg, it, i, ids) for i, ids in enumerate(first)])


def _current(run: pb.Run, iteration: int, phase: int) -> pb.Iteration | None:
    """The iteration record if the event belongs to the run's current iteration and phase."""
    if run.status in FINISHED or run.iteration != iteration or run.phase != phase or not run.iterations:
        return None
    it = run.iterations[-1]
    return it if it.iteration == iteration else None


def _verifies_out(it: pb.Iteration, sampled: int, verified: int, window: int) -> list[int]:
    """Fair share of the verify queue: the sampled shards whose verify job is out, as a slice of
    `shards_sampled` (in the order they were sampled); `window` 0: every sampled shard's."""
    return list(it.shards_sampled[: sampled if window <= 0 else min(sampled, verified + window)])


def on_sample_done(
    run: pb.Run,
    cfg: RunConfig,
    done: ev.SampleDone,
    train_ids: Sequence[str] = (),
    window: int = 0,
    verify_window: int = 0,
) -> Decision:
    it = _current(run, done.iteration, pb.PHASE_SAMPLING)
    if it is None or done.shard in it.shards_sampled:
        return Decision()
    sampled, verified = len(it.shards_sampled), len(it.shards_verified)
    out_before = len(_verifies_out(it, sampled, verified, verify_window))
    it.shards_sampled.append(done.shard)
    jobs = [
        _verify_job(run, cfg, it, shard)
        for shard in _verifies_out(it, sampled + 1, verified, verify_window)[out_before:]
    ]
    if window > 0:  # fair share: the next first-round shard goes out (later rounds went out whole)
        shards = _first_round(it, cfg, train_ids)
        for i in range(
            queued_shards(len(shards), sampled, window), queued_shards(len(shards), sampled + 1, window)
        ):
            jobs.append(sample_job(run, cfg, it, i, shards[i]))
    it.samples += done.num_samples
    it.tokens_generated += done.num_tokens
    run.progress.done = len(it.shards_sampled)
    run.updated.FromDatetime(_now())
    if len(it.shards_sampled) == it.shards_total:
        _set_phase(
            run, pb.PHASE_VERIFYING, done=len(it.shards_verified), total=it.shards_total, unit="shards"
        )
    return Decision(jobs=jobs)


def windowed_jobs(
    run: pb.Run, cfg: RunConfig, train_ids: Sequence[str], window: int, verify_window: int
) -> list[Job]:
    """The current E-step's sample and verify jobs that the fair-share windows let out now and whose
    shards are not done. A restarted coordinator publishes them (ids dedupe what is out already):
    a window that grew across the restart (more replicas after an upgrade) would otherwise leave
    shards that no event lets out."""
    if (
        run.status in FINISHED
        or run.phase not in (pb.PHASE_SAMPLING, pb.PHASE_VERIFYING)
        or not run.iterations
    ):
        return []
    it = run.iterations[-1]
    sampled, verified = len(it.shards_sampled), len(it.shards_verified)
    jobs = []
    if window > 0 and run.phase == pb.PHASE_SAMPLING:
        shards, done = _first_round(it, cfg, train_ids), set(it.shards_sampled)
        first = range(queued_shards(len(shards), sampled, window))
        jobs += [sample_job(run, cfg, it, i, shards[i]) for i in first if i not in done]
    if verify_window > 0:
        checked = set(it.shards_verified)
        out = _verifies_out(it, sampled, verified, verify_window)
        jobs += [_verify_job(run, cfg, it, s) for s in out if s not in checked]
    return jobs


def on_verify_done(
    run: pb.Run, done: ev.VerifyDone, cfg: RunConfig | None = None, verify_window: int = 0
) -> Decision:
    """A verified shard; with `verify_window` (needs `cfg`), the next sampled shard's verify job goes out."""
    it = _current(
        run, done.iteration, run.phase if run.phase in (pb.PHASE_SAMPLING, pb.PHASE_VERIFYING) else -1
    )
    if it is None or done.shard in it.shards_verified:
        return Decision()
    sampled, verified = len(it.shards_sampled), len(it.shards_verified)
    jobs = []
    if verify_window > 0 and cfg is not None:
        out_before = len(_verifies_out(it, sampled, verified, verify_window))
        next_out = _verifies_out(it, sampled, verified + 1, verify_window)[out_before:]
        jobs = [_verify_job(run, cfg, it, shard) for shard in next_out]
    it.shards_verified.append(done.shard)
    it.correct_samples += done.num_correct
    if run.phase == pb.PHASE_VERIFYING:
        run.progress.done = len(it.shards_verified)
    run.updated.FromDatetime(_now())
    if len(it.shards_verified) < it.shards_total:
        return Decision(jobs=jobs)
    _set_phase(run, pb.PHASE_FILTERING, total=1, unit="kept sets")
    return Decision(needs_filter=True)


def on_round_planned(
    run: pb.Run, cfg: RunConfig, iteration: int, plan: adaptive.RoundPlan, slots: int = 0
) -> Decision:
    """Adaptive sampling: sample the next round; its shards are numbered after the earlier rounds'."""
    it = _current(run, iteration, pb.PHASE_FILTERING)
    if it is None:
        return Decision()
    start, size = it.shards_total, cfg.em.shard_size
    shards = plan_shards(plan.problem_ids, size, shard_count(len(plan.problem_ids), size, slots))
    it.shards_total += len(shards)
    it.sampling_rounds += 1
    _set_phase(run, pb.PHASE_SAMPLING, done=start, total=it.shards_total, unit="shards")
    jobs = [
        sample_job(run, cfg, it, start + i, ids, k=plan.n, first_index=plan.first_index)
        for i, ids in enumerate(shards)
    ]
    return Decision(jobs=jobs)


def on_filtered(
    run: pb.Run, cfg: RunConfig, iteration: int, stats: FilterStats, splits: Mapping[str, int]
) -> Decision:
    """After the kept set is written: train from the base, or skip an empty M-step."""
    it = _current(run, iteration, pb.PHASE_FILTERING)
    if it is None:
        return Decision()
    it.train_pass_rate = stats.correct / stats.samples if stats.samples else 0.0
    it.problems_solved = stats.problems_solved
    it.problems_total = stats.problems_total
    it.kept = stats.kept
    it.kept_key = keys.kept_key(run.run_id, iteration)
    it.sample_rewards.update(stats.sample_rewards)
    it.kept_rewards.update(stats.kept_rewards)
    it.kept_weight = stats.kept_weight
    if stats.kept == 0:
        # No problem solved: training on nothing would reproduce the base. The policy carries
        # over unchanged and the report records the skip (documented in the README).
        it.train.skipped = True
        it.checkpoint_key = it.policy_key
        return _evaluate(run, cfg, iteration, it.checkpoint_key, splits)
    job = ev.TrainJob(
        run_id=run.run_id,
        job_id=keys.job_id("train", run.run_id, iteration),
        iteration=iteration,
        base_key=run.base_model_key,
        kept_key=it.kept_key,
        params=train_params_for(cfg, iteration),
        output_key=keys.checkpoint_key(run.run_id, iteration),
        validation=train_validation(run, cfg, splits),
        tracking=settings_of(cfg.tracking),
    )
    _set_phase(run, pb.PHASE_TRAINING, unit="steps")
    return Decision(jobs=[Job("train", job, job.job_id)])


def on_train_progress(run: pb.Run, progress: ev.TrainProgress) -> Decision:
    if (
        _current(run, progress.iteration, pb.PHASE_TRAINING) is not None
        and progress.step >= run.progress.done
    ):
        run.progress.done = progress.step
        run.progress.total = progress.total_steps
        run.updated.FromDatetime(_now())
    return Decision()


def _train_summary(done: ev.TrainDone) -> pb.TrainSummary:
    return pb.TrainSummary(
        steps=done.steps,
        examples=done.examples,
        tokens=done.tokens,
        loss_first=done.loss_first,
        loss_last=done.loss_last,
        seconds=done.seconds,
        validation_rewards=done.validation_rewards,
        best_epoch=done.best_epoch,
        epochs=done.epochs,
    )


def _evaluate(
    run: pb.Run, cfg: RunConfig, iteration: int, checkpoint: str, splits: Mapping[str, int]
) -> Decision:
    jobs = _eval_jobs(run, cfg, iteration, checkpoint, splits)
    _set_phase(run, pb.PHASE_EVALUATING, total=len(jobs), unit="evaluations")
    return Decision(jobs=jobs)


def on_train_done(run: pb.Run, cfg: RunConfig, done: ev.TrainDone, splits: Mapping[str, int]) -> Decision:
    it = _current(run, done.iteration, pb.PHASE_TRAINING)
    if it is None:
        return Decision()
    it.checkpoint_key = done.checkpoint_key
    it.train.CopyFrom(_train_summary(done))
    decision = _evaluate(run, cfg, done.iteration, it.checkpoint_key, splits)
    decision.digest = [it]
    if done.iteration < run.iterations_total:  # another E-step follows (unless early stopping ends it)
        decision.prefetch = [it.checkpoint_key]
    return decision


def on_eval_done(
    run: pb.Run,
    cfg: RunConfig,
    done: ev.EvalDone,
    splits: Mapping[str, int],
    train_ids: Sequence[str],
    window: int = 0,
    slots: int = 0,
) -> Decision:
    it = _current(run, done.iteration, pb.PHASE_EVALUATING)
    if it is None or not eval_shards.record(it, done):
        return Decision()
    run.progress.done = eval_shards.jobs_done(it)
    run.updated.FromDatetime(_now())
    if len(it.evals) < len(splits):
        return Decision()
    it.seconds = (_now() - it.started.ToDatetime(tzinfo=UTC)).total_seconds()
    if done.iteration < run.iterations_total and _stalled(run, cfg, done.iteration):
        run.iterations_total = done.iteration  # early stop; the report compares with em.iterations
    if done.iteration < run.iterations_total:
        return _start_iteration(run, cfg, train_ids, window, slots)
    if _sft_pending(run, splits):
        total, done_jobs = eval_job_count(cfg, splits), eval_shards.jobs_done(run.sft)
        _set_phase(run, pb.PHASE_EVALUATING, done=done_jobs, total=total, unit="baseline evaluations")
        return Decision()
    finish(run, pb.RUN_STATUS_SUCCEEDED)
    return Decision(finished=True)


def _stalled(run: pb.Run, cfg: RunConfig, iteration: int) -> bool:
    """`em.early_stop_patience` iterations in a row without a better validation pass@1 than the best."""
    patience = cfg.em.early_stop_patience
    if (
        patience is None
        or iteration == 0
        or not any(e.split == "validation" for e in run.iterations[-1].evals)
    ):
        return False
    return iteration - choose_best_iteration(run) >= patience


def _sft_pending(run: pb.Run, splits: Mapping[str, int]) -> bool:
    return run.sft_enabled and len(run.sft.evals) < len(splits)


def _em_complete(run: pb.Run, splits: Mapping[str, int]) -> bool:
    last = run.iterations[-1] if run.iterations else None
    return last is not None and last.iteration >= run.iterations_total and len(last.evals) >= len(splits)


def on_sft_train_done(run: pb.Run, cfg: RunConfig, done: ev.TrainDone, splits: Mapping[str, int]) -> Decision:
    if run.status in FINISHED or not run.sft_enabled or run.sft.checkpoint_key:
        return Decision()
    run.sft.checkpoint_key = done.checkpoint_key
    run.sft.train.CopyFrom(_train_summary(done))
    run.updated.FromDatetime(_now())
    return Decision(
        jobs=_eval_jobs(run, cfg, 0, done.checkpoint_key, splits, variant="sft"), digest=[run.sft]
    )


def on_sft_eval_done(run: pb.Run, done: ev.EvalDone, splits: Mapping[str, int]) -> Decision:
    if run.status in FINISHED or not run.sft_enabled or not eval_shards.record(run.sft, done):
        return Decision()
    run.updated.FromDatetime(_now())
    if _sft_pending(run, splits):
        return Decision()
    run.sft.seconds = (_now() - run.sft.started.ToDatetime(tzinfo=UTC)).total_seconds()
    if not _em_complete(run, splits):
        return Decision()
    finish(run, pb.RUN_STATUS_SUCCEEDED)
    return Decision(finished=True)


def finish(run: pb.Run, status: int, error: str = "") -> None:
    if run.status in FINISHED:
        return
    _set_phase(run, pb.PHASE_DONE)
    run.status = status  # type: ignore[assignment]
    run.error = error
    run.best_iteration = choose_best_iteration(run)
    run.finished.FromDatetime(_now())


def on_job_failed(run: pb.Run, failed: ev.JobFailed) -> Decision:
    finish(run, pb.RUN_STATUS_FAILED, f"{failed.job_type} job {failed.job_id} failed: {failed.reason}")
    return Decision()
