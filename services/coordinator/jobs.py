"""The jobs the coordinator publishes, built from the run and its config: pure, no I/O.

Every job carries a deterministic id (`shared.keys.job_id`) from the run, the iteration and the
shard, so publishing the same decision twice is deduplicated by NATS and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import Message
from restem.common.v1 import common_pb2
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from shared import keys
from shared.runconfig import TASK_DEFAULTS, LoraConfig, RunConfig
from shared.seeds import derive_seed
from shared.tasks import stop_patterns

from . import adaptive


@dataclass(frozen=True)
class Job:
    """A job to publish: its queue, payload and deterministic id."""

    job_type: str
    message: Message
    job_id: str


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
