"""Multi-process M-steps on CPU (gloo): 2 torchrun workers train to the weights of 1 process with the
same effective batch, rank 0 alone writes step states and the checkpoint, and a 2-process run resumes
from a step state. A TINY random-init Llama; the workers are real processes started by torchrun
(~30 s on 2 cores, most of it the workers importing torch and transformers)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from services.trainer.launch import launch, worker_settings
from services.trainer.mstep import MStepSpec, execute
from services.trainer.state import StepStates
from shared.infra import StoreConfig
from shared.llm.checkpoint import save_checkpoint
from shared.llm.training import TrainParams
from shared.models import resolve_model_source
from shared.store import LocalStore
from tests.unit.test_trainer_mstep import kept_rows, tiny, tokenized, write_jsonl


def _tokenizer() -> Any:
    source = resolve_model_source("builtin:smollm2-135m-instruct")
    return AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)


def _weights(out_dir: str) -> dict[str, torch.Tensor]:
    return load_file(Path(out_dir) / "model.safetensors")


def test_two_processes_train_like_one_and_resume_from_a_step_state(tmp_path: Path) -> None:
    tokenizer = _tokenizer()
    base = tmp_path / "base"
    save_checkpoint(tiny(tokenizer), tokenizer, base)
    rows = kept_rows(tokenizer, 10)
    data = tokenized(tokenizer, write_jsonl(tmp_path / "kept.jsonl", rows), tmp_path / "data")
    # 10 examples, batch 4: the last step of each epoch has 2 examples, one per rank; packing
    # gives the ranks different row counts. Every 2 steps a state; 6 steps in all.
    params = TrainParams(
        learning_rate=1e-3, batch_size=4, max_steps=6, packing=True, max_seq_len=256, checkpoint_every_steps=2
    )

    def spec(name: str, resume: Path | None = None) -> MStepSpec:
        return MStepSpec(
            base_dir=str(base),
            data_dir=str(data.directory),
            params=asdict(params),
            pad_id=int(tokenizer.pad_token_id),
            out_dir=str(tmp_path / name / "out" / "checkpoint"),
            scratch_dir=str(tmp_path / name / "states"),
            resume_dir=str(resume) if resume else None,
        )

    single = execute(spec("one"), "cpu")
    store_cfg = StoreConfig(kind="local", root=tmp_path / "store")
    env = worker_settings("cpu", store_cfg, None, 5.0)
    steps: list[int] = []
    two = launch(spec("two"), 2, env, "runs/r/ckpt", on_step=lambda s, total, loss: steps.append(s))
    assert steps == [1, 2, 3, 4, 5, 6] and two["steps"] == 6 and two["tokens"] == single["tokens"]
    assert two["loss_last"] == pytest.approx(single["loss_last"], rel=1e-4)
    one_w, two_w = _weights(spec("one").out_dir), _weights(spec("two").out_dir)
    assert one_w.keys() == two_w.keys()
    moved = max(float((one_w[k] - load_file(base / "model.safetensors")[k]).abs().max()) for k in one_w)
    assert moved > 1e-3  # training changed the weights, so agreeing below is not vacuous
    for k in one_w:
        torch.testing.assert_close(two_w[k], one_w[k], atol=2e-5, rtol=0, msg=k)

    # rank 0 committed the step states (the older ones deleted); nothing but states is in the store
    store = LocalStore(tmp_path / "store")
    states = StepStates(store, "runs/r/ckpt")
    assert states.committed_steps() == [4]
    assert all(k.startswith("runs/r/ckpt-state/step-00000004/") for k in store.list(""))
    resume = states.fetch_latest(tmp_path / "resume")
    assert resume is not None
    again = launch(spec("again", resume), 2, env, "runs/r2/ckpt")
    assert again["resumed_from_step"] == 4 and again["steps"] == 6
    for k, w in _weights(spec("again").out_dir).items():
        torch.testing.assert_close(w, two_w[k], atol=2e-5, rtol=0, msg=k)


@pytest.mark.slow  # another torchrun start (~13 s); the error path, not the training
def test_bad_input_in_a_worker_is_a_value_error_with_its_message(tmp_path: Path) -> None:
    tokenizer = _tokenizer()
    base = tmp_path / "base"
    save_checkpoint(tiny(tokenizer), tokenizer, base)
    data = tokenized(
        tokenizer, write_jsonl(tmp_path / "kept.jsonl", kept_rows(tokenizer, 4)), tmp_path / "data"
    )
    params = replace(TrainParams(), method="lora", lora_target_modules=("nope_proj",))
    spec = MStepSpec(
        base_dir=str(base),
        data_dir=str(data.directory),
        params=asdict(params),
        pad_id=0,
        out_dir=str(tmp_path / "out" / "checkpoint"),
        scratch_dir=str(tmp_path / "states"),
    )
    env = worker_settings("cpu", StoreConfig(kind="local", root=tmp_path / "store"), None, 5.0)
    with pytest.raises(ValueError, match=r"LoRA target modules \['nope_proj'\] do not exist"):
        launch(spec, 2, env, "runs/r/ckpt")
