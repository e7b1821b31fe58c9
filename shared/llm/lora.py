"""LoRA fine-tuning through peft: wrap a causal LM with adapters, and merge them back for saving.

Merged for sampling: after the M-step the adapters are merged into the base weights
(``merge_and_unload``) and the result is saved as a plain Hugging Face checkpoint, so the sampler and
the evaluator load it exactly like a full fine-tune and nothing downstream knows LoRA exists.
The cost is a full-size checkpoint per iteration instead of a few-MB adapter.

Target modules are checked against the model before peft sees them: a name that matches no module
is an error that lists the linear modules the model does have (peft's own message only says that
some target was not found). ``all-linear`` (peft's shorthand: every linear layer but the output
head) is accepted as is.

Not covered: serving adapters unmerged (one base + many adapters in the sampler), QLoRA / quantised
bases, DoRA and other peft methods, regular-expression target patterns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

ALL_LINEAR = "all-linear"


def linear_module_names(model: Any) -> list[str]:
    """Sorted distinct last name components of the model's linear layers (``q_proj``, ``down_proj``...)."""
    return sorted(
        {name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )


def check_target_modules(model: Any, targets: Sequence[str]) -> None:
    """Raise ValueError naming every target that matches no module, and the linear modules available."""
    if not targets:
        raise ValueError(f"LoRA needs target modules: set training.lora.target_modules (or [{ALL_LINEAR}])")
    if list(targets) == [ALL_LINEAR]:
        return
    names = {name for name, _ in model.named_modules()}
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        arch = type(model).__name__
        raise ValueError(
            f"LoRA target modules {missing} do not exist in {arch}; its linear modules are "
            f"{linear_module_names(model)} (or use [{ALL_LINEAR}]): fix training.lora.target_modules"
        )


def apply_lora(model: Any, *, r: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> Any:
    """The model wrapped in LoRA adapters; only the adapters are trainable (the base is frozen)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # an optional dependency: only LoRA runs need it
        raise ValueError("training.method lora needs the peft package: pip install peft") from exc
    check_target_modules(model, target_modules)
    targets: str | list[str] = ALL_LINEAR if list(target_modules) == [ALL_LINEAR] else list(target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,  # type: ignore[arg-type]  # annotated int; peft only divides it by r
        lora_dropout=dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def merged(model: Any) -> Any:
    """The plain transformers model with the adapters merged in (the model itself when it has none)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
