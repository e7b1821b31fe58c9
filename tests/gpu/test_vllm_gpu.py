"""The real vLLM backend on a tiny random-init Llama (runs wherever vllm and a CUDA GPU exist).

    pytest -m gpu tests/gpu/test_vllm_gpu.py

It checks what the stand-in tests (tests/unit/test_vllm_backend.py) cannot: that vLLM accepts the
engine and sampling arguments restem passes, reads restem's checkpoint directory, returns K samples
per prompt with the finish reasons and token counts restem expects, repeats a seeded shard, and
decodes greedily like the transformers backend (fp32 on both, peaked logits).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gpu


def _skip_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible (vLLM needs one)"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vllm is not installed (the cuda extra: a restem CUDA image)"
    return None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from shared.llm.checkpoint import save_checkpoint
    from shared.models import resolve_model_source

    gguf = resolve_model_source("builtin:smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,  # head dim 64: every attention backend takes it
        initializer_range=0.5, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(LlamaForCausalLM(config).eval(), tokenizer, out)
    return out


@pytest.fixture(scope="module")
def generator(checkpoint: Path) -> Any:
    from shared.llm.vllm_backend import VllmGenerator
    from shared.llm.vllm_settings import VllmSettings

    settings = VllmSettings(gpu_memory_utilization=0.3, dtype="float32", max_model_len=512)
    gen = VllmGenerator.load(checkpoint, settings)
    yield gen
    gen.close()


def test_k_samples_per_prompt_with_restem_finish_reasons(generator: Any) -> None:
    from shared.llm.generation import GenerationParams, render_prompt

    prompts = [render_prompt(generator.tokenizer, m) for m in ("What is 12 + 3?", "Hi")]
    params = GenerationParams(n=4, temperature=1.0, top_k=40, max_new_tokens=24, seed=7)
    outs = generator.generate(prompts, params)
    assert [len(o) for o in outs] == [4, 4]
    for c in (c for o in outs for c in o):
        assert c.finish_reason in ("eos", "length", "stop") and 1 <= c.num_tokens <= 24
        assert c.finish_reason != "length" or c.num_tokens == 24
    again = generator.generate(prompts, params)
    assert [[c.text for c in o] for o in again] == [[c.text for c in o] for o in outs]  # seeded shard


def test_a_stop_regex_cuts_the_text(generator: Any) -> None:
    from shared.llm.generation import GenerationParams, render_prompt

    prompts = [render_prompt(generator.tokenizer, "Count")]
    params = GenerationParams(n=8, temperature=1.5, top_k=0, max_new_tokens=48, stop_regex=(r"[a-z]{3}",))
    outs = generator.generate(prompts, params)[0]
    stopped = [c for c in outs if c.finish_reason == "stop"]
    assert stopped, "a 3-letter run should appear in 48 tokens of a random model"
    assert all(re.search(r"[a-z]{3}$", c.text) for c in stopped)


def test_greedy_matches_the_transformers_backend(generator: Any, checkpoint: Path) -> None:
    import torch

    from shared.llm.checkpoint import load_for_inference
    from shared.llm.generation import GenerationParams, TransformersGenerator, render_prompt

    model, tok = load_for_inference(checkpoint, "cuda")
    reference = TransformersGenerator(model.float(), tok, device="cuda")
    prompts = [render_prompt(tok, m) for m in ("What is 45 + 6?", "Tell me a story")]
    params = GenerationParams(greedy=True, max_new_tokens=16)
    ours = [o[0] for o in generator.generate(prompts, params)]
    theirs = [o[0] for o in reference.generate(prompts, params)]
    assert [(c.text, c.num_tokens) for c in ours] == [(c.text, c.num_tokens) for c in theirs]
    del model, reference
    torch.cuda.empty_cache()
