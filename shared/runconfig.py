"""The run config: everything that defines one ReST-EM run, as a YAML document.

`restem run CONFIG` and `RunService.StartRun` both validate it with `RunConfig`; unknown keys,
wrong types and out-of-range values are errors that name the field. Checks that need the
filesystem (does the model or dataset exist?) live in `check_resources`, which the coordinator
runs before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from shared.configio import parse_yaml_mapping, validate
from shared.infra import StrictModel

TASKS = ("arithmetic", "gsm8k")


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
    """JSONL files of a file-based task (one problem per line: id, question, answer)."""

    train: Path
    """Training problems."""
    validation: Path | None = None
    """Validation problems; without it no best iteration is chosen on validation."""
    test: Path
    """Held-out test problems."""


class TaskConfig(StrictModel):
    """Which problems, and how answers are checked."""

    name: Literal["arithmetic", "gsm8k"] = "arithmetic"
    """Task: `arithmetic` (synthetic, exact integer answer) or `gsm8k` (files; "#### N" / "The answer is N")."""
    arithmetic: ArithmeticTask = Field(default_factory=ArithmeticTask)
    """Settings of the arithmetic task."""
    files: DatasetFiles | None = None
    """Dataset files; required for every task but `arithmetic`."""
    seed: int = Field(default=0, ge=0)
    """Seed of the problem generator and of the split assignment."""

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
    """`builtin:<alias>` (a model that ships in a pip package), a Hugging Face model directory, or a .gguf file."""
    chat_template: bool = True
    """Wrap each question in the tokenizer's chat template."""
    system_prompt: str | None = None
    """Optional system message for the chat template."""


class SamplingConfig(StrictModel):
    """E-step decoding (the paper: top-k 40, temperature 0.7)."""

    n: int = Field(default=8, ge=1, le=1024)
    """Samples per training problem (K)."""
    temperature: float = Field(default=0.7, gt=0, le=5)
    """Sampling temperature."""
    top_k: int = Field(default=40, ge=0)
    """Top-k filtering (0 disables)."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus filtering (1.0 disables)."""
    max_new_tokens: int = Field(default=40, ge=1, le=32_768)
    """Longest completion in tokens."""
    stop: list[str] = Field(default_factory=list)
    """Extra stop strings (the task adds its own answer pattern)."""
    seed: int = Field(default=0, ge=0)
    """Base seed; each shard derives its own from it, the iteration and the shard index."""


class EMConfig(StrictModel):
    """The EM loop."""

    iterations: int = Field(default=2, ge=1, le=100)
    """EM iterations after the base evaluation (the paper peaks at 2-3)."""
    cutoff: int = Field(default=4, ge=1, le=10_000)
    """Most correct samples kept per problem (the paper uses 10)."""
    shard_size: int = Field(default=8, ge=1, le=100_000)
    """Problems per sample job; a shard should take seconds to a minute."""


class TrainingConfig(StrictModel):
    """M-step fine-tuning, always from the base model."""

    learning_rate: float = Field(default=2e-5, gt=0, le=1)
    """AdamW learning rate."""
    epochs: int = Field(default=2, ge=1, le=100)
    """Passes over the kept set."""
    batch_size: int = Field(default=8, ge=1, le=4096)
    """Sequences per optimiser step."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Fraction of steps with linear warm-up."""
    max_seq_len: int = Field(default=512, ge=8)
    """Longest prompt + completion; longer kept samples are an error, not silently truncated."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradient clipping norm."""
    loss_normalisation: Literal["token", "sample"] = "token"
    """`token`: weighted mean over completion tokens of the batch; `sample`: mean of per-sample means."""
    seed: int = Field(default=0, ge=0)
    """Shuffling seed."""


class EvaluationConfig(StrictModel):
    """Greedy pass@1 after every iteration (and on the base)."""

    splits: list[Literal["validation", "test"]] = Field(default=["validation", "test"])
    """Splits to evaluate; the best iteration is chosen on validation, never on test."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """Longest evaluation completion; defaults to sampling.max_new_tokens."""


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


def parse_run_config(text: str, *, source: str = "run config") -> RunConfig:
    """Validate a YAML run config; raises ConfigError naming every bad field."""
    return validate(RunConfig, parse_yaml_mapping(text, source=source), source=source)


def load_run_config(path: Path) -> RunConfig:
    from shared.configio import ConfigError

    if not path.is_file():
        raise ConfigError(f"run config {path} does not exist")
    return parse_run_config(path.read_text(), source=str(path))
