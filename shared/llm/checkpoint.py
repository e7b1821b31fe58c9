"""Causal-LM checkpoints: import (GGUF or Hugging Face directory), load for sampling or training, save.

Every checkpoint restem works with is a plain Hugging Face directory: ``config.json`` (never with a
``quantization_config``), ``model.safetensors``, ``generation_config.json`` when the source has one and the
tokenizer files with the chat template. ``import_checkpoint`` turns the built-in GGUF files (or any HF
directory) into that form once, so that every later load is a fast safetensors read.

Covered: single-device models (CPU, or one CUDA device), fp32 or bf16. NOT covered: sharded multi-GPU
loading, quantised (GGUF/bitsandbytes) inference, LoRA adapters, remote (Hub) downloads — nothing here
touches the network, and a missing file is an error rather than a download.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or not a causal language model."""


def pick_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; an explicit ``cuda`` must be available."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {requested!r} was requested but torch sees no CUDA device "
                f"(torch {torch.__version__}); use 'cpu' or 'auto'"
            )
        return requested
    raise ValueError(f"unknown device {requested!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def _dtype_for(device: str) -> torch.dtype:
    # bf16 halves memory and is what GPU kernels are fast at; CPUs have no fast bf16 matmul here,
    # so fp32 is both faster and exact on CPU.
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def _load_tokenizer(ckpt_dir: Path, padding_side: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt_dir))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt_dir} has no usable tokenizer: {exc}") from exc
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise CheckpointError(f"tokenizer in {ckpt_dir} has neither a pad nor an eos token")
        # Padding is always masked out (attention mask, labels -100), so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_model(ckpt_dir: Path, dtype: torch.dtype | str, device: str) -> PreTrainedModel:
    if not (ckpt_dir / "config.json").is_file():
        raise CheckpointError(f"{ckpt_dir} is not a checkpoint directory: no config.json")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(ckpt_dir), dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{ckpt_dir} is not a causal LM checkpoint: {exc}") from exc
    if getattr(model.config, "is_encoder_decoder", False):
        raise CheckpointError(f"{ckpt_dir} is not a causal LM checkpoint: it is an encoder-decoder model")
    # cast: transformers' decorated .to confuses mypy; nn.Module.to moves the weights in place
    cast(Any, model).to(device)
    return model


def load_for_inference(ckpt_dir: Path, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model in eval mode (fp32 on CPU, bf16 on CUDA) and a left-padding tokenizer for generation."""
    model = _load_model(Path(ckpt_dir), _dtype_for(device), device)
    model.eval()
    return model, _load_tokenizer(Path(ckpt_dir), padding_side="left")


def load_for_training(ckpt_dir: Path, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model in train mode with fp32 weights on every device, and a right-padding tokenizer.

    On CUDA the weights stay fp32 on purpose (``train_reward_weighted`` runs the forward pass under bf16
    autocast): pure bf16 weights cannot hold an AdamW step of lr 2e-5 — bf16 keeps 8 mantissa bits, so an
    update below ~0.4 % of a weight rounds away and fine-tuning silently does nothing. fp32 master weights
    cost 16 bytes/parameter with AdamW, which is fine for the sub-billion models this project trains.
    """
    model = _load_model(Path(ckpt_dir), torch.float32, device)
    model.train()
    return model, _load_tokenizer(Path(ckpt_dir), padding_side="right")


def load_tokenizer(ckpt_dir: Path) -> PreTrainedTokenizerBase:
    """The right-padding tokenizer ``load_for_training`` returns, without loading the model."""
    return _load_tokenizer(Path(ckpt_dir), padding_side="right")


def _strip_quantization(config: Any) -> Any:
    # A GGUF-loaded config carries quantization_config (quant_method gguf); saved as-is, every later
    # from_pretrained would try to treat the safetensors as a GGUF quantised model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def _replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    # Written beside the target then renamed, so a crash never leaves a half-written checkpoint.
    if out_dir.exists():
        if any(out_dir.iterdir()):
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise CheckpointError(f"{out_dir} exists and is not empty; refusing to overwrite it")
        out_dir.rmdir()
    os.replace(tmp_dir, out_dir)


def _tmp_dir_for(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Write model (safetensors, the model's current dtype), generation config and tokenizer to a new dir."""
    out_dir = Path(out_dir)
    tmp = _tmp_dir_for(out_dir)
    _strip_quantization(model.config)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    _replace_dir(tmp, out_dir)


def _load_gguf(source: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            str(source.parent), gguf_file=source.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{source} is not a causal LM checkpoint: {exc}") from exc
    # save_pretrained refuses a GGUF-quantised model object; rebuild a plain one from the config. The
    # meta device skips allocating (and randomly initialising) a second copy of the weights.
    config = _strip_quantization(gguf_model.config)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True, assign=True)
    plain.tie_weights()  # assign=True replaced the tied parameter objects; re-tie lm_head to the embeddings
    plain.generation_config = gguf_model.generation_config
    return plain, tokenizer


def _load_hf_dir(source: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{source} is not a causal LM checkpoint: {exc}") from exc
    model = _load_model(source, "auto", "cpu")  # "auto": keep the stored dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{source} has no usable tokenizer: {exc}") from exc
    return model, tokenizer


def import_checkpoint(source: Path, out_dir: Path) -> dict[str, Any]:
    """Turn a ``.gguf`` file or an HF model directory into a plain HF checkpoint at ``out_dir``.

    GGUF weights are de-quantised to fp32; an HF directory keeps its stored dtype. Returns a summary:
    architecture, num_parameters, vocab_size, max_position_embeddings, source.
    """
    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):  # fail before minutes of conversion, not after
        raise CheckpointError(f"{out_dir} exists and is not empty; refusing to overwrite it")
    if source.is_file() and source.suffix == ".gguf":
        model, tokenizer = _load_gguf(source)
    elif source.is_dir():
        model, tokenizer = _load_hf_dir(source)
    else:
        raise CheckpointError(f"{source} is neither a .gguf file nor a model directory")
    save_checkpoint(model, tokenizer, out_dir)
    config = model.config
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    return {
        "architecture": architectures[0],
        "num_parameters": int(model.num_parameters()),
        "vocab_size": int(config.vocab_size),
        "max_position_embeddings": int(getattr(config, "max_position_embeddings", 0) or 0),
        "source": str(source),
    }
