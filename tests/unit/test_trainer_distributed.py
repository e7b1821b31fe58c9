"""Multi-process M-steps on CPU (gloo): 2 torchrun workers train to the weights of 1 process with the
same effective batch, rank 0 alone writes step states and the checkpoint, and a 2-process run resumes
from a step state; the same with sharded weights (FSDP2), also for LoRA, with ranks that get fewer
micro-batches than others, and with validation-driven stopping (the ranks decode different prompts,
the best epoch is kept; the verifier is a fake one on a real gRPC port). A TINY random-init Llama;
the workers are real processes started by torchrun (~10 s per start on 2 cores, most of it the
workers importing torch and transformers)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from pydantic import ValidationError
from restem.verifier.v1 import verifier_pb2, verifier_pb2_grpc
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from services.trainer.config import TrainerConfig
from services.trainer.launch import launch, worker_settings
from services.trainer.mstep import MStepSpec, execute
from services.trainer.state import StepStates
from services.trainer.validation import ValidationSet, grpc_scorer
from shared.infra import StoreConfig
from shared.llm.checkpoint import load_for_training, save_checkpoint
from shared.llm.distributed import DataParallel
from shared.llm.generation import GenerationParams, TransformersGenerator, render_prompt
from shared.llm.training import TrainParams
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
    two = launch(spec("two"), 2, env, "runs/r/ckpt", on_step=lambda r: steps.append(r.step))
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


class ScheduledVerifier(verifier_pb2_grpc.VerifierServiceServicer):
    """A fake verifier on a real gRPC port: in epoch k a reference is correct iff it is in
    ``correct[k]``, k counted per reference (each epoch scores every problem once, on whichever rank
    decoded it). Records every call as [(epoch, reference, completion), ...]."""

    def __init__(self, correct: list[set[str]]) -> None:
        self.correct = correct
        self.seen: Counter[str] = Counter()
        self.calls: list[list[tuple[int, str, str]]] = []
        self.lock = threading.Lock()

    def Verify(self, request: Any, context: Any) -> Any:
        with self.lock:
            call = []
            for item in request.items:
                call.append((self.seen[item.reference_json], item.reference_json, item.completion))
                self.seen[item.reference_json] += 1
            self.calls.append(call)
        verdicts = [verifier_pb2.Verdict(correct=ref in self.correct[epoch]) for epoch, ref, _ in call]
        return verifier_pb2.VerifyResponse(verdicts=verdicts)


@pytest.fixture
def verifier() -> Iterator[tuple[ScheduledVerifier, str]]:
    """A ScheduledVerifier (schedule set by the test) and its address."""
    fake = ScheduledVerifier([])
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    verifier_pb2_grpc.add_VerifierServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    server.stop(grace=None)


def _validation_set(tokenizer: Any) -> ValidationSet:
    """Three problems: with 2 ranks, rank 0 decodes problems 0 and 2, rank 1 problem 1."""
    problems = [{"id": f"p{i}", "question": f"What is {i} + 10?", "answer": 10 + i} for i in range(3)]
    render = partial(render_prompt, tokenizer)
    return ValidationSet.build(
        "arithmetic", problems, render, GenerationParams(greedy=True, max_new_tokens=4)
    )


def _fsdp_gradients(rank: int, port: int, out_dir: str) -> None:
    """One rank: the summed sharded gradients of a step with uneven micro-batches equal the
    single-process gradient; then, as validation does between steps, decoding forwards inside
    ``unsharded`` (raises in the rank otherwise). Writes what it checked to ``out_dir``."""
    import copy
    import os

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from shared.llm.distributed import shard_model, unsharded
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
    checked = {"grads": 0, "decoded": 0}
    for name, p in model.named_parameters():
        half = -(-p.shape[0] // 2)
        assert isinstance(p, DTensor) and p.to_local().shape[0] <= half  # sharded, not replicated
        assert isinstance(p.grad, DTensor)
        torch.testing.assert_close(p.grad.full_tensor(), expected[name].grad, atol=1e-6, rtol=1e-5, msg=name)
        checked["grads"] += 1

    # Inside ``unsharded`` every rank has the whole weights and runs its own number of forwards (rank 1
    # three, rank 0 one; a collective among them would deadlock the ranks), with the reference's logits.
    def up() -> torch.Tensor:  # re-read every time: FSDP swaps the parameter object
        return model.model.layers[0].mlp.up_proj.weight

    with unsharded(runner), torch.inference_mode():
        assert not isinstance(up(), DTensor)
        assert up().shape == expected["model.layers.0.mlp.up_proj.weight"].shape
        for f in features[: 1 + 2 * rank]:
            tokens = torch.tensor([f["input_ids"]])
            torch.testing.assert_close(model(input_ids=tokens).logits, reference(input_ids=tokens).logits)
            checked["decoded"] += 1
    # after it every unit is sharded again, and a training forward reshards the layers once they ran
    # (the root keeps its weights for the backward): shard_model's settings are back
    assert all(isinstance(p, DTensor) for p in model.parameters())
    loss = batch_loss(runner, pack(features[:1], 0, 64), "token", "cpu", denominator=denom)
    assert isinstance(up(), DTensor) and not isinstance(model.model.embed_tokens.weight, DTensor)
    loss.backward()
    assert all(isinstance(p, DTensor) for p in model.parameters())
    dist.destroy_process_group()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(checked))


@pytest.mark.timeout(300)  # a collective among the decoding forwards deadlocks the ranks: fail, not hang
def test_fsdp_gradients_sum_to_the_single_process_gradient_and_decoding_between_steps_is_local(
    tmp_path: Path,
) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_gradients, args=(port, str(tmp_path)), nprocs=2)  # raises when a rank's check fails
    # Both ranks got through every check (a rank that skipped its loops would report zeros).
    done = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [d["grads"] for d in done] == [done[0]["grads"]] * 2 and done[0]["grads"] > 0
    assert [d["decoded"] for d in done] == [1, 3]


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


def test_fsdp_trains_lora_with_gradient_checkpointing_and_validation_like_one_process(
    tmp_path: Path, verifier: tuple[ScheduledVerifier, str]
) -> None:
    fake, address = verifier
    tokenizer = _tokenizer()
    run = Setup(tmp_path, tokenizer, tiny(tokenizer), 8)
    params = TrainParams(
        learning_rate=1e-2, batch_size=4, micro_batch_size=1, max_steps=3, max_seq_len=256, method="lora",
        lora_r=4, lora_alpha=8.0, lora_dropout=0.0, gradient_checkpointing=True,
    )  # fmt: skip
    # validated after step 2 (epoch 1) and step 3 (the last, epoch 2 cut short): epoch 1 is better,
    # so both runs keep the adapters of step 2 (gathered from the shards and sharded back under FSDP)
    vset = _validation_set(tokenizer)
    fake.correct = [{vset.references[1]}, set()]
    one_spec = replace(run.spec(params, "one"), validation=asdict(vset))
    one = execute(one_spec, "cpu", scorer=grpc_scorer(address, "arithmetic", None, 10.0))
    fake.seen.clear()
    env = worker_settings("cpu", StoreConfig(kind="local", root=tmp_path / "store"), address, 10.0, "fsdp")
    two = launch(replace(run.spec(params, "two"), validation=asdict(vset)), 2, env, "runs/r/ckpt")
    assert two["method"] == "lora" and two["steps"] == 3
    for stats in (one, two):
        assert stats["validation_rewards"] == pytest.approx([1 / 3, 0.0]) and stats["best_epoch"] == 1
    base_w, two_w = load_file(run.base / "model.safetensors"), run.weights("two")
    assert two_w.keys() == base_w.keys()  # merged: a plain checkpoint without adapters
    q = "model.layers.0.self_attn.q_proj.weight"
    assert float((two_w[q] - base_w[q]).abs().max()) > 1e-4  # the adapters moved the merged weights
    _assert_same(two_w, run.weights("one"), "lora fsdp vs one process")


def test_fsdp_is_refused_where_it_cannot_work() -> None:
    with pytest.raises(ValidationError, match="set nproc to the number of GPUs"):
        TrainerConfig(sharding="fsdp", nproc=1)
    assert TrainerConfig(sharding="fsdp", nproc=2).sharding == "fsdp"


# --- validation-driven stopping with sharded weights ---------------------------------------------


@pytest.mark.timeout(300)  # a collective among the decoding forwards deadlocks the ranks: fail, not hang
def test_fsdp_validation_keeps_the_same_epoch_and_weights_as_one_process(
    tmp_path: Path, verifier: tuple[ScheduledVerifier, str]
) -> None:
    fake, address = verifier
    tokenizer = _tokenizer()
    run = Setup(tmp_path, tokenizer, tiny_llama(tokenizer, tie_word_embeddings=True), 8)
    vset = _validation_set(tokenizer)
    a, b, c = vset.references
    # Rewards 1/3, 2/3, 1/3, 2/3 (a tie keeps epoch 2), then 1/3 for the resumed epoch 5. Epoch 2's
    # correct answers are one of each rank's, so the reward needs both ranks' counts.
    fake.correct = [{a}, {a, b}, {c}, {b, c}, {c}]
    # 8 examples, batch 4: 2 steps per epoch, up to 6 epochs; patience 2 stops after epoch 4. A state
    # every 2 steps: the last one (step 8) holds epoch 4's weights and epoch 2's as the best.
    params = TrainParams(
        learning_rate=1e-3, batch_size=4, epochs=6, patience=2, max_seq_len=256, checkpoint_every_steps=2
    )

    def spec(name: str, resume: Path | None = None) -> MStepSpec:
        return replace(run.spec(params, name, resume), validation=asdict(vset))

    scorer = grpc_scorer(address, "arithmetic", None, 10.0)
    single = execute(spec("one"), "cpu", scorer=scorer)
    fake.seen.clear()
    fake.calls.clear()
    env = worker_settings("cpu", StoreConfig(kind="local", root=tmp_path / "store"), address, 10.0, "fsdp")
    two = launch(spec("two"), 2, env, "runs/r/ckpt")

    rewards = [1 / 3, 2 / 3, 1 / 3, 2 / 3]
    for stats in (single, two):
        assert stats["validation_rewards"] == pytest.approx(rewards)
        assert (stats["best_epoch"], stats["epochs"], stats["steps"]) == (2, 4, 8)
    # each rank scored its own share every epoch: rank 0 problems 0 and 2, rank 1 problem 1. Rank 0's
    # two prompts share a prefix that gets a forward pass of its own, so the ranks ran different
    # numbers of forwards: had any of them been a collective, the ranks would have deadlocked.
    shares = sorted(sorted((epoch, ref) for epoch, ref, _ in call) for call in fake.calls)
    assert shares == sorted([[(e, a), (e, c)] for e in range(4)] + [[(e, b)] for e in range(4)])

    one_w, two_w = run.weights("one"), run.weights("two")
    moved = max(float((one_w[k] - load_file(run.base / "model.safetensors")[k]).abs().max()) for k in one_w)
    assert moved > 1e-3  # training changed the weights, so agreeing below is not vacuous
    _assert_same(two_w, one_w, "fsdp vs one process, both epoch 2's weights")

    # rank 0's last state: epoch 4's weights, and epoch 2's (the checkpoint) gathered as the best
    states = StepStates(LocalStore(tmp_path / "store"), "runs/r/ckpt")
    assert states.committed_steps() == [8]
    resume = states.fetch_latest(tmp_path / "resume")
    assert resume is not None
    best, last = load_file(resume / "best.safetensors"), load_file(resume / "trainable.safetensors")
    assert best.keys() == last.keys() and set(best) <= set(two_w)
    _assert_same(best, {k: two_w[k] for k in best}, "the gathered best state")
    assert max(float((last[k] - best[k]).abs().max()) for k in best) > 1e-3  # so the restore mattered

    # the answers decoded under FSDP in epoch 2 are those the kept model decodes (same per-rank batches)
    kept, kept_tokenizer = load_for_training(tmp_path / "two" / "out" / "checkpoint", "cpu")
    generator = TransformersGenerator(kept, kept_tokenizer, device="cpu")
    epoch_2 = [call for call in fake.calls if call[0][0] == 1]
    assert len(epoch_2) == 2
    for call in epoch_2:
        prompts = [vset.prompts[vset.references.index(ref)] for _, ref, _ in call]
        decoded = generator.generate(prompts, GenerationParams(**vset.params))
        assert [o[0].text for o in decoded] == [text for _, _, text in call]

    # the sharded run's state resumes in one process: epoch 5 does not beat epoch 2, which is kept
    assert set(fake.seen.values()) == {4}  # the next call scores epoch 5
    alone = execute(spec("alone", resume), "cpu", scorer=scorer)
    assert alone["resumed_from_step"] == 8 and alone["validation_rewards"] == pytest.approx([*rewards, 1 / 3])
    assert (alone["best_epoch"], alone["steps"]) == (2, 10)
    _assert_same(run.weights("alone"), two_w, "resumed in one process")
