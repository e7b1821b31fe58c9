"""Unit tests of the M-step features on a TINY random-init Llama: schedule, accumulation, packing, LoRA, resume.

Equivalences are checked against the simplest form of the same computation (one big batch, padded
batches, one sample per forward, an uninterrupted run), on CPU in fp32.
"""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from shared.llm.checkpoint import load_for_inference, save_checkpoint
from shared.llm.generation import render_prompt
from shared.llm.lora import check_target_modules, linear_module_names
from shared.llm.packing import IGNORE, check_packing, collate, epoch_steps, pack, pack_rows
from shared.llm.training import (
    TrainExample,
    TrainParams,
    batch_loss,
    lr_factor,
    tokenize_examples,
    train_reward_weighted,
)
from tests.fixtures.models import smollm2_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return smollm2_tokenizer()


def _tiny(tokenizer: Any, seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    return tiny_llama(tokenizer, seed, tie_word_embeddings=tie)


@pytest.fixture(scope="module")
def examples(tokenizer: Any) -> list[TrainExample]:
    questions = [
        f"What is {a} + {b}?" + " Think." * (a % 5) for a, b in zip(range(10, 18), range(1, 9), strict=True)
    ]
    return [
        TrainExample(render_prompt(tokenizer, q), f"The answer is {i}." + " Yes." * (i % 4), 0.5 + (i % 3))
        for i, q in enumerate(questions)
    ]


def _assert_same_weights(a: Any, b: Any, atol: float = 0.0) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if atol == 0.0:
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=name)


# --- schedule and data order ------------------------------------------------------------------------------


def test_lr_schedules_warm_up_then_decay_to_the_floor() -> None:
    cos = TrainParams(lr_schedule="cosine", warmup_ratio=0.1, min_lr_ratio=0.1)
    assert [lr_factor(s, 100, cos) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_factor(10, 100, cos) == pytest.approx(1.0)
    assert lr_factor(55, 100, cos) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert lr_factor(100, 100, cos) == pytest.approx(0.1)
    lin = TrainParams(lr_schedule="linear")
    assert [lr_factor(s, 4, lin) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert {lr_factor(s, 50, TrainParams()) for s in range(50)} == {1.0}  # constant, no warmup


def test_bad_params_are_refused_with_a_reason() -> None:
    for kwargs, words in [
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"learning_rate": -1e-5}, "learning_rate must be > 0"),
        ({"batch_size": 8, "micro_batch_size": 3}, "must divide batch_size"),
        ({"max_steps": 0}, "max_steps"),
        ({"lora_r": 0}, "lora_r"),
    ]:
        with pytest.raises(ValueError, match=words):
            TrainParams(**kwargs)  # type: ignore[arg-type]


def test_epoch_order_covers_every_example_once_and_bucketing_groups_lengths() -> None:
    lengths = [(i * 37) % 101 + 5 for i in range(100)]
    for bucketing in (False, True):
        steps = epoch_steps(lengths, 8, seed=3, epoch=1, bucketing=bucketing)
        assert sorted(i for s in steps for i in s) == list(range(100))
        assert [len(s) for s in steps[:-1]] == [8] * 12 and len(steps[-1]) == 4
        assert steps == epoch_steps(lengths, 8, seed=3, epoch=1, bucketing=bucketing)  # deterministic
    spread = [
        max(lengths[i] for i in s) - min(lengths[i] for i in s) for s in epoch_steps(lengths, 8, 3, 1, True)
    ]
    plain = [max(lengths[i] for i in s) - min(lengths[i] for i in s) for s in epoch_steps(lengths, 8, 3, 1)]
    assert sum(spread) < sum(plain) / 3


def test_max_steps_cycles_epochs(tokenizer: Any, examples: list[TrainExample]) -> None:
    seen: list[tuple[int, int]] = []
    stats = train_reward_weighted(
        _tiny(tokenizer),
        tokenizer,
        examples[:5],
        TrainParams(batch_size=2, max_steps=7, learning_rate=1e-3),
        device="cpu",
        on_step=lambda r: seen.append((r.step, r.total)),
    )
    assert stats.steps == 7 and stats.epochs == 3 and seen[-1] == (7, 7)  # 3 steps per epoch


# --- accumulation and packing ----------------------------------------------------------------------------


@pytest.mark.parametrize("normalisation", ["token", "sample"])
def test_accumulating_2x4_equals_a_batch_of_8(
    tokenizer: Any, examples: list[TrainExample], normalisation: str
) -> None:
    base = _tiny(tokenizer, seed=1)
    runs = []
    for micro in (None, 4, 1):
        model = copy.deepcopy(base)
        params = TrainParams(
            batch_size=8,
            micro_batch_size=micro,
            epochs=2,
            learning_rate=1e-3,
            loss_normalisation=normalisation,  # type: ignore[arg-type]
        )
        stats = train_reward_weighted(model, tokenizer, examples, params, device="cpu")
        runs.append((model, stats))
    for model, stats in runs[1:]:
        _assert_same_weights(runs[0][0], model, atol=2e-5)
        assert stats.loss_last == pytest.approx(runs[0][1].loss_last, rel=1e-4)
    assert not torch.equal(runs[0][0].lm_head.weight, base.lm_head.weight)


def test_packed_rows_give_the_logits_of_each_sample_alone(
    tokenizer: Any, examples: list[TrainExample]
) -> None:
    model = _tiny(tokenizer).eval()
    features = tokenize_examples(tokenizer, examples[:6], 512)
    batch = pack(features, tokenizer.pad_token_id, row_len=160)
    assert batch["input_ids"].shape[0] > 1  # several rows, several samples per row
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        rows = pack_rows([len(f["input_ids"]) for f in features], 160)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                ids = features[i]["input_ids"]
                alone = model(input_ids=torch.tensor([ids])).logits[0]
                torch.testing.assert_close(logits[r, at : at + len(ids)], alone, atol=1e-4, rtol=1e-4)
                at += len(ids)
    # the packed loss is the padded loss, for both normalisations
    for mode in ("token", "sample"):
        with torch.no_grad():
            padded = batch_loss(model, collate(features, tokenizer.pad_token_id), mode, "cpu")
            packed = batch_loss(model, batch, mode, "cpu")
        assert float(packed) == pytest.approx(float(padded), rel=1e-5)


def test_packing_trains_like_padding(tokenizer: Any, examples: list[TrainExample]) -> None:
    base = _tiny(tokenizer, seed=2)
    models = []
    for packing in (False, True):
        model = copy.deepcopy(base)
        params = TrainParams(batch_size=8, epochs=2, learning_rate=1e-3, packing=packing, max_seq_len=256)
        train_reward_weighted(model, tokenizer, examples, params, device="cpu")
        models.append(model)
    _assert_same_weights(models[0], models[1], atol=2e-5)


def test_packing_check_catches_a_model_that_lets_samples_attend_to_each_other(tokenizer: Any) -> None:
    inner = _tiny(tokenizer)
    check_packing(inner, "cpu", len(tokenizer))  # the real model passes

    class Contaminating(
        torch.nn.Module
    ):  # passes a 2-D mask of ones: transformers' boundary detection is off
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)

    with pytest.raises(
        ValueError, match=r"packed samples would attend to each other.*training\.packing: false"
    ):
        check_packing(Contaminating(), "cpu", len(tokenizer))


def test_gradient_checkpointing_changes_nothing_but_memory(
    tokenizer: Any, examples: list[TrainExample]
) -> None:
    base = _tiny(tokenizer, seed=3)
    models = []
    for ckpt in (False, True):
        model = copy.deepcopy(base)
        params = TrainParams(batch_size=4, max_steps=3, learning_rate=1e-3, gradient_checkpointing=ckpt)
        train_reward_weighted(model, tokenizer, examples, params, device="cpu")
        assert not model.is_activation_checkpointing
        models.append(model)
    _assert_same_weights(models[0], models[1], atol=1e-6)


# --- LoRA -------------------------------------------------------------------------------------------------


def test_lora_refuses_target_modules_the_model_lacks(tokenizer: Any, examples: list[TrainExample]) -> None:
    model = _tiny(tokenizer)
    assert {"q_proj", "v_proj", "down_proj", "lm_head"} <= set(linear_module_names(model))
    check_target_modules(model, ["q_proj", "v_proj"])
    with pytest.raises(ValueError, match=r"\['query', 'value'\] do not exist in LlamaForCausalLM.*'q_proj'"):
        check_target_modules(model, ["q_proj", "query", "value"])
    before = copy.deepcopy(model)
    params = TrainParams(method="lora", lora_target_modules=("qkv",))
    with pytest.raises(ValueError, match=r"training\.lora\.target_modules"):
        train_reward_weighted(model, tokenizer, examples, params, device="cpu")
    _assert_same_weights(before, model)


def test_lora_trains_and_merges_into_a_plain_checkpoint(
    tmp_path: Path, tokenizer: Any, examples: list[TrainExample]
) -> None:
    pytest.importorskip("peft", reason="LoRA needs peft (a dependency in pyproject.toml)")
    base = _tiny(tokenizer, seed=4, tie=True)
    model = copy.deepcopy(base)
    params = TrainParams(method="lora", lora_r=4, learning_rate=5e-3, batch_size=4, epochs=2, packing=True)
    stats = train_reward_weighted(model, tokenizer, examples, params, device="cpu")
    assert stats.method == "lora" and stats.loss_last < stats.loss_first
    assert not any("lora" in name for name, _ in model.named_modules())  # merged: a plain Llama again
    assert type(model) is LlamaForCausalLM and all(p.requires_grad for p in model.parameters())
    assert not torch.equal(
        model.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
    )
    assert torch.equal(
        model.model.layers[0].input_layernorm.weight, base.model.layers[0].input_layernorm.weight
    )
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")  # the sampler loads it like any checkpoint
    loaded, _ = load_for_inference(tmp_path / "ckpt", "cpu")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


# --- resume -----------------------------------------------------------------------------------------------


def _states_of(
    tokenizer: Any, model: Any, examples: list[TrainExample], params: TrainParams, keep: Path, **kwargs: Any
) -> Any:
    """Train, keeping a copy of every state handed to on_state under ``keep/step-<n>``."""

    def on_state(step: int, src: Path) -> None:
        shutil.copytree(src, keep / f"step-{step}")

    return train_reward_weighted(
        model, tokenizer, examples, params, device="cpu", on_state=on_state, **kwargs
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_resumed_run_reaches_the_weights_of_an_uninterrupted_one(
    tmp_path: Path, tokenizer: Any, examples: list[TrainExample], method: str
) -> None:
    if method == "lora":
        pytest.importorskip("peft", reason="LoRA needs peft (a dependency in pyproject.toml)")
    base = _tiny(tokenizer, seed=5)
    params = TrainParams(
        method=method,  # type: ignore[arg-type]
        lora_dropout=0.3,  # dropout draws random numbers: the RNG state must be restored too
        learning_rate=2e-3,
        batch_size=4,
        micro_batch_size=2,
        epochs=3,
        lr_schedule="cosine",
        warmup_ratio=0.2,
        checkpoint_every_steps=2,
    )
    whole = copy.deepcopy(base)
    full_stats = _states_of(tokenizer, whole, examples, params, tmp_path / "whole")
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == [
        "step-2",
        "step-4",
    ]  # none at the end (6)
    # "killed" after step 5: its last state is step 4, and a fresh process resumes from there
    killed = copy.deepcopy(base)
    stops = iter(range(100))
    _states_of(tokenizer, killed, examples, params, tmp_path / "killed", should_stop=lambda: next(stops) >= 4)
    resumed = copy.deepcopy(base)
    stats = train_reward_weighted(
        resumed, tokenizer, examples, params, device="cpu", resume_from=tmp_path / "killed" / "step-4"
    )
    assert stats.resumed_from_step == 4 and stats.steps == full_stats.steps == 6
    assert stats.loss_first == full_stats.loss_first and stats.loss_last == pytest.approx(
        full_stats.loss_last
    )
    _assert_same_weights(whole, resumed)


def test_a_state_of_other_inputs_is_not_resumed(
    tmp_path: Path, tokenizer: Any, examples: list[TrainExample]
) -> None:
    params = TrainParams(batch_size=4, epochs=2, checkpoint_every_steps=2, learning_rate=1e-3)
    _states_of(tokenizer, _tiny(tokenizer), examples, params, tmp_path)
    other = TrainParams(batch_size=4, epochs=2, learning_rate=2e-3)
    stats = train_reward_weighted(
        _tiny(tokenizer), tokenizer, examples, other, device="cpu", resume_from=tmp_path / "step-2"
    )
    assert stats.resumed_from_step == 0 and stats.steps == 4
    assert math.isfinite(stats.loss_first)
    assert IGNORE == -100


def test_logits_on_target_positions_only_give_the_full_forward_loss(
    tokenizer: Any, examples: list[TrainExample], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.llm import loss as loss_module

    model = _tiny(tokenizer, seed=6)
    assert loss_module.split_head(model) is not None  # Llama takes the fast path
    features = tokenize_examples(tokenizer, examples, 512)
    batches = [collate(features, tokenizer.pad_token_id), pack(features, tokenizer.pad_token_id, 200)]
    fast = [batch_loss(model, b, "sample", "cpu") for b in batches]
    fast_grads = torch.autograd.grad(fast[1], model.lm_head.weight)[0]
    monkeypatch.setattr(loss_module, "HEAD_ONLY_MODEL_TYPES", frozenset())  # the model's own forward
    assert loss_module.split_head(model) is None
    slow = [batch_loss(model, b, "sample", "cpu") for b in batches]
    slow_grads = torch.autograd.grad(slow[1], model.lm_head.weight)[0]
    for f, s in zip(fast, slow, strict=True):
        assert float(f) == pytest.approx(float(s), rel=1e-5)
    torch.testing.assert_close(fast_grads, slow_grads, atol=1e-6, rtol=1e-4)


def test_packed_rows_are_few_and_balanced() -> None:
    lengths = [100, 90, 80, 80, 70, 60, 60, 40, 30]  # 610 tokens
    rows = pack_rows(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    sizes = [sum(lengths[i] for i in row) for row in rows]
    assert len(rows) == 2 and max(sizes) <= 310  # not 512 + 98: the batch is as wide as its longest row
    assert all(sum(lengths[i] for i in row) <= 100 for row in pack_rows(lengths, 100))
    with pytest.raises(ValueError, match="does not fit a packed row of 50"):
        pack_rows(lengths, 50)
