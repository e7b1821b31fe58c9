"""The vLLM backend: restem's generation contract on vLLM's offline engine (`vllm.LLM`).

`VllmGenerator` has the transformers backend's interface (`tokenizer`, `generate(prompts, params)`
returning K `Completion`s per prompt), so the sampler's and the evaluator's job paths are the same
for both. The
mapping, both ways:

* restem `GenerationParams` + per-sample seeds -> one request per (prompt, sample index), each with
  its own `vllm.SamplingParams`: n=1, the sample's seed (`generate(..., seeds=)`, the transformers
  backend's contract: a hash of the job seed, the problem id and the sample index), temperature (0
  for greedy), top_k (restem's 0 = off is vLLM's -1), top_p, max_tokens, stop strings with
  `include_stop_str_in_output=True` (restem keeps the stop in the text). A sample's draws then
  depend on its seed alone (vLLM keeps a generator per seeded request), not on the shard, round or
  batch it is in, so a redelivered shard, a re-sharded one and an adaptive round draw the same
  samples as fixed K (up to GPU kernel non-determinism). vLLM's `n>1` would share one stream among a
  prompt's samples; the K requests of a prompt instead share its KV cache through prefix caching.
  Draws are not the transformers backend's: the two backends agree on the contract, not the tokens.
* Prompts go in as token ids from `encode_prompt`, the encoding the trainer and the transformers
  backend use (vLLM's own tokenisation would add a second BOS to a chat-templated prompt).
* `RequestOutput.outputs[i]` (`CompletionOutput`) -> `Completion(text, num_tokens, finish_reason)`:
  `num_tokens` = len(token_ids) (the EOS or stop-completing token included, as in the transformers
  backend); `finish_reason` "length" stays "length", "stop" becomes "stop" when `stop_reason` is a
  stop string and "eos" when it is None (EOS) or a token id (an end-of-turn token).
* Stop regexes: vLLM has none. Generation runs until EOS, a stop string or max_tokens, and the text
  is then cut right after the earliest stop match with the transformers backend's exact rule
  (shortest token prefix whose text holds a match), so `num_tokens` counts the kept tokens only.
  The tokens vLLM generated past the match are wasted GPU work: give a task a stop *string* as
  well when one exists.

The checkpoint directory is the one the transformers backend loads (a Hugging Face directory; LoRA
runs store merged weights), so vLLM reads it as is. A new policy rebuilds the engine: `close()`
releases the old one's GPU memory first. NOT covered: vLLM's async engine / continuous request
feeding across shards, LoRA adapters served unmerged, multi-node tensor parallelism.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.llm.generation import (
    Completion,
    GenerationParams,
    _cut,
    _StopMatcher,
    check_seeds,
    encode_prompt,
)

from .vllm_settings import VllmSettings

log = logging.getLogger("restem.vllm")

_SEED_MOD = 2**63  # vLLM seeds are int64


def import_vllm() -> Any:
    """The vllm module, imported on first use so CPU installs never need it."""
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:
        raise RuntimeError(
            "backend 'vllm' is selected but the vllm package is not installed: "
            "use a restem CUDA image (its lock installs the `cuda` extra: vLLM) or set backend: transformers"
        ) from exc


def sampling_kwargs(params: GenerationParams, seed: int) -> dict[str, Any]:
    """`vllm.SamplingParams` keyword arguments for one sample (one request) with its seed."""
    return {
        "n": 1,
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_k": params.top_k if params.top_k > 0 and not params.greedy else -1,
        "top_p": 1.0 if params.greedy else params.top_p,
        "max_tokens": params.max_new_tokens,
        "stop": list(params.stop) or None,
        "include_stop_str_in_output": True,
        "skip_special_tokens": True,
        "seed": seed % _SEED_MOD,
    }


def _reason(output: Any) -> str:
    if output.finish_reason == "length":
        return "length"
    if output.finish_reason == "stop":
        return "stop" if isinstance(output.stop_reason, str) else "eos"
    raise RuntimeError(f"vLLM finished a completion with an unexpected reason {output.finish_reason!r}")


def to_completion(output: Any, tokenizer: Any, matcher: _StopMatcher) -> Completion:
    """One `CompletionOutput` as a restem `Completion`, cut after the first stop-regex match."""
    ids = list(output.token_ids)
    reason = _reason(output)
    if matcher.patterns and matcher.end(output.text) is not None:
        body = ids[:-1] if reason == "eos" else ids
        cut = _cut(tokenizer, body, matcher)
        if cut is not None:
            return Completion(text=cut[0], num_tokens=cut[1], finish_reason="stop")
        # vLLM's incremental detokenisation can differ from a whole decode at the edges
        end = matcher.end(output.text)
        return Completion(text=output.text[:end], num_tokens=len(ids), finish_reason="stop")
    return Completion(text=output.text, num_tokens=len(ids), finish_reason=reason)


class VllmGenerator:
    """Samples completions with a vLLM engine; the interface of `TransformersGenerator`."""

    backend = "vllm"

    def __init__(self, vllm: Any, llm: Any, tokenizer: Any) -> None:
        self._vllm = vllm
        self.llm = llm
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, path: Path, settings: VllmSettings) -> VllmGenerator:
        vllm = import_vllm()
        llm = vllm.LLM(
            model=str(path),
            tokenizer=str(path),
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enable_prefix_caching=settings.enable_prefix_caching,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            seed=0,
        )
        log.info("vLLM engine loaded %s (tensor parallel %d)", path, settings.tensor_parallel_size)
        return cls(vllm, llm, llm.get_tokenizer())

    def generate(
        self,
        prompts: Sequence[str],
        params: GenerationParams,
        *,
        seeds: Sequence[Sequence[int]] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in prompt order (one engine call per shard).

        ``seeds[i][j]`` seeds sample j of prompt i, as in `TransformersGenerator.generate`.
        """
        row_seeds = check_seeds(seeds, len(prompts), params)
        requests, sampling = [], []
        for prompt, per in zip(prompts, row_seeds, strict=True):
            ids = encode_prompt(self.tokenizer, prompt)
            for seed in per:  # vLLM returns outputs in request order
                requests.append({"prompt_token_ids": list(ids)})
                sampling.append(self._vllm.SamplingParams(**sampling_kwargs(params, seed)))
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        if len(outputs) != len(requests) or any(len(out.outputs) != 1 for out in outputs):
            raise RuntimeError(
                f"vLLM returned {len(outputs)} results for {len(requests)} one-sample requests"
            )
        matcher = _StopMatcher.from_params(params)
        flat = [to_completion(out.outputs[0], self.tokenizer, matcher) for out in outputs]
        results = [flat[i : i + params.n] for i in range(0, len(flat), params.n)]
        if on_progress is not None:
            on_progress(len(prompts) * params.n)
        return results

    def close(self) -> None:
        """Release the engine and its GPU memory before another checkpoint's engine is built."""
        self.llm = None
        with contextlib.suppress(ImportError, AttributeError):
            parallel = importlib.import_module("vllm.distributed.parallel_state")
            parallel.destroy_model_parallel()
            parallel.destroy_distributed_environment()
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
