"""Multi-process M-steps on CPU (gloo): 2 torchrun workers train to the weights of 1 process with the
same effective batch, rank 0 alone writes step states and the checkpoint, and a 2-process run resumes
from a step state; the same with sharded weights (FSDP2), also for LoRA, with ranks that get fewer
micro-batches than others. A TINY random-init Llama; the workers are real processes started by
torchrun (~10 s per start on 2 cores, most of it the workers importing torch and transformers)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from services.trainer.config import TrainerConfig
from services.trainer.core import examples_from_kept
from services.trainer.events import TrainHandler, TrainSettings
from services.trainer.launch import launch, worker_settings
from services.trainer.mstep import MStepSpec, execute
from services.trainer.state import StepStates
from shared.infra import StoreConfig
from shared.llm.checkpoint import save_checkpoint
from shared.llm.distributed import DataParallel
from shared.llm.training import Hooks, TrainParams, tokenize_examples, train_features
from shared.models import resolve_model_source
from shared.store import LocalStore
from tests.fixtures.models import tiny_llama
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


# --- sharded weights (FSDP2) ---------------------------------------------------------------------


class Setup:
    """A base checkpoint and a tokenised kept set under ``tmp_path``; M-step specs over them."""

    def __init__(self, tmp_path: Path, tokenizer: Any, model: Any, examples: int) -> None:
        self.root, self.base = tmp_path, tmp_path / "base"
        save_checkpoint(model, tokenizer, self.base)
        rows = kept_rows(tokenizer, examples)
        self.data = tokenized(tokenizer, write_jsonl(tmp_path / "kept.jsonl", rows), tmp_path / "data")
        store = StoreConfig(kind="local", root=tmp_path / "store")
        self.env = worker_settings("cpu", store, None, 5.0, sharding="fsdp")

    def spec(self, params: TrainParams, name: str, resume: Path | None = None) -> MStepSpec:
        return MStepSpec(
            base_dir=str(self.base),
            data_dir=str(self.data.directory),
            params=asdict(params),
            pad_id=0,
            out_dir=str(self.root / name / "out" / "checkpoint"),
            scratch_dir=str(self.root / name / "states"),
            resume_dir=str(resume) if resume else None,
        )

    def weights(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(self.root / name / "out" / "checkpoint" / "model.safetensors")


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=0, msg=f"{what}: {k}")


def _fsdp_gradients(rank: int, port: int) -> None:
    """One rank: the summed sharded gradients of a step with uneven micro-batches equal the
    single-process gradient (raises in the rank otherwise)."""
    import copy
    import os

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from shared.llm.distributed import shard_model
    from shared.llm.loss import batch_loss
    from shared.llm.packing import IGNORE, pack

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    gen = torch.Generator().manual_seed(1)
    features: list[dict[str, Any]] = []
    for n in (9, 14, 6, 11, 7):  # 5 examples: rank 0 gets 3 micro-batches of 1, rank 1 gets 2 (+1 padding)
        ids = torch.randint(1, 300, (n,), generator=gen).tolist()
        features.append({"input_ids": ids, "labels": [IGNORE] * 3 + ids[3:], "weight": 1.0 + n % 3})
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)  # fmt: skip
    model = LlamaForCausalLM(config)
    reference = copy.deepcopy(model)
    denom = sum((f["weight"] * sum(1 for x in f["labels"][1:] if x != IGNORE)) for f in features)
    batch_loss(reference, pack(features, 0, 64), "token", "cpu", denominator=denom).backward()

    dp = DataParallel(rank=rank, world=2, sharding="fsdp")
    runner = shard_model(model, "cpu")
    lengths = [len(f["input_ids"]) for f in features]
    chunks, most = dp.micro_batches(range(5), lengths, 1)
    assert (len(chunks), most) == ((3, 3) if rank == 0 else (2, 3))
    for chunk in chunks:
        batch_loss(
            runner, pack([features[i] for i in chunk], 0, 64), "token", "cpu", denominator=denom
        ).backward()
    for _ in range(most - len(chunks)):
        (batch_loss(runner, pack(features[:1], 0, 64), "token", "cpu", denominator=denom) * 0.0).backward()
    expected = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        half = -(-p.shape[0] // 2)
        assert isinstance(p, DTensor) and p.to_local().shape[0] <= half  # sharded, not replicated
        assert isinstance(p.grad, DTensor)
        torch.testing.assert_close(p.grad.full_tensor(), expected[name].grad, atol=1e-6, rtol=1e-5, msg=name)
    dist.destroy_process_group()


def test_fsdp_gradients_sum_to_the_single_process_gradient() -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_gradients, args=(port,), nprocs=2)  # raises when a rank's assertion fails


def test_fsdp_trains_like_one_process_and_resumes_from_its_state(tmp_path: Path) -> None:
    tokenizer = _tokenizer()
    run = Setup(tmp_path, tokenizer, tiny_llama(tokenizer, tie_word_embeddings=True), 10)  # tied, as SmolLM2
    # 10 examples, batch 3, micro-batches of 1: rank 0 runs 2 micro-batches per step and rank 1 one,
    # and the last step of each epoch (1 example) leaves rank 1 none: it must pad to match. The
    # gradient norm (~2.5) is above max_grad_norm, so clipping takes the norm over both shards.
    params = TrainParams(
        learning_rate=1e-3, batch_size=3, micro_batch_size=1, max_steps=6, packing=True, max_seq_len=256,
        checkpoint_every_steps=2, max_grad_norm=0.5, lr_schedule="cosine",
    )  # fmt: skip
    single = execute(run.spec(params, "one"), "cpu")
    two = launch(run.spec(params, "two"), 2, run.env, "runs/r/ckpt")
    assert two["steps"] == 6 and two["tokens"] == single["tokens"]
    assert two["loss_last"] == pytest.approx(single["loss_last"], rel=1e-4)
    one_w, two_w = run.weights("one"), run.weights("two")
    moved = max(float((one_w[k] - load_file(run.base / "model.safetensors")[k]).abs().max()) for k in one_w)
    assert moved > 1e-3  # training changed the weights, so agreeing below is not vacuous
    _assert_same(two_w, one_w, "fsdp vs one process")

    # the consolidated checkpoint is a plain tied Llama that transformers loads as it is
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "out" / "checkpoint")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    _assert_same({k: v for k, v in loaded.state_dict().items() if k != "lm_head.weight"}, two_w, "loaded")

    # rank 0 committed the gathered step states; the step-4 one resumes to the same weights, sharded
    # or in one process (the files do not depend on the sharding)
    states = StepStates(LocalStore(tmp_path / "store"), "runs/r/ckpt")
    assert states.committed_steps() == [4]
    resume = states.fetch_latest(tmp_path / "resume")
    assert resume is not None
    again = launch(run.spec(params, "again", resume), 2, run.env, "runs/r2/ckpt")
    alone = execute(run.spec(params, "alone", resume), "cpu")
    assert again["resumed_from_step"] == alone["resumed_from_step"] == 4 and again["steps"] == 6
    _assert_same(run.weights("again"), two_w, "resumed with fsdp")
    _assert_same(run.weights("alone"), two_w, "resumed in one process")


def test_fsdp_trains_lora_with_gradient_checkpointing_like_one_process(tmp_path: Path) -> None:
    tokenizer = _tokenizer()
    run = Setup(tmp_path, tokenizer, tiny(tokenizer), 8)
    params = TrainParams(
        learning_rate=1e-2, batch_size=4, micro_batch_size=1, max_steps=3, max_seq_len=256, method="lora",
        lora_r=4, lora_alpha=8.0, lora_dropout=0.0, gradient_checkpointing=True,
    )  # fmt: skip
    execute(run.spec(params, "one"), "cpu")
    two = launch(run.spec(params, "two"), 2, run.env, "runs/r/ckpt")
    assert two["method"] == "lora" and two["steps"] == 3
    base_w, two_w = load_file(run.base / "model.safetensors"), run.weights("two")
    assert two_w.keys() == base_w.keys()  # merged: a plain checkpoint without adapters
    q = "model.layers.0.self_attn.q_proj.weight"
    assert float((two_w[q] - base_w[q]).abs().max()) > 1e-4  # the adapters moved the merged weights
    _assert_same(two_w, run.weights("one"), "lora fsdp vs one process")


def test_fsdp_is_refused_where_it_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="set nproc to the number of GPUs"):
        TrainerConfig(sharding="fsdp", nproc=1)
    assert TrainerConfig(sharding="fsdp", nproc=2).sharding == "fsdp"
    # validation-driven stopping: the handler refuses the job before it reads the kept set ...
    from restem.events.v1 import events_pb2 as ev

    settings = TrainSettings(
        work_dir=tmp_path, device="cpu", nproc=2, sharding="fsdp", verifier_address="v:1"
    )
    handler = TrainHandler(None, LocalStore(tmp_path / "store"), None, settings)  # type: ignore[arg-type]
    job = ev.TrainJob(
        kept_key="absent.jsonl", validation=ev.TrainValidation(task="arithmetic", dataset_key="v")
    )
    with pytest.raises(ValueError, match="set the trainer's sharding: none"):
        handler._train(job, tmp_path, lambda *_: None)
    # ... and so does the training loop, before any collective
    tokenizer = _tokenizer()
    features = tokenize_examples(tokenizer, examples_from_kept(kept_rows(tokenizer, 2)), 256)
    hooks = Hooks(validate=lambda: 1.0)
    with pytest.raises(ValueError, match="set the trainer's sharding: none"):  # before any collective
        train_features(
            tiny(tokenizer), features, TrainParams(), pad_id=0, device="cpu", hooks=hooks,
            dp=DataParallel(rank=0, world=2, sharding="fsdp"),
        )  # fmt: skip
