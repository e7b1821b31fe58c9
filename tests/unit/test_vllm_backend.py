"""The vLLM backend's mapping, against a stand-in `vllm` module (vllm itself needs a GPU install).

The stand-in has vLLM's offline API shape: `LLM(model=..., tokenizer=..., tensor_parallel_size=...,
gpu_memory_utilization=..., enable_prefix_caching=..., dtype=..., max_model_len=..., seed=...)`,
`LLM.get_tokenizer()`, `LLM.generate(prompts, sampling_params, use_tqdm=...)` returning one
`RequestOutput` per prompt whose `outputs` are `CompletionOutput(index, text, token_ids,
cumulative_logprob, logprobs, finish_reason, stop_reason)`, and `SamplingParams` with vLLM's keyword
names (an unknown keyword is a TypeError, as with the real class). The completions are scripted, or,
with no script, a function of the request's prompt and seed (what a seeded vLLM request is: its own
generator). What is tested is restem's side of the mapping. tests/gpu/test_vllm_gpu.py runs the real
engine.
"""

from __future__ import annotations

import asyncio
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from transformers import AutoTokenizer

from services.evaluator.config import EvaluatorConfig
from services.sampler.config import SamplerConfig
from shared.artifacts import CheckpointCache
from shared.infra import StoreConfig
from shared.llm.backends import configured_backend
from shared.llm.generation import GenerationParams, encode_prompt, render_prompt
from shared.llm.vllm_backend import VllmGenerator, import_vllm, sampling_kwargs
from shared.llm.vllm_settings import VllmSettings
from shared.models import resolve_model_source
from shared.seeds import sample_seeds
from shared.store import open_store
from shared.worker import WorkerState


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    path = resolve_model_source("builtin:smollm2-135m-instruct")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


class SamplingParams:
    def __init__(
        self,
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        max_tokens: int | None = 16,
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        self.n, self.temperature, self.top_p, self.top_k, self.seed = n, temperature, top_p, top_k, seed
        self.stop, self.max_tokens = stop, max_tokens
        self.include_stop_str_in_output = include_stop_str_in_output
        self.skip_special_tokens = skip_special_tokens


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool = True


@dataclass
class LLM:
    """Returns the scripted (text, finish_reason, stop_reason) for every sample, tokenised."""

    model: str
    tokenizer: str | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    seed: int = 0
    script: list[tuple[str, str, Any]] = field(default_factory=list)
    calls: list[tuple[list[Any], list[SamplingParams]]] = field(default_factory=list)
    hf_tokenizer: ClassVar[Any] = None  # the engine's tokenizer (set by the fixture)

    def get_tokenizer(self) -> Any:
        return self.hf_tokenizer

    def generate(self, prompts: list[Any], sampling_params: list[SamplingParams], use_tqdm: bool = True):
        self.calls.append((prompts, sampling_params))
        tok = self.hf_tokenizer
        results = []
        for i, (prompt, sp) in enumerate(zip(prompts, sampling_params, strict=True)):
            outs = []
            for k in range(sp.n):
                if self.script:
                    text, reason, stop_reason = self.script[(i * sp.n + k) % len(self.script)]
                else:  # unscripted: the draw is the request's own, from its prompt and seed
                    text, reason, stop_reason = f"{len(prompt['prompt_token_ids'])}/{sp.seed}", "length", None
                ids = tok(text, add_special_tokens=False)["input_ids"]
                if stop_reason is None and reason == "stop":
                    ids.append(tok.eos_token_id)  # vLLM keeps the EOS token in token_ids
                outs.append(CompletionOutput(k, text, ids, finish_reason=reason, stop_reason=stop_reason))
            results.append(RequestOutput(str(i), None, prompt["prompt_token_ids"], None, outs))
        return results


@pytest.fixture()
def fake_vllm(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    module.LLM = LLM  # type: ignore[attr-defined]
    module.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(LLM, "hf_tokenizer", tokenizer)
    return module


def test_restem_params_become_vllm_sampling_params(fake_vllm: Any) -> None:
    params = GenerationParams(
        n=8, temperature=0.7, top_k=40, top_p=0.9, max_new_tokens=40, stop=("\n\n",), seed=1234
    )
    kwargs = sampling_kwargs(params, 2**63 + 5)
    sp = fake_vllm.SamplingParams(**kwargs)  # every keyword is one the real class takes
    # one request per sample: n=1 with that sample's own seed (folded into vLLM's int64)
    assert (sp.n, sp.seed, sp.temperature, sp.top_k, sp.top_p, sp.max_tokens) == (1, 5, 0.7, 40, 0.9, 40)
    assert sp.stop == ["\n\n"] and sp.include_stop_str_in_output  # restem keeps the stop string
    greedy = sampling_kwargs(GenerationParams(greedy=True, top_k=40, top_p=0.5, max_new_tokens=8), 0)
    assert (greedy["temperature"], greedy["top_k"], greedy["top_p"], greedy["stop"]) == (0.0, -1, 1.0, None)
    assert sampling_kwargs(GenerationParams(top_k=0), 0)["top_k"] == -1  # restem's "off" is vLLM's -1


def test_outputs_become_restem_completions_with_regex_stops_cut(fake_vllm: Any, tokenizer: Any) -> None:
    llm = fake_vllm.LLM(model="ckpt")
    llm.script = [
        ("7 + 5 = 12. The answer is 12. Also 13.", "length", None),  # regex stop vLLM cannot apply
        ("The answer is 3", "stop", None),  # EOS
        ("I think\n\n", "stop", "\n\n"),  # a stop string, kept in the text
        ("so far so good", "length", None),
        ("bye", "stop", 2),  # an end-of-turn stop token id counts as EOS
    ]
    gen = VllmGenerator(fake_vllm, llm, tokenizer)
    prompts = [render_prompt(tokenizer, "What is 7 + 5?")]
    params = GenerationParams(n=5, max_new_tokens=40, stop=("\n\n",), stop_regex=(r"The answer is -?\d+\.",))
    [outs] = gen.generate(prompts, params)
    assert [c.finish_reason for c in outs] == ["stop", "eos", "stop", "length", "eos"]
    assert outs[0].text == "7 + 5 = 12. The answer is 12."
    ids = tokenizer("7 + 5 = 12. The answer is 12. Also 13.", add_special_tokens=False)["input_ids"]
    assert re.search(r"The answer is 12\.", tokenizer.decode(ids[: outs[0].num_tokens]))
    assert not re.search(r"The answer is 12\.", tokenizer.decode(ids[: outs[0].num_tokens - 1]))
    n_eos = len(tokenizer("The answer is 3", add_special_tokens=False)["input_ids"]) + 1
    assert (outs[1].text, outs[1].num_tokens) == ("The answer is 3", n_eos)  # EOS counted, as transformers
    assert outs[2].text == "I think\n\n"
    sent, sampling = llm.calls[0]
    # the prompt goes in as restem's own token ids (vLLM's tokenisation would double the chat BOS),
    # once per sample, each request with n=1 and the default seeds of sample_seeds(params.seed, ...)
    assert sent == [{"prompt_token_ids": encode_prompt(tokenizer, prompts[0])}] * 5
    assert [s.n for s in sampling] == [1] * 5
    assert [s.seed for s in sampling] == sample_seeds(params.seed, [0], 5)[0]


def test_a_sample_depends_on_its_seed_not_on_the_round_or_shard(fake_vllm: Any, tokenizer: Any) -> None:
    gen = VllmGenerator(fake_vllm, fake_vllm.LLM(model="ckpt"), tokenizer)
    prompts = [render_prompt(tokenizer, q) for q in ("What is 1 + 2?", "What is 10 + 20?", "Hi")]
    ids = ["p0", "p1", "p2"]

    def texts(which: list[int], n: int, first_index: int = 0) -> list[list[str]]:
        seeds = sample_seeds(99, [ids[i] for i in which], n, first_index)
        outs = gen.generate([prompts[i] for i in which], GenerationParams(n=n), seeds=seeds)
        return [[c.text for c in per] for per in outs]

    fixed = texts([0, 1, 2], 8)
    assert all(len(set(per)) == 8 for per in fixed)  # every sample its own draw
    assert texts([0, 1, 2], 4) == [per[:4] for per in fixed]  # adaptive round 1
    assert texts([2, 0], 4, first_index=4) == [fixed[2][4:], fixed[0][4:]]  # round 2, other shard order
    with pytest.raises(ValueError, match="n=4 seeds for each of the 2 prompts"):
        gen.generate(prompts[:2], GenerationParams(n=4), seeds=[[1, 2, 3, 4]])


def test_the_engine_is_built_from_the_checkpoint_directory_with_the_settings(fake_vllm: Any) -> None:
    settings = VllmSettings(tensor_parallel_size=2, gpu_memory_utilization=0.5, max_model_len=2048)
    gen = VllmGenerator.load(Path("/cache/ckpt"), settings)
    llm = gen.llm
    assert (llm.model, llm.tokenizer) == ("/cache/ckpt", "/cache/ckpt")
    assert (llm.tensor_parallel_size, llm.gpu_memory_utilization, llm.max_model_len) == (2, 0.5, 2048)
    assert llm.enable_prefix_caching is True and gen.tokenizer is LLM.hf_tokenizer
    gen.close()
    assert gen.llm is None


def test_a_missing_vllm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(RuntimeError, match=r"vllm package is not installed.*backend: transformers"):
        import_vllm()
    for cfg in (SamplerConfig(backend="vllm"), EvaluatorConfig(backend="vllm")):
        with pytest.raises(RuntimeError, match="not installed"):
            configured_backend(cfg.backend, cfg.vllm)
    assert configured_backend("transformers", VllmSettings()) is None  # transformers never imports vllm


@pytest.mark.parametrize("service", ["sampler", "evaluator"])
def test_the_sampler_and_the_evaluator_load_the_vllm_backend_and_say_so(
    fake_vllm: Any, tmp_path: Path, service: str
) -> None:
    cfg = (SamplerConfig if service == "sampler" else EvaluatorConfig).model_validate(
        {"backend": "vllm", "vllm": {"max_model_len": 1024}}
    )
    backend = configured_backend(cfg.backend, cfg.vllm)
    assert backend is not None and backend[0] == "vllm"
    assert WorkerState(service, backend=backend[0]).to_proto().backend == "vllm"
    store = open_store(StoreConfig(kind="local", root=tmp_path / "store"))
    for key in ("ck/1", "ck/2"):
        src = tmp_path / key
        src.mkdir(parents=True)
        (src / "config.json").write_text("{}")
        store.put_dir(key, src)
    cache = CheckpointCache(store, tmp_path / "cache", "cuda", load=backend[1])

    async def load_two() -> tuple[Any, Any]:
        first = await cache.generator("ck/1")
        assert await cache.generator("ck/1") is first  # kept while the policy is unchanged
        return first, await cache.generator("ck/2")

    first, second = asyncio.run(load_two())
    assert isinstance(second, VllmGenerator) and second.llm.model == str(cache.local_dir("ck/2"))
    assert first.llm is None  # the previous engine was closed before the next one was built
    assert second.llm.max_model_len == 1024  # the service's own engine settings
