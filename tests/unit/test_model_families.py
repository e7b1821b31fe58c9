"""The model families users bring, end to end on tiny random-init models built from each family's
real transformers config class: import -> sample -> M-step (full and LoRA) -> checkpoint -> reload
-> sample the same tokens, stored in bf16 and in fp32.

Only the weights are fake (random, two layers of width 32). The tokenizer is SmolLM2's real one,
given what distinguishes the families' tokenizers: no pad token (Llama 3, Mistral), and chat
templates in each family's shape, with a system role or one that rejects it (Gemma, Mistral).
Tied embeddings (Qwen2.5, Gemma) and untied ones (Llama 3, Mistral, Phi-3) both occur.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from shared.llm.checkpoint import import_checkpoint, load_for_inference, load_for_training, save_checkpoint
from shared.llm.generation import GenerationParams, TransformersGenerator, render_prompt
from shared.llm.training import TrainExample, TrainParams, pad_id_of, tokenize_examples, train_features
from tests.fixtures.models import smollm2_tokenizer

# Chat templates in each family's shape (written for these tests): role headers, end markers, and
# whether a system message is accepted.
HEADERS = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_SYSTEM_TURNS = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
NO_SYSTEM_INST = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('Only user and assistant roles') }}"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}</s>{% endif %}"
    "{% endfor %}"
)
SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 256,
}
FAMILIES: dict[str, tuple[str, dict[str, Any], str, bool]] = {
    # name: (config class, config fields, chat template, tokenizer has a pad token)
    "llama3": ("LlamaConfig", {"tie_word_embeddings": False, "rope_theta": 500000.0}, HEADERS, False),
    "qwen2.5": ("Qwen2Config", {"tie_word_embeddings": True}, CHATML, True),
    "qwen3": ("Qwen3Config", {"tie_word_embeddings": True, "head_dim": 16}, CHATML, True),
    "gemma2": (
        "Gemma2Config",
        {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 128},
        NO_SYSTEM_TURNS,
        True,
    ),
    "mistral": (
        "MistralConfig",
        {"tie_word_embeddings": False, "sliding_window": None},
        NO_SYSTEM_INST,
        False,
    ),
    "phi3": ("Phi3Config", {"tie_word_embeddings": False, "pad_token_id": None}, HEADERS, True),
}


@pytest.fixture(scope="module")
def base_tokenizer() -> Any:
    return smollm2_tokenizer()


def _family(name: str, base_tokenizer: Any) -> tuple[Any, Any]:
    cls_name, fields, template, has_pad = FAMILIES[name]
    tokenizer = copy.deepcopy(base_tokenizer)
    tokenizer.chat_template = template
    if not has_pad:
        tokenizer.pad_token = None
    fields = {**SMALL, **fields}
    config = getattr(transformers, cls_name)(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **{"pad_token_id": tokenizer.pad_token_id, **fields},
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config), tokenizer


def _sample(model: Any, tokenizer: Any, prompts: list[str]) -> list[list[str]]:
    generator = TransformersGenerator(model, tokenizer, device="cpu")
    params = GenerationParams(n=2, temperature=1.0, top_k=20, max_new_tokens=6, seed=3)
    return [[c.text for c in outs] for outs in generator.generate(prompts, params)]


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_goes_through_import_sampling_training_and_reload(
    family: str, dtype: str, method: str, base_tokenizer: Any, tmp_path: Path
) -> None:
    model, tokenizer = _family(family, base_tokenizer)
    save_checkpoint(model.to(getattr(torch, dtype)), tokenizer, tmp_path / "source")
    info = import_checkpoint(tmp_path / "source", tmp_path / "base")
    assert info["architecture"] == type(model).__name__
    policy, tok = load_for_inference(tmp_path / "base", "cpu")
    # A system prompt: templates without a system role get it folded into the user's turn.
    prompts = [render_prompt(tok, f"What is {i} + 1?", system="Answer briefly.") for i in range(3)]
    assert all("Answer briefly." in p for p in prompts)
    assert all(len(c) == 2 for c in _sample(policy, tok, prompts))
    trained, ttok = load_for_training(tmp_path / "base", "cpu")
    examples = [TrainExample(p, f" {i + 1}.", 1.0) for i, p in enumerate(prompts)]
    params = TrainParams(
        learning_rate=1e-2, batch_size=3, max_steps=2, method=method, lora_r=4, max_seq_len=256
    )
    stats = train_features(
        trained, tokenize_examples(ttok, examples, 256), params, pad_id=pad_id_of(ttok), device="cpu"
    )
    assert stats.steps == 2 and stats.loss_last == stats.loss_last  # a number, not NaN
    trained.to(getattr(torch, dtype))
    save_checkpoint(trained, ttok, tmp_path / "trained")
    reloaded, rtok = load_for_inference(tmp_path / "trained", "cpu")
    trained.to(torch.float32)  # inference on CPU runs fp32, as the reloaded model does
    assert _sample(trained.eval(), ttok, prompts) == _sample(reloaded, rtok, prompts)
    stored = next(iter(reloaded.state_dict().values()))
    assert transformers.AutoConfig.from_pretrained(tmp_path / "trained").dtype in (
        getattr(torch, dtype),
        dtype,
    )
    assert stored.dtype == torch.float32  # loaded for CPU inference in fp32 whatever is stored
