"""Unit tests of shared.llm on a TINY random-init Llama (never the real model) with the SmolLM2 tokenizer.

Greedy references come from ``model.generate`` on one prompt at a time: that checks left padding, batch
order and KV-cache sharing of our own decode loop against transformers itself.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DistilBertConfig, DistilBertModel, LlamaForCausalLM

from shared.llm import generation, sampling
from shared.llm.checkpoint import (
    CheckpointError,
    import_checkpoint,
    load_for_inference,
    load_for_training,
    pick_device,
    save_checkpoint,
)
from shared.llm.generation import (
    GenerationParams,
    TransformersGenerator,
    encode_prompt,
    plan_batches,
    render_prompt,
)
from shared.llm.training import (
    IGNORE,
    StepReport,
    TrainExample,
    TrainParams,
    batch_loss,
    collate,
    tokenize_examples,
    train_reward_weighted,
    weighted_nll,
)
from shared.models import BUILTIN_MODELS, ModelNotFound, resolve_model_source
from shared.seeds import sample_seeds
from tests.fixtures.models import smollm2_tokenizer, tiny_llama

MESSAGES = [
    "What is 12 + 3?",
    "Hi",
    "Tell me a long story about a dragon who learns arithmetic and counts every coin in the hoard.",
    "What is 45 + 6? End with 'The answer is N.'",
]


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    # Loading only the tokenizer from the shipped GGUF takes ~3 s and needs no network.
    tok = smollm2_tokenizer()
    tok.padding_side = "left"
    return tok


def _tiny_model(tokenizer: Any, seed: int = 0) -> LlamaForCausalLM:
    # A large init range gives peaked logits, so greedy argmax never hinges on float noise.
    return tiny_llama(tokenizer, seed, initializer_range=0.5, tie_word_embeddings=False).eval()


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> LlamaForCausalLM:
    return _tiny_model(tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer: Any) -> list[str]:
    return [render_prompt(tokenizer, m) for m in MESSAGES]


def _reference_ids(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy continuation of one prompt by transformers' own generate (no padding, no batching)."""
    ids = torch.tensor([encode_prompt(tokenizer, prompt)])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
    return [int(t) for t in out[0, ids.shape[1] :]]


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=True))


# --- checkpoint -------------------------------------------------------------------------------------------


def test_resolve_builtin_finds_the_gguf_and_names_known_aliases() -> None:
    assert resolve_model_source("builtin:smollm2-135m-instruct").is_file()
    with pytest.raises(ModelNotFound, match="smollm2-135m-instruct"):
        resolve_model_source("builtin:no-such-model")


def test_import_round_trips_an_hf_dir_exactly(tmp_path: Path, model: Any, tokenizer: Any) -> None:
    src = tmp_path / "src"
    model.save_pretrained(src)
    tokenizer.save_pretrained(src)
    info = import_checkpoint(src, tmp_path / "out")
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert info["vocab_size"] == len(tokenizer) and info["max_position_embeddings"] == 256
    loaded, tok = load_for_inference(tmp_path / "out", "cpu")
    assert not loaded.training and loaded.dtype == torch.float32
    reference = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == (
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    )
    trainable, train_tok = load_for_training(tmp_path / "out", "cpu")
    assert trainable.training and trainable.dtype == torch.float32 and train_tok.padding_side == "right"


def test_import_rejects_what_is_not_a_causal_lm(tmp_path: Path, tokenizer: Any) -> None:
    encoder = tmp_path / "distilbert"
    DistilBertModel(
        DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    ).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    with pytest.raises(CheckpointError, match="not a causal LM checkpoint"):
        import_checkpoint(encoder, tmp_path / "out1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError):
        import_checkpoint(tmp_path / "empty", tmp_path / "out2")
    with pytest.raises(CheckpointError):
        import_checkpoint(tmp_path / "missing.gguf", tmp_path / "out3")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_save_checkpoint_refuses_a_non_empty_dir(tmp_path: Path, model: Any, tokenizer: Any) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not empty"):
        save_checkpoint(model, tokenizer, tmp_path / "out")
    save_checkpoint(model, tokenizer, tmp_path / "fresh")
    assert (tmp_path / "fresh" / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left behind


def test_pick_device() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            pick_device("cuda")


def test_builtin_aliases_are_package_and_gguf() -> None:
    assert all(name.endswith(".gguf") for _, name in BUILTIN_MODELS.values())


# --- generation -------------------------------------------------------------------------------------------


def test_render_prompt(tokenizer: Any) -> None:
    assert render_prompt(tokenizer, "raw text", chat=False) == "raw text"
    text = render_prompt(tokenizer, "What?", system="Be brief.")
    assert "Be brief." in text and "What?" in text and text.endswith("<|im_start|>assistant\n")


def test_params_validation() -> None:
    with pytest.raises(ValueError, match="greedy"):
        GenerationParams(n=2, greedy=True)
    with pytest.raises(ValueError, match="empty string"):
        GenerationParams(stop_regex=(r"\d*",))
    with pytest.raises(ValueError):
        GenerationParams(temperature=0.0)


def test_plan_batches_respects_bounds_and_sorts_by_length() -> None:
    lengths = [5, 50, 7, 30, 6]
    plan = plan_batches(lengths, n=2, max_new_tokens=10, max_sequences=4, max_tokens=10_000)
    assert sorted(i for batch in plan for i in batch) == list(range(5))
    assert all(len(batch) * 2 <= 4 for batch in plan)
    assert [lengths[i] for batch in plan for i in batch] == sorted(lengths)
    # a prompt whose n samples alone exceed the bound still runs, alone
    assert plan_batches([5, 6], n=8, max_new_tokens=10, max_sequences=4, max_tokens=10) == [[0], [1]]


@pytest.mark.parametrize("chat", [True, False])  # chat prompts share a system-prompt prefix; raw ones don't
@pytest.mark.parametrize("max_batch_sequences", [1, 3, 64])
def test_greedy_equals_unbatched_transformers_generate(
    model: Any, tokenizer: Any, max_batch_sequences: int, chat: bool
) -> None:
    prompts = [render_prompt(tokenizer, m, chat=chat) for m in MESSAGES]
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    assert (generation._shared_prefix_len(ids) > 0) == chat
    generator = TransformersGenerator(model, tokenizer, device="cpu", max_batch_sequences=max_batch_sequences)
    results = generator.generate(prompts, GenerationParams(greedy=True, max_new_tokens=12))
    assert [len(r) for r in results] == [1] * len(prompts)
    for prompt, (completion,) in zip(prompts, results, strict=True):
        reference = _reference_ids(model, tokenizer, prompt, 12)
        assert completion.text == _decode(tokenizer, reference)
        assert completion.num_tokens == len(reference) == 12
        assert completion.finish_reason == "length"


def test_sampling_shape_order_and_seed(model: Any, tokenizer: Any, prompts: list[str]) -> None:
    generator = TransformersGenerator(model, tokenizer, device="cpu", max_batch_sequences=6)
    params = GenerationParams(n=3, temperature=1.0, top_k=20, top_p=0.9, max_new_tokens=8, seed=7)
    progress: list[int] = []
    first = generator.generate(prompts, params, on_progress=progress.append)
    assert [len(r) for r in first] == [3] * len(prompts)
    assert progress[-1] == 3 * len(prompts) and progress == sorted(progress)
    assert generator.generate(prompts, params) == first
    other = generator.generate(prompts, GenerationParams(**{**params.__dict__, "seed": 8}))
    assert other != first
    texts = {c.text for r in first for c in r}
    assert len(texts) > len(prompts)  # the n samples of a prompt differ


@pytest.mark.parametrize("top_k,top_p", [(20, 0.9), (0, 1.0), (0, 0.8)])  # the three draw paths
def test_a_sample_is_the_same_in_any_round_shard_or_batch(
    model: Any, tokenizer: Any, prompts: list[str], top_k: int, top_p: float
) -> None:
    """(problem, index) decides a sample: fixed K = adaptive rounds = any sharding and batching."""
    ids = ["p0", "p1", "p2", "p3"]
    params = GenerationParams(n=8, temperature=1.0, top_k=top_k, top_p=top_p, max_new_tokens=10)
    half = GenerationParams(**{**params.__dict__, "n": 4})
    batched = TransformersGenerator(model, tokenizer, device="cpu")  # all 32 rows in one batch
    fixed = batched.generate(prompts, params, seeds=sample_seeds(5, ids, 8))
    assert all(len({c.text for c in per}) > 1 for per in fixed)  # real draws, not a peaked argmax
    # adaptive: round 1 draws indices 0-3 of every problem, round 2 indices 4-7 of two of them
    assert batched.generate(prompts, half, seeds=sample_seeds(5, ids, 4)) == [per[:4] for per in fixed]
    again = batched.generate([prompts[3], prompts[1]], half, seeds=sample_seeds(5, ["p3", "p1"], 4, 4))
    assert again == [fixed[3][4:], fixed[1][4:]]
    # other shards and batches: one prompt per batch (no shared-prefix pass), reversed order
    alone = TransformersGenerator(model, tokenizer, device="cpu", max_batch_sequences=3)
    assert alone.generate(prompts[::-1], params, seeds=sample_seeds(5, ids[::-1], 8)) == fixed[::-1]
    assert batched.generate(prompts, params, seeds=sample_seeds(6, ids, 8)) != fixed  # the job seed counts


def test_default_seeds_follow_the_prompt_position_and_bad_seeds_are_refused(
    model: Any, tokenizer: Any, prompts: list[str]
) -> None:
    generator = TransformersGenerator(model, tokenizer, device="cpu")
    params = GenerationParams(n=2, temperature=1.0, max_new_tokens=6, seed=3)
    assert generator.generate(prompts, params) == generator.generate(
        prompts, params, seeds=sample_seeds(3, range(len(prompts)), 2)
    )
    with pytest.raises(ValueError, match="n=2 seeds for each of the 4 prompts"):
        generator.generate(prompts, params, seeds=[[1, 2]] * 3)
    with pytest.raises(ValueError, match="n=2 seeds"):
        generator.generate(prompts, params, seeds=[[1, 2, 3]] * 4)


def _seeds(rows: int) -> torch.Tensor:
    return torch.tensor(sample_seeds(0, ["p"], rows)[0])


def test_sampling_keeps_the_temperature_top_k_top_p_distribution() -> None:
    logits = torch.tensor([2.0, 0.5, 1.0, -1.0, 1.5, 0.0])
    params = GenerationParams(temperature=0.5, top_k=4, top_p=0.9)
    rows = 20_000
    drawn = torch.cat([sampling.next_tokens(logits.repeat(rows, 1), params, _seeds(rows), t) for t in (0, 7)])
    # expected by masking, independently: top-4 = tokens 0, 4, 2, 1; top-p 0.9 drops token 1
    top4 = (logits[[0, 4, 2, 1]] / 0.5).softmax(-1)
    assert top4[:2].sum() < 0.9 <= top4[:3].sum()  # so the third stays and the fourth goes
    expected = torch.zeros(6)
    kept = torch.tensor([0, 4, 2])
    expected[kept] = (logits[kept] / 0.5).softmax(-1)
    observed = torch.bincount(drawn, minlength=6).float() / len(drawn)
    assert observed[[1, 3, 5]].sum() == 0
    assert torch.allclose(observed, expected, atol=0.01), (observed, expected)


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_the_two_level_race_over_the_vocabulary_keeps_the_distribution(top_p: float) -> None:
    # 600 ids: two full blocks of 256 and a padded one; the mass is spread over all three blocks
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(600, generator=gen) * 2
    params = GenerationParams(temperature=0.8, top_k=0, top_p=top_p)
    rows = 40_000
    drawn = sampling.next_tokens(logits.repeat(rows, 1), params, _seeds(rows), 3)
    probs = (logits / 0.8).softmax(-1)
    if top_p < 1:
        order = probs.argsort(descending=True)
        ranked = probs[order]
        kept = order[(ranked.cumsum(-1) - ranked) < top_p]
        probs = torch.zeros_like(probs).index_put_((kept,), probs[kept])
        probs /= probs.sum()
    observed = torch.bincount(drawn, minlength=600).float() / rows
    assert observed[probs == 0].sum() == 0  # the top-p cut holds
    blocks = [slice(0, 256), slice(256, 512), slice(512, 600)]
    assert all(abs(observed[b].sum() - probs[b].sum()) < 0.01 for b in blocks)
    heavy = probs.argsort(descending=True)[:5]
    assert torch.allclose(observed[heavy], probs[heavy], atol=0.01), (observed[heavy], probs[heavy])
    assert 0.5 * (observed - probs).abs().sum() < 0.05  # total variation, mostly sampling noise


def test_a_draw_depends_on_the_winner_alone_not_on_the_other_candidates() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(1000, 40, generator=gen)
    ids = torch.randperm(5000, generator=gen)[:40].repeat(1000, 1)
    keys = sampling._step_keys(_seeds(1000), 0)
    winners = ids.gather(1, sampling._race(scores, ids, keys)[:, None]).squeeze(1)
    flip = torch.arange(39, -1, -1)  # the candidates in another order
    assert torch.equal(
        ids[:, flip].gather(1, sampling._race(scores[:, flip], ids[:, flip], keys)[:, None]).squeeze(1),
        winners,
    )
    # a candidate that did not win leaves (e.g. moved across a top-k cut by rounding): no row changes
    loser = (ids != winners[:, None]).float().argmax(dim=1, keepdim=True)
    fewer = scores.scatter(1, loser, float("-inf"))
    assert torch.equal(ids.gather(1, sampling._race(fewer, ids, keys)[:, None]).squeeze(1), winners)
    other_step = ids.gather(1, sampling._race(scores, ids, sampling._step_keys(_seeds(1000), 1))[:, None])
    assert (other_step.squeeze(1) != winners).float().mean() > 0.5  # every step draws afresh


def _first_stop(tokenizer: Any, ids: list[int], found: Any) -> tuple[str, int]:
    """Streaming semantics, computed naively: the shortest prefix whose text holds a match, cut there."""
    for k in range(1, len(ids) + 1):
        text = _decode(tokenizer, ids[:k])
        if (end := found(text)) is not None:
            return text[:end], k
    raise AssertionError("no stop in the reference")


@pytest.mark.parametrize("tail_tokens", [32, 1])  # 1: the per-step check misses; the final cut must not
def test_stop_string_and_regex_cut_exactly(
    model: Any, tokenizer: Any, prompts: list[str], tail_tokens: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation, "_TAIL_TOKENS", tail_tokens)
    reference = _reference_ids(model, tokenizer, prompts[2], 30)
    words = [w for w in re.findall(r"[A-Za-z]{3,}", _decode(tokenizer, reference[5:]))]
    assert words, "the tiny model's greedy output should contain a word"
    stop = words[0]
    generator = TransformersGenerator(model, tokenizer, device="cpu")
    (completion,) = generator.generate(
        [prompts[2]], GenerationParams(greedy=True, max_new_tokens=30, stop=(stop,))
    )[0]
    text, k = _first_stop(tokenizer, reference, lambda t: i + len(stop) if (i := t.find(stop)) >= 0 else None)
    assert completion == type(completion)(text=text, num_tokens=k, finish_reason="stop")
    assert completion.text.endswith(stop) and completion.text.count(stop) == 1

    pattern = re.escape(stop[:2]) + r"[a-z]"
    (by_regex,) = generator.generate(
        [prompts[2]], GenerationParams(greedy=True, max_new_tokens=30, stop_regex=(pattern,))
    )[0]
    text, k = _first_stop(tokenizer, reference, lambda t: m.end() if (m := re.search(pattern, t)) else None)
    assert (by_regex.text, by_regex.num_tokens, by_regex.finish_reason) == (text, k, "stop")
    assert re.search(pattern + "$", by_regex.text)


def test_eos_ends_a_completion(model: Any, tokenizer: Any, prompts: list[str]) -> None:
    reference = _reference_ids(model, tokenizer, prompts[0], 12)
    # Make EOS's logit twice that of the 4th greedy token: wherever greedy chose that token, it now ends.
    target = reference[3]
    eos_model = copy.deepcopy(model)
    with torch.no_grad():
        eos_model.lm_head.weight[tokenizer.eos_token_id] = 2 * eos_model.lm_head.weight[target]
    first = reference.index(target)
    generator = TransformersGenerator(eos_model, tokenizer, device="cpu")
    (completion,) = generator.generate([prompts[0]], GenerationParams(greedy=True, max_new_tokens=12))[0]
    assert completion.finish_reason == "eos"
    assert completion.num_tokens == first + 1  # EOS counted
    assert completion.text == _decode(tokenizer, reference[:first])


def test_max_new_tokens_is_respected(model: Any, tokenizer: Any, prompts: list[str]) -> None:
    generator = TransformersGenerator(model, tokenizer, device="cpu")
    results = generator.generate(prompts, GenerationParams(n=4, max_new_tokens=5, temperature=1.0))
    flat = [c for r in results for c in r]
    assert all(c.num_tokens <= 5 for c in flat)
    assert all(c.num_tokens == 5 for c in flat if c.finish_reason == "length")
    assert any(c.finish_reason == "length" for c in flat)


# --- training ---------------------------------------------------------------------------------------------


def test_tokenize_examples_masks_the_prompt_and_appends_eos(tokenizer: Any, prompts: list[str]) -> None:
    examples = [TrainExample(prompts[0], "The answer is 15."), TrainExample(prompts[1], "\nHello there", 0.5)]
    features = tokenize_examples(tokenizer, examples, max_seq_len=512)
    for ex, f in zip(examples, features, strict=True):
        prompt_ids = encode_prompt(tokenizer, ex.prompt)
        completion_ids = tokenizer(ex.completion, add_special_tokens=False)["input_ids"]
        assert f["input_ids"] == prompt_ids + completion_ids + [tokenizer.eos_token_id]
        assert f["labels"] == [IGNORE] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]
        assert f["weight"] == ex.weight
    limit = len(features[0]["input_ids"])
    long_example = TrainExample(prompts[2], "x")  # the longest prompt
    with pytest.raises(
        ValueError, match=rf"1 of 2 examples exceed max_seq_len={limit}.*TrainParams.max_seq_len"
    ):
        tokenize_examples(tokenizer, [examples[0], long_example], max_seq_len=limit)


def test_loss_is_the_completion_nll(model: Any, tokenizer: Any, prompts: list[str]) -> None:
    examples = [TrainExample(prompts[0], "The answer is 15."), TrainExample(prompts[2], "Once upon a time")]
    features = tokenize_examples(tokenizer, examples, 512)
    batch = collate(features, tokenizer.pad_token_id)
    with torch.no_grad():
        loss = batch_loss(model, batch, "token", "cpu")
        nlls: list[float] = []
        for f in features:  # one at a time, no padding, full logits
            logits = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            logp = logits.log_softmax(-1)
            nlls += [
                -float(logp[t - 1, f["input_ids"][t]]) for t, lab in enumerate(f["labels"]) if lab != IGNORE
            ]
    assert float(loss) == pytest.approx(sum(nlls) / len(nlls), rel=1e-4)


def test_weight_zero_contributes_nothing(model: Any, tokenizer: Any, prompts: list[str]) -> None:
    kept = TrainExample(prompts[0], "The answer is 15.")
    dropped = TrainExample(prompts[2], "Once upon a time there was", weight=0.0)
    for mode in ("token", "sample"):
        with torch.no_grad():
            alone = batch_loss(model, collate(tokenize_examples(tokenizer, [kept], 512), 2), mode, "cpu")
            both = batch_loss(
                model, collate(tokenize_examples(tokenizer, [kept, dropped], 512), 2), mode, "cpu"
            )
        assert float(both) == pytest.approx(float(alone), rel=1e-5)
    # all-zero weights: loss 0, and training on them leaves every weight untouched
    trained = copy.deepcopy(model)
    stats = train_reward_weighted(
        trained, tokenizer, [dropped], TrainParams(learning_rate=1e-2), device="cpu"
    )
    assert stats.loss_first == 0.0
    for (name, before), after in zip(model.state_dict().items(), trained.state_dict().values(), strict=True):
        assert torch.equal(before, after), name


def test_weighted_nll_normalisations() -> None:
    logits = torch.zeros(2, 4, 3)  # uniform: every token nll = ln 3
    labels = torch.tensor([[IGNORE, 1, 2, IGNORE], [IGNORE, 0, IGNORE, IGNORE]])
    weights = torch.tensor([1.0, 3.0])
    assert float(weighted_nll(logits, labels, weights, "token")) == pytest.approx(math.log(3))
    assert float(weighted_nll(logits, labels, weights, "sample")) == pytest.approx(math.log(3))
    logits[1, 0, 0] = 5.0  # the second sample's only token becomes likely: its weight shows
    token = float(weighted_nll(logits, labels, weights, "token"))
    sample = float(weighted_nll(logits, labels, weights, "sample"))
    nll1 = -float(torch.log_softmax(logits[1, 0], -1)[0])
    assert token == pytest.approx((2 * math.log(3) + 3 * nll1) / (2 + 3))
    assert sample == pytest.approx((math.log(3) + 3 * nll1) / (1 + 3))


def test_training_overfits_a_tiny_dataset(tokenizer: Any, prompts: list[str]) -> None:
    model = _tiny_model(tokenizer, seed=1).train()
    examples = [TrainExample(p, f"The answer is {i}.") for i, p in enumerate(prompts)]
    steps: list[StepReport] = []
    params = TrainParams(learning_rate=3e-3, epochs=15, batch_size=2, warmup_ratio=0.1)
    stats = train_reward_weighted(model, tokenizer, examples, params, device="cpu", on_step=steps.append)
    assert stats.steps == len(steps) == 30 and (steps[-1].step, steps[-1].total) == (30, 30)
    # what the metrics and the trackers get per step: the rate used, the tokens, the model's size
    assert steps[0].learning_rate < steps[5].learning_rate <= 3e-3  # warmup (3 steps) ramps up
    assert sum(r.tokens for r in steps) == stats.tokens and all(r.seconds > 0 for r in steps)
    assert {r.parameters for r in steps} == {sum(p.numel() for p in model.parameters())}
    assert steps[0].loss == stats.loss_first and steps[-1].loss == stats.loss_last
    assert stats.examples == 4 and stats.epochs == 15 and stats.tokens > 0
    assert stats.loss_last < stats.loss_first / 2


def test_training_stops_when_asked_and_refuses_nothing(
    model: Any, tokenizer: Any, prompts: list[str]
) -> None:
    trained = copy.deepcopy(model)
    examples = [TrainExample(p, "ok") for p in prompts]
    stats = train_reward_weighted(
        trained, tokenizer, examples, TrainParams(batch_size=1), device="cpu", should_stop=lambda: True
    )
    assert stats.steps == 1
    with pytest.raises(ValueError, match="no training examples"):
        train_reward_weighted(trained, tokenizer, [], TrainParams(), device="cpu")


def test_a_stop_seen_only_in_the_tail_is_confirmed_on_the_whole_text(
    model: Any, tokenizer: Any, prompts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _reference_ids(model, tokenizer, prompts[2], 20)
    full = _decode(tokenizer, reference)
    later = [w for w in re.findall(r"[A-Za-z]{3,}", full) if not full.startswith(w)]
    monkeypatch.setattr(generation, "_TAIL_TOKENS", 1)
    # \A matches at the start of a one-token tail, never in the whole text: no stop may be reported
    params = GenerationParams(greedy=True, max_new_tokens=20, stop_regex=(r"\A" + re.escape(later[-1]),))
    (completion,) = TransformersGenerator(model, tokenizer, device="cpu").generate([prompts[2]], params)[0]
    assert (completion.text, completion.num_tokens, completion.finish_reason) == (full, 20, "length")
