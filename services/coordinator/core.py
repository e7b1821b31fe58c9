"""The coordinator's decisions, as pure functions over the `Run` message.

Each `on_*` function takes the run as it is stored and one event, mutates the run in place and
returns the jobs to publish next. Nothing here does I/O: the event adapter (`events.py`) loads the
run from the key-value store, calls these, publishes the jobs with their deterministic ids and
writes the run back. Re-applying an event that was already applied changes nothing and returns
no jobs, which is what makes redelivery harmless.

Not handled here: reading samples and verdicts for the filter (the adapter does the I/O and calls
`select_kept`), and the report's rendering (see `report.py`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from restem.common.v1 import common_pb2
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from shared import keys
from shared.runconfig import TASK_DEFAULTS, LoraConfig, RunConfig
from shared.seeds import derive_seed
from shared.tasks import stop_patterns

from . import adaptive

FINISHED = (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED, pb.RUN_STATUS_CANCELLED)
PHASE_NAMES = {
    pb.PHASE_PREPARING: "preparing",
    pb.PHASE_SAMPLING: "sampling",
    pb.PHASE_VERIFYING: "verifying",
    pb.PHASE_FILTERING: "filtering",
    pb.PHASE_TRAINING: "training",
    pb.PHASE_EVALUATING: "evaluating",
}


@dataclass(frozen=True)
class Job:
    """A job to publish: its queue, payload and deterministic id."""

    job_type: str
    message: Message
    job_id: str


@dataclass
class Decision:
    jobs: list[Job] = field(default_factory=list)
    # The adapter must read the verdicts, select the kept set and call `on_filtered`.
    needs_filter: bool = False
    # The run just finished successfully: the adapter writes the report.
    finished: bool = False


# --- pure helpers -----------------------------------------------------------------------------


def plan_shards(problem_ids: Sequence[str], shard_size: int) -> list[list[str]]:
    return [list(problem_ids[i : i + shard_size]) for i in range(0, len(problem_ids), shard_size)]


@dataclass(frozen=True)
class FilterStats:
    samples: int
    correct: int
    problems_total: int
    problems_solved: int
    kept: int
    duplicates_dropped: int


def select_kept(
    samples: Sequence[dict[str, Any]],
    verdicts: Sequence[dict[str, Any]],
    *,
    problem_ids: Sequence[str],
    cutoff: int,
    seed: int,
) -> tuple[list[dict[str, Any]], FilterStats]:
    """Keep at most `cutoff` verified-correct samples per problem.

    The paper caps kept samples per problem (10) to avoid skewing the M-step towards easy problems
    but does not say which ones it keeps. restem's rule: drop exact duplicate completions of a
    problem first (after whitespace normalisation: a duplicate adds weight without adding
    information), then choose uniformly at random among the rest with a seed derived from the run
    seed and the sample id, so the choice is reproducible and independent of arrival order.
    """
    correct_ids = {v["sample_id"] for v in verdicts if v["correct"]}
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        if s["sample_id"] in correct_ids:
            by_problem[s["problem_id"]].append(s)
    kept: list[dict[str, Any]] = []
    duplicates = 0
    for pid in problem_ids:
        seen: set[str] = set()
        unique = []
        for s in sorted(by_problem.get(pid, []), key=lambda s: derive_seed(seed, s["sample_id"])):
            text = " ".join(s["completion"].split())
            if text in seen:
                duplicates += 1
                continue
            seen.add(text)
            unique.append(s)
        kept += [
            {
                "sample_id": s["sample_id"],
                "problem_id": pid,
                "prompt": s["prompt"],
                "completion": s["completion"],
                "weight": 1.0,
            }
            for s in unique[:cutoff]
        ]
    stats = FilterStats(
        samples=len(samples),
        correct=len(correct_ids),
        problems_total=len(problem_ids),
        problems_solved=sum(1 for pid in problem_ids if by_problem.get(pid)),
        kept=len(kept),
        duplicates_dropped=duplicates,
    )
    return kept, stats


def choose_best_iteration(run: pb.Run) -> int:
    """Iteration with the highest validation pass@1; ties go to the earlier (cheaper, less overfit).

    Test numbers are never used. Without a validation split the last iteration is returned.
    """
    best, best_score = None, -1.0
    for it in run.iterations:
        scores = [e.pass_at_1 for e in it.evals if e.split == "validation"]
        if scores and scores[0] > best_score:
            best, best_score = it.iteration, scores[0]
    return best if best is not None else (run.iterations[-1].iteration if run.iterations else 0)


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


def split_task(cfg: RunConfig, split: str) -> tuple[str, int]:
    """Task and completion budget of an eval split: the run's own, or a transfer set's."""
    for t in cfg.evaluation.transfer:
        if t.split == split:
            return t.task, t.max_new_tokens or TASK_DEFAULTS[t.task]["max_new_tokens"]
    return cfg.task.name, cfg.evaluation.max_new_tokens or cfg.sampling.max_new_tokens


def _eval_jobs(
    run: pb.Run, cfg: RunConfig, iteration: int, checkpoint: str, splits: Sequence[str], variant: str = ""
) -> list[Job]:
    jobs = []
    for split in splits:
        task, max_new_tokens = split_task(cfg, split)
        params = common_pb2.SamplingParams(
            n=1,
            greedy=True,
            max_new_tokens=max_new_tokens,
            stop=cfg.sampling.stop,
            stop_regex=stop_patterns(task),
        )
        job = ev.EvalJob(
            run_id=run.run_id,
            job_id=keys.job_id(
                "eval", run.run_id, None if variant else iteration, f"{variant}.{split}" if variant else split
            ),
            iteration=iteration,
            split=split,
            task=task,
            dataset_key=keys.dataset_key(run.run_id, split),
            checkpoint_key=checkpoint,
            params=params,
            output_key=f"{keys.sft_prefix(run.run_id)}/eval/{split}.jsonl"
            if variant
            else keys.eval_key(run.run_id, iteration, split),
            prompt_format=prompt_format(cfg),
            variant=variant,
        )
        if cfg.evaluation.samples > 0 and split in cfg.evaluation.sample_splits:
            e = cfg.evaluation
            job.sample_params.CopyFrom(
                common_pb2.SamplingParams(
                    n=e.samples,
                    temperature=e.temperature,
                    top_p=e.top_p,
                    max_new_tokens=params.max_new_tokens,
                    stop=params.stop,
                    stop_regex=params.stop_regex,
                    seed=e.seed,
                )
            )
        jobs.append(Job("eval", job, job.job_id))
    return jobs


def prompt_format(cfg: RunConfig) -> common_pb2.PromptFormat:
    return common_pb2.PromptFormat(
        chat_template=cfg.model.chat_template, system_prompt=cfg.model.system_prompt or ""
    )


def eval_splits(cfg: RunConfig, split_sizes: dict[str, int]) -> list[str]:
    """The run's non-empty eval splits, then its transfer sets (`transfer-<name>`)."""
    own = [s for s in cfg.evaluation.splits if split_sizes.get(s, 0) > 0]
    return own + [t.split for t in cfg.evaluation.transfer if split_sizes.get(t.split, 0) > 0]


def on_prepare_done(run: pb.Run, cfg: RunConfig, done: ev.PrepareDone, splits: Sequence[str]) -> Decision:
    if run.status in FINISHED or run.phase != pb.PHASE_PREPARING:
        return Decision()
    it = run.iterations.add(iteration=0, checkpoint_key=run.base_model_key, policy_key=run.base_model_key)
    it.started.FromDatetime(_now())
    run.iteration = 0
    _set_phase(run, pb.PHASE_EVALUATING, total=len(splits), unit="evaluations")
    jobs = _eval_jobs(run, cfg, 0, run.base_model_key, splits)
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
        )
        jobs.append(Job("train", job, job.job_id))
    return Decision(jobs=jobs)


def sample_job(
    run: pb.Run,
    cfg: RunConfig,
    it: pb.Iteration,
    index: int,
    ids: Sequence[str],
    *,
    k: int | None = None,
    first_index: int = 0,
) -> Job:
    """Shard `index` of the iteration's E-step: `k` samples per problem (default: the first round's).

    The seed is the iteration's, not the shard's: the sampler seeds sample `i` of problem `p` with
    `shared.seeds.sample_seeds(seed, [p], ...)`, so a sample is the same whichever shard or adaptive
    round draws it (a fixed-K run and an adaptive one share their first samples).
    """
    n = it.iteration
    params = common_pb2.SamplingParams(
        n=k if k is not None else adaptive.first_round_n(cfg.sampling),
        temperature=cfg.sampling.temperature,
        top_k=cfg.sampling.top_k,
        top_p=cfg.sampling.top_p,
        max_new_tokens=cfg.sampling.max_new_tokens,
        stop=cfg.sampling.stop,
        stop_regex=stop_patterns(cfg.task.name),
        seed=derive_seed(cfg.sampling.seed, n),
    )
    job = ev.SampleJob(
        run_id=run.run_id,
        job_id=keys.job_id("sample", run.run_id, n, index),
        iteration=n,
        shard=index,
        task=cfg.task.name,
        dataset_key=keys.dataset_key(run.run_id, "train"),
        problem_ids=ids,
        policy_key=it.policy_key,
        params=params,
        output_key=keys.samples_key(run.run_id, n, index),
        prompt_format=prompt_format(cfg),
        first_index=first_index,
    )
    return Job("sample", job, job.job_id)


def _verify_job(run: pb.Run, cfg: RunConfig, iteration: int, shard: int) -> Job:
    job = ev.VerifyJob(
        run_id=run.run_id,
        job_id=keys.job_id("verify", run.run_id, iteration, shard),
        iteration=iteration,
        shard=shard,
        task=cfg.task.name,
        dataset_key=keys.dataset_key(run.run_id, "train"),
        samples_key=keys.samples_key(run.run_id, iteration, shard),
        output_key=keys.verdicts_key(run.run_id, iteration, shard),
    )
    return Job("verify", job, job.job_id)


def _start_iteration(run: pb.Run, cfg: RunConfig, train_ids: Sequence[str]) -> Decision:
    _flush_phase(run)  # the evaluation time belongs to the previous iteration
    previous = run.iterations[-1]
    shards = plan_shards(train_ids, cfg.em.shard_size)
    it = run.iterations.add(
        iteration=previous.iteration + 1, policy_key=previous.checkpoint_key, shards_total=len(shards)
    )
    it.started.FromDatetime(_now())
    it.sampling_rounds = 1 if cfg.sampling.adaptive.enabled else 0
    run.iteration = it.iteration
    _set_phase(run, pb.PHASE_SAMPLING, total=len(shards), unit="shards")
    return Decision(jobs=[sample_job(run, cfg, it, i, ids) for i, ids in enumerate(shards)])


def _current(run: pb.Run, iteration: int, phase: int) -> pb.Iteration | None:
    """The iteration record if the event belongs to the run's current iteration and phase."""
    if run.status in FINISHED or run.iteration != iteration or run.phase != phase or not run.iterations:
        return None
    it = run.iterations[-1]
    return it if it.iteration == iteration else None


def on_sample_done(run: pb.Run, cfg: RunConfig, done: ev.SampleDone) -> Decision:
    it = _current(run, done.iteration, pb.PHASE_SAMPLING)
    if it is None or done.shard in it.shards_sampled:
        return Decision()
    it.shards_sampled.append(done.shard)
    it.samples += done.num_samples
    it.tokens_generated += done.num_tokens
    run.progress.done = len(it.shards_sampled)
    run.updated.FromDatetime(_now())
    if len(it.shards_sampled) == it.shards_total:
        _set_phase(
            run, pb.PHASE_VERIFYING, done=len(it.shards_verified), total=it.shards_total, unit="shards"
        )
    return Decision(jobs=[_verify_job(run, cfg, done.iteration, done.shard)])


def on_verify_done(run: pb.Run, done: ev.VerifyDone) -> Decision:
    it = _current(
        run, done.iteration, run.phase if run.phase in (pb.PHASE_SAMPLING, pb.PHASE_VERIFYING) else -1
    )
    if it is None or done.shard in it.shards_verified:
        return Decision()
    it.shards_verified.append(done.shard)
    it.correct_samples += done.num_correct
    if run.phase == pb.PHASE_VERIFYING:
        run.progress.done = len(it.shards_verified)
    run.updated.FromDatetime(_now())
    if len(it.shards_verified) < it.shards_total:
        return Decision()
    _set_phase(run, pb.PHASE_FILTERING, total=1, unit="kept sets")
    return Decision(needs_filter=True)


def on_round_planned(run: pb.Run, cfg: RunConfig, iteration: int, plan: adaptive.RoundPlan) -> Decision:
    """Adaptive sampling: sample the next round; its shards are numbered after the earlier rounds'."""
    it = _current(run, iteration, pb.PHASE_FILTERING)
    if it is None:
        return Decision()
    start = it.shards_total
    shards = plan_shards(plan.problem_ids, cfg.em.shard_size)
    it.shards_total += len(shards)
    it.sampling_rounds += 1
    _set_phase(run, pb.PHASE_SAMPLING, done=start, total=it.shards_total, unit="shards")
    jobs = [
        sample_job(run, cfg, it, start + i, ids, k=plan.n, first_index=plan.first_index)
        for i, ids in enumerate(shards)
    ]
    return Decision(jobs=jobs)


def train_validation(run: pb.Run, cfg: RunConfig, splits: Sequence[str]) -> ev.TrainValidation | None:
    """Validation-driven stopping of the M-step: on when the run evaluates a (non-empty) validation split.

    The greedy settings are the validation evaluation's, so the trainer's reward is that pass@1.
    """
    if not cfg.training.validation_stopping or "validation" not in splits:
        return None
    return ev.TrainValidation(
        task=cfg.task.name,
        dataset_key=keys.dataset_key(run.run_id, "validation"),
        params=common_pb2.SamplingParams(
            n=1,
            greedy=True,
            max_new_tokens=cfg.evaluation.max_new_tokens or cfg.sampling.max_new_tokens,
            stop=cfg.sampling.stop,
            stop_regex=stop_patterns(cfg.task.name),
        ),
        prompt_format=prompt_format(cfg),
        patience=cfg.training.patience,
    )


def train_params_for(cfg: RunConfig, iteration: int) -> common_pb2.TrainParams:
    t = cfg.training
    lora = t.lora if t.lora is not None else LoraConfig()
    return common_pb2.TrainParams(
        learning_rate=t.learning_rate,
        epochs=t.epochs,
        batch_size=t.batch_size,
        weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio,
        max_seq_len=t.max_seq_len,
        max_grad_norm=t.max_grad_norm,
        seed=derive_seed(t.seed, iteration),
        loss_normalisation=t.loss_normalisation,
        method=t.method,
        lora_r=lora.r if t.method == "lora" else 0,
        lora_alpha=lora.alpha if t.method == "lora" else 0.0,
        lora_dropout=lora.dropout if t.method == "lora" else 0.0,
        lora_target_modules=lora.target_modules if t.method == "lora" else [],
        lr_schedule=t.lr_schedule,
        min_lr_ratio=t.min_lr_ratio,
        max_steps=t.max_steps or 0,
        micro_batch_size=t.micro_batch_size or 0,
        packing=t.packing,
        length_bucketing=t.length_bucketing,
        gradient_checkpointing=t.gradient_checkpointing,
        checkpoint_every_steps=t.checkpoint_every_steps,
    )


def on_filtered(
    run: pb.Run, cfg: RunConfig, iteration: int, stats: FilterStats, splits: Sequence[str]
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
    if stats.kept == 0:
        # No problem solved: training on nothing would reproduce the base. The policy carries
        # over unchanged and the report records the skip (documented in the README).
        it.train.skipped = True
        it.checkpoint_key = it.policy_key
        _set_phase(run, pb.PHASE_EVALUATING, total=len(splits), unit="evaluations")
        return Decision(jobs=_eval_jobs(run, cfg, iteration, it.checkpoint_key, splits))
    job = ev.TrainJob(
        run_id=run.run_id,
        job_id=keys.job_id("train", run.run_id, iteration),
        iteration=iteration,
        base_key=run.base_model_key,
        kept_key=it.kept_key,
        params=train_params_for(cfg, iteration),
        output_key=keys.checkpoint_key(run.run_id, iteration),
        validation=train_validation(run, cfg, splits),
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


def on_train_done(run: pb.Run, cfg: RunConfig, done: ev.TrainDone, splits: Sequence[str]) -> Decision:
    it = _current(run, done.iteration, pb.PHASE_TRAINING)
    if it is None:
        return Decision()
    it.checkpoint_key = done.checkpoint_key
    it.train.CopyFrom(_train_summary(done))
    _set_phase(run, pb.PHASE_EVALUATING, total=len(splits), unit="evaluations")
    return Decision(jobs=_eval_jobs(run, cfg, done.iteration, it.checkpoint_key, splits))


def on_eval_done(
    run: pb.Run, cfg: RunConfig, done: ev.EvalDone, splits: Sequence[str], train_ids: Sequence[str]
) -> Decision:
    it = _current(run, done.iteration, pb.PHASE_EVALUATING)
    if it is None or any(e.split == done.split for e in it.evals):
        return Decision()
    it.evals.add(
        split=done.split,
        num_problems=done.num_problems,
        num_correct=done.num_correct,
        pass_at_1=done.pass_at_1,
        results_key=done.results_key,
        metrics=dict(done.metrics),
    )
    run.progress.done = len(it.evals)
    run.updated.FromDatetime(_now())
    if len(it.evals) < len(splits):
        return Decision()
    it.seconds = (_now() - it.started.ToDatetime(tzinfo=UTC)).total_seconds()
    if done.iteration < run.iterations_total and _stalled(run, cfg, done.iteration):
        run.iterations_total = done.iteration  # early stop; the report compares with em.iterations
    if done.iteration < run.iterations_total:
        return _start_iteration(run, cfg, train_ids)
    if _sft_pending(run, splits):
        _set_phase(
            run, pb.PHASE_EVALUATING, done=len(run.sft.evals), total=len(splits), unit="baseline evaluations"
        )
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


def _sft_pending(run: pb.Run, splits: Sequence[str]) -> bool:
    return run.sft_enabled and len(run.sft.evals) < len(splits)


def _em_complete(run: pb.Run, splits: Sequence[str]) -> bool:
    last = run.iterations[-1] if run.iterations else None
    return last is not None and last.iteration >= run.iterations_total and len(last.evals) >= len(splits)


def on_sft_train_done(run: pb.Run, cfg: RunConfig, done: ev.TrainDone, splits: Sequence[str]) -> Decision:
    if run.status in FINISHED or not run.sft_enabled or run.sft.checkpoint_key:
        return Decision()
    run.sft.checkpoint_key = done.checkpoint_key
    run.sft.train.CopyFrom(_train_summary(done))
    run.updated.FromDatetime(_now())
    return Decision(jobs=_eval_jobs(run, cfg, 0, done.checkpoint_key, splits, variant="sft"))


def on_sft_eval_done(run: pb.Run, done: ev.EvalDone, splits: Sequence[str]) -> Decision:
    if run.status in FINISHED or not run.sft_enabled or any(e.split == done.split for e in run.sft.evals):
        return Decision()
    run.sft.evals.add(split=done.split, num_problems=done.num_problems, num_correct=done.num_correct,
                      pass_at_1=done.pass_at_1, results_key=done.results_key, metrics=dict(done.metrics))  # fmt: skip
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
