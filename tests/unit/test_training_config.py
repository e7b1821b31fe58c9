"""The `training` section of the run config: cross-field checks, and its way to the trainer's TrainParams."""

from __future__ import annotations

import pytest

from services.coordinator.core import train_params_for
from shared.configio import ConfigError
from shared.params import TrainParams, from_proto
from shared.runconfig import parse_run_config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("training: {lora: {r: 8}}", r"training.lora is set but training.method is 'full'.*method: lora"),
        (
            "training: {batch_size: 8, micro_batch_size: 3}",
            r"must divide training.batch_size \(8\).*\[1, 2, 4, 8\]",
        ),
        ("training: {batch_size: 4, micro_batch_size: 8}", r"micro_batch_size \(8\) must divide"),
        ("training: {min_lr_ratio: 0.1}", r"min_lr_ratio only applies to a decaying schedule.*cosine"),
        (
            "training: {packing: true, length_bucketing: true}",
            r"length_bucketing only applies without packing",
        ),
        ("training: {method: lora, lora: {target_modules: []}}", r"target_modules is empty.*all-linear"),
        ("training: {method: qlora}", r"training.method: Input should be 'full' or 'lora'"),
        ("training: {learning_rate: -0.1}", r"training.learning_rate: Input should be greater than 0"),
        ("training: {max_steps: 0}", r"training.max_steps: Input should be greater than or equal to 1"),
        (
            "training: {method: lora, lora: {alpha: 0}}",
            r"training.lora.alpha: Input should be greater than 0",
        ),
    ],
)
def test_bad_training_sections_say_what_to_set(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_run_config(text, source="test.yaml")


def test_defaults_are_a_full_fine_tune_with_library_defaults() -> None:
    p = from_proto(train_params_for(parse_run_config(""), 1), TrainParams)
    assert (p.method, p.max_steps, p.micro_batch_size, p.packing, p.lr_schedule) == (
        "full",
        None,
        None,
        False,
        "constant",
    )
    assert p.checkpoint_every_steps == 50
    lora = from_proto(train_params_for(parse_run_config("training: {method: lora}"), 1), TrainParams)
    assert (lora.lora_r, lora.lora_alpha, lora.lora_target_modules) == (16, 32.0, ("all-linear",))
