"""The jobs the coordinator publishes, built from the run and its config: pure, no I/O.

Every job carries a deterministic id (`shared.keys.job_id`) from the run, the iteration and the
shard, so publishing the same decision twice is deduplicated by NATS and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from google.protobuf.message import Message
from pydantic import BaseModel
from restem.common.v1 import common_pb2
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from shared import keys
from shared.params import GenerationParams, TrainParams, to_proto
from shared.runconfig import TASK_DEFAULTS, LoraConfig, RunConfig
from shared.seeds import derive_seed
from shared.tasks import stop_patterns

from . import adaptive
from .filtering import even_parts


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


def eval_shard_bounds(problems: int, shard_size: int) -> list[tuple[int, int]]:
    """(offset, count) of each eval job of a split of `problems` problems (sorted by id): as few
    shards of at most `shard_size` as hold them, their sizes within one of each other."""
    return even_parts(problems, max(1, -(-problems // shard_size)))


def eval_job_count(cfg: RunConfig, splits: Mapping[str, int]) -> int:
    return sum(len(eval_shard_bounds(n, cfg.evaluation.shard_size)) for n in splits.values())


def _eval_output_key(run: pb.Run, iteration: int, split: str, variant: str, shard: int, shards: int) -> str:
    whole = (
        f"{keys.sft_prefix(run.run_id)}/eval/{split}.jsonl"
        if variant
        else keys.eval_key(run.run_id, iteration, split)
    )
    return whole if shards == 1 else whole.removesuffix(".jsonl") + f".shard-{shard:05d}.jsonl"


def _eval_job_id(run: pb.Run, iteration: int, split: str, variant: str, shard: int, shards: int) -> str:
    part = f"{variant}.{split}" if variant else split
    return keys.job_id(
        "eval", run.run_id, None if variant else iteration, part if shards == 1 else f"{part}.{shard}"
    )


def _eval_jobs(
    run: pb.Run, cfg: RunConfig, iteration: int, checkpoint: str, splits: Mapping[str, int], variant: str = ""
) -> list[Job]:
    """The eval jobs of every split (`splits`: problems per split), a split cut in shards of at most
    `evaluation.shard_size` problems."""
    jobs = []
    for split, problems in splits.items():
        task, max_new_tokens = split_task(cfg, split)
        greedy = _greedy(cfg, task, max_new_tokens)
        sample_params = None
        if cfg.evaluation.samples > 0 and split in cfg.evaluation.sample_splits:
            e = cfg.evaluation
            sampled = replace(
                greedy,
                greedy=False,
                n=e.samples,
                temperature=e.temperature,
                top_k=e.top_k,
                top_p=e.top_p,
                seed=e.seed,
            )
            sample_params = sampling_params(sampled)
        bounds = eval_shard_bounds(problems, cfg.evaluation.shard_size)
        for shard, (offset, count) in enumerate(bounds):
            job = ev.EvalJob(
                run_id=run.run_id,
                job_id=_eval_job_id(run, iteration, split, variant, shard, len(bounds)),
                iteration=iteration,
                split=split,
                task=task,
                dataset_key=keys.dataset_key(run.run_id, split),
                checkpoint_key=checkpoint,
                params=sampling_params(greedy),
                output_key=_eval_output_key(run, iteration, split, variant, shard, len(bounds)),
                prompt_format=prompt_format(cfg),
                variant=variant,
                sample_params=sample_params,
                shard=shard,
                num_shards=len(bounds),
                problem_offset=offset if len(bounds) > 1 else 0,
                problem_count=count if len(bounds) > 1 else 0,
            )
            jobs.append(Job("eval", job, job.job_id))
    return jobs


def prompt_format(cfg: RunConfig) -> common_pb2.PromptFormat:
    return common_pb2.PromptFormat(
        chat_template=cfg.model.chat_template, system_prompt=cfg.model.system_prompt or ""
    )


def eval_splits(cfg: RunConfig, split_sizes: Mapping[str, int]) -> dict[str, int]:
    """The run's non-empty eval splits, then its transfer sets (`transfer-<name>`), with their sizes."""
    names = [*cfg.evaluation.splits, *(t.split for t in cfg.evaluation.transfer)]
    return {s: split_sizes[s] for s in names if split_sizes.get(s, 0) > 0}


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
    params = sampling_params(
        e_step_generation(cfg, n, k if k is not None else adaptive.first_round_n(cfg.sampling))
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
        output_key=keys.shard_key(samples_prefix(run, it), index),
        prompt_format=prompt_format(cfg),
        first_index=first_index,
    )
    return Job("sample", job, job.job_id)


def samples_prefix(run: pb.Run, it: pb.Iteration) -> str:
    """Where the iteration's sample shards are (recorded; older records: the run's own layout)."""
    return it.samples_prefix or keys.samples_prefix(run.run_id, it.iteration)


def verdicts_prefix(run: pb.Run, it: pb.Iteration) -> str:
    return it.verdicts_prefix or keys.verdicts_prefix(run.run_id, it.iteration)


def _verify_job(run: pb.Run, cfg: RunConfig, it: pb.Iteration, shard: int) -> Job:
    return verify_job(run, cfg, it, shard, verdicts_prefix(run, it))


def verify_job(
    run: pb.Run, cfg: RunConfig, it: pb.Iteration, shard: int, out_prefix: str, reverification: int = 0
) -> Job:
    """Judge one sample shard into `out_prefix`; a reverification's job ids are its own."""
    part = f"rv{reverification}.{shard}" if reverification else shard
    job = ev.VerifyJob(
        run_id=run.run_id,
        job_id=keys.job_id("verify", run.run_id, it.iteration, part),
        iteration=it.iteration,
        shard=shard,
        task=cfg.task.name,
        dataset_key=keys.dataset_key(run.run_id, "train"),
        samples_key=keys.shard_key(samples_prefix(run, it), shard),
        output_key=keys.shard_key(out_prefix, shard),
        reverification=reverification,
        reward=cfg.em.reward,
    )
    return Job("verify", job, job.job_id)


def train_validation(run: pb.Run, cfg: RunConfig, splits: Mapping[str, int]) -> ev.TrainValidation | None:
    """Validation-driven stopping of the M-step: on when the run evaluates a (non-empty) validation split.

    The greedy settings are the validation evaluation's, so the trainer's reward is that pass@1.
    """
    if not cfg.training.validation_stopping or "validation" not in splits:
        return None
    return ev.TrainValidation(
        task=cfg.task.name,
        dataset_key=keys.dataset_key(run.run_id, "validation"),
        params=sampling_params(
            _greedy(cfg, cfg.task.name, cfg.evaluation.max_new_tokens or cfg.sampling.max_new_tokens)
        ),
        prompt_format=prompt_format(cfg),
    )


def sampling_params(params: GenerationParams) -> common_pb2.SamplingParams:
    return to_proto(params, common_pb2.SamplingParams)


def e_step_generation(cfg: RunConfig, iteration: int, n: int) -> GenerationParams:
    """The E-step's decoding: every `sampling` field GenerationParams has, by name.

    The seed is the iteration's (`derive_seed`), `n` the round's (adaptive sampling may draw fewer
    than `sampling.n` at first), and the task adds its answer pattern as a stop regex.
    """
    section = _shared_fields(cfg.sampling, GenerationParams)
    section.update(
        n=n, seed=derive_seed(cfg.sampling.seed, iteration), stop_regex=tuple(stop_patterns(cfg.task.name))
    )
    return GenerationParams(**section)


def _greedy(cfg: RunConfig, task: str, max_new_tokens: int) -> GenerationParams:
    """Greedy decoding for evaluation and validation: the run's stop strings and the task's pattern."""
    return GenerationParams(
        n=1,
        greedy=True,
        max_new_tokens=max_new_tokens,
        stop=tuple(cfg.sampling.stop),
        stop_regex=tuple(stop_patterns(task)),
    )


def m_step_params(cfg: RunConfig, iteration: int) -> TrainParams:
    """The M-step's settings: every `training` field TrainParams has, by name, and `training.lora`'s
    fields as `lora_<name>`; the seed is the iteration's (`derive_seed`)."""
    t = cfg.training
    section = _shared_fields(t, TrainParams)
    lora = t.lora if t.lora is not None else LoraConfig()
    section.update({f"lora_{name}": value for name, value in _shared_fields(lora, None).items()})
    section["seed"] = derive_seed(t.seed, iteration)
    section["save_dtype"] = cfg.model.dtype
    return TrainParams(**section)


def train_params_for(cfg: RunConfig, iteration: int) -> common_pb2.TrainParams:
    return to_proto(m_step_params(cfg, iteration), common_pb2.TrainParams)


def _shared_fields(section: BaseModel, params_cls: type | None) -> dict[str, Any]:
    """The section's values for the fields `params_cls` also has (all of them for None); lists as tuples."""
    names = set(type(section).model_fields)
    if params_cls is not None:
        names &= {f.name for f in fields(params_cls)}
    values = {name: getattr(section, name) for name in names}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
