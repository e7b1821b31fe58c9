"""One M-step as a self-contained unit: what to train (``MStepSpec``) and how (``execute``).

The train handler prepares everything that needs the store and the job (base checkpoint downloaded,
kept set streamed into a ``dataset.TokenizedSet``, validation prompts rendered, the latest step state
fetched) into a spec of plain paths and values. ``execute`` then trains, either in the trainer's own
process (``nproc: 1``) or in each of the ``nproc`` processes torchrun starts (``launch``): the same
code, with ``dp`` set in the second case. Rank 0 (or the only process) is the only one that writes:
step states to the store through ``on_state`` and the consolidated checkpoint (plain safetensors, LoRA
merged) to ``out_dir``, which the handler uploads. With sharded weights (``dp.sharding`` ``fsdp``)
each rank loads the base into host memory and keeps only its shard on the device, and the trained
weights are gathered to rank 0 (``distributed.consolidate``) before it writes the same checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from shared.params import TrainParams, from_dict

if TYPE_CHECKING:
    from shared.llm.distributed import DataParallel

from .validation import Scorer, ValidationSet, make_validator

SUMMARY = "stats.json"  # TrainStats of the run, beside the checkpoint in out_dir


@dataclass(frozen=True)
class MStepSpec:
    base_dir: str  # the base checkpoint (every M-step starts from it)
    data_dir: str  # the tokenised kept set (dataset.TokenizedSet)
    params: dict[str, Any]  # shared.params.as_dict of the TrainParams
    pad_id: int
    out_dir: str  # rank 0 writes the checkpoint and SUMMARY here
    scratch_dir: str  # step states are written here before they go to the store
    resume_dir: str | None = None  # a step state to continue from
    validation: dict[str, Any] | None = None  # ValidationSet fields; None: no validation-driven stopping

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @staticmethod
    def load(path: Path) -> MStepSpec:
        return MStepSpec(**json.loads(path.read_text()))


def train_params(spec: MStepSpec) -> TrainParams:
    return from_dict(spec.params, TrainParams)


def saved_dtype(base_dir: Path, save_dtype: str) -> Any:
    """The torch dtype the trained checkpoint is written in: `save_dtype`, or the base's for auto."""
    import torch

    if save_dtype == "auto":
        config = json.loads((base_dir / "config.json").read_text())
        save_dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(save_dtype), None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def execute(
    spec: MStepSpec,
    device: str,
    *,
    scorer: Scorer | None = None,
    dp: DataParallel | None = None,
    on_step: Any = None,
    on_state: Any = None,
    should_stop: Any = None,
) -> dict[str, Any]:
    """Train as ``spec`` says; returns the TrainStats as a dict (rank 0 also writes ``out_dir``)."""
    from shared.llm.checkpoint import load_for_training, save_checkpoint
    from shared.llm.dataset import TokenizedSet
    from shared.llm.distributed import consolidate
    from shared.llm.training import Hooks, train_features

    sharded = dp is not None and dp.sharded
    # sharded: the whole fp32 model never lands on one device; shard_model moves each rank's shard there
    model, tokenizer = load_for_training(Path(spec.base_dir), "cpu" if sharded else device)
    validate = None
    if spec.validation is not None:
        if scorer is None:
            raise ValueError("validation-driven stopping needs a scorer (the verifier's address)")
        vset = ValidationSet(**spec.validation)
        validate = make_validator(model, tokenizer, device, vset, scorer, dp)
    hooks = Hooks(
        on_step=on_step,
        should_stop=should_stop,
        on_state=on_state,
        validate=validate,
        scratch_dir=Path(spec.scratch_dir),
    )
    params = train_params(spec)
    stats = train_features(
        model,
        cast(Sequence[dict[str, Any]], TokenizedSet(Path(spec.data_dir))),  # list-like (see dataset)
        params,
        pad_id=spec.pad_id,
        device=device,
        hooks=hooks,
        resume_from=Path(spec.resume_dir) if spec.resume_dir else None,
        dp=dp,
    )
    result = asdict(stats)
    if dp is not None and sharded:
        model = consolidate(model, params, dp)  # every rank gathers; rank 0 gets the plain model
    if dp is None or dp.rank == 0:
        out = Path(spec.out_dir)
        model.to(dtype=saved_dtype(Path(spec.base_dir), params.save_dtype))  # type: ignore[call-arg]  # transformers wraps `to`
        save_checkpoint(model, tokenizer, out)  # LoRA: already merged, so a plain checkpoint
        (out.parent / SUMMARY).write_text(json.dumps(result))
    return result
