"""Generation backends the sampler and the evaluator share: transformers (always installed, CPU or
GPU) or vLLM's offline engine (GPU; the `cuda` extra). Both implement one contract
(`tokenizer`, `generate(prompts, params, seeds=)` -> `Completion`s, see `shared.llm.generation`), so
the E-step and evaluation decode alike whichever backend a service runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from .vllm_settings import VllmSettings

BackendName = Literal["transformers", "vllm"]
# (name shown by GetStats, checkpoint directory -> generator)
Backend = tuple[str, Callable[[Path], Any]]


def configured_backend(name: BackendName, vllm: VllmSettings) -> Backend | None:
    """The named backend's loader; None for transformers (the checkpoint cache's default)."""
    if name == "vllm":
        from .vllm_backend import VllmGenerator, import_vllm

        import_vllm()  # a missing vllm fails the start-up, not every job
        return "vllm", functools.partial(VllmGenerator.load, settings=vllm)
    return None
