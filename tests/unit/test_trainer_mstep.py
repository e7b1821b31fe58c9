"""The M-step beyond one in-memory loop, on a TINY random-init Llama on CPU: streamed kept sets,
validation-driven stopping, the validation reward, and step states under the work dir.
(Multi-process training: tests/unit/test_trainer_distributed.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from services.trainer.core import examples_from_kept
from services.trainer.validation import ValidationSet, make_validator
from shared.llm.dataset import TokenizedSet, read_chunks, write_tokenized
from shared.llm.generation import GenerationParams, TransformersGenerator, render_prompt
from shared.llm.training import Hooks, TrainParams, encode_example, tokenize_examples, train_features
from tests.fixtures.models import smollm2_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return smollm2_tokenizer()


def tiny(tokenizer: Any, seed: int = 0) -> LlamaForCausalLM:
    return tiny_llama(tokenizer, seed)


def kept_rows(tokenizer: Any, n: int = 10) -> list[dict[str, Any]]:
    return [
        {
            "prompt": render_prompt(tokenizer, f"What is {10 + i} + {i % 7}?" + " Think." * (i % 3)),
            "completion": f"The answer is {10 + i + i % 7}." + " Yes." * (i % 4),
            "weight": 0.5 + (i % 3),
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tokenized(tokenizer: Any, path: Path, out: Path, rows_per_chunk: int = 4) -> TokenizedSet:
    with path.open("rb") as lines:
        chunks = (examples_from_kept(c) for c in read_chunks(lines, rows_per_chunk))
        return write_tokenized(chunks, lambda ex: encode_example(tokenizer, ex), out, 256)


def _same_weights(a: Any, b: Any, atol: float = 0.0) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=name)


# --- larger-than-memory kept sets ---------------------------------------------------------------


class CountingLines:
    """A file's lines, counting how many the reader has pulled so far."""

    def __init__(self, path: Path) -> None:
        self.lines, self.pulled = path.read_text().splitlines(keepends=True), 0

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            self.pulled += 1
            yield line


def test_a_kept_set_is_read_and_tokenised_in_bounded_chunks(tokenizer: Any, tmp_path: Path) -> None:
    rows = kept_rows(tokenizer, 10)
    path = write_jsonl(tmp_path / "kept.jsonl", rows)
    source = CountingLines(path)
    chunks = read_chunks(source, rows=3)
    assert len(next(chunks)) == 3 and source.pulled == 3  # lazy: nothing read ahead of the first chunk
    assert [len(c) for c in chunks] == [3, 3, 1] and source.pulled == 10

    sizes: list[int] = []

    def sized_chunks() -> Iterator[list[Any]]:
        for chunk in read_chunks(CountingLines(path), rows=3):
            sizes.append(len(chunk))  # what the tokeniser holds at once
            yield examples_from_kept(chunk)

    tset = write_tokenized(sized_chunks(), lambda ex: encode_example(tokenizer, ex), tmp_path / "data", 256)
    assert max(sizes) <= 3 and sum(sizes) == 10
    # the on-disk set is exactly what tokenising everything in memory gives
    assert list(tset) == tokenize_examples(tokenizer, examples_from_kept(rows), 256)
    assert tset.lengths == [len(f["input_ids"]) for f in tset]
    assert TokenizedSet(tmp_path / "data").digest() == tset.digest()


def test_bad_kept_sets_are_errors_that_say_what_to_do(tokenizer: Any, tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no training examples"):
        tokenized(tokenizer, tmp_path / "empty.jsonl", tmp_path / "d1")
    path = write_jsonl(tmp_path / "kept.jsonl", kept_rows(tokenizer, 3))
    with pytest.raises(ValueError, match=r"3 of 3 examples exceed max_seq_len=8"), path.open("rb") as lines:
        chunks = (examples_from_kept(c) for c in read_chunks(lines, 1))
        write_tokenized(chunks, lambda ex: encode_example(tokenizer, ex), tmp_path / "d2", 8)
    (tmp_path / "broken.jsonl").write_text('{"prompt": "x"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2 of the kept set is not JSON"):
        list(read_chunks((tmp_path / "broken.jsonl").open("rb")))


def test_a_tokenised_set_on_disk_trains_exactly_like_the_list(tokenizer: Any, tmp_path: Path) -> None:
    rows = kept_rows(tokenizer, 10)
    tset = tokenized(tokenizer, write_jsonl(tmp_path / "kept.jsonl", rows), tmp_path / "data")
    params = TrainParams(learning_rate=1e-3, batch_size=4, epochs=2, packing=True, max_seq_len=256)
    models = [tiny(tokenizer), tiny(tokenizer)]
    features = tokenize_examples(tokenizer, examples_from_kept(rows), 256)
    a = train_features(models[0], features, params, pad_id=0, device="cpu")
    b = train_features(models[1], tset, params, pad_id=0, device="cpu")  # type: ignore[arg-type]
    _same_weights(models[0], models[1])
    assert (a.tokens, a.input_tokens, a.loss_last) == (b.tokens, b.input_tokens, b.loss_last)


# --- validation-driven stopping -----------------------------------------------------------------


def test_validation_keeps_the_best_epoch_and_stops_after_patience(tokenizer: Any, tmp_path: Path) -> None:
    features = tokenize_examples(tokenizer, examples_from_kept(kept_rows(tokenizer, 8)), 256)
    rewards = iter([0.2, 0.5, 0.5, 0.4, 0.9, 0.9])  # best at epoch 2; 3 and 4 do not beat it
    params = TrainParams(learning_rate=1e-3, batch_size=4, epochs=6, patience=2)
    stopped = tiny(tokenizer)
    stats = train_features(
        stopped, features, params, pad_id=0, device="cpu", hooks=Hooks(validate=lambda: next(rewards))
    )
    assert stats.validation_rewards == [0.2, 0.5, 0.5, 0.4] and stats.best_epoch == 2
    assert stats.steps == 4 * 2 and stats.epochs == 4  # stopped after epoch 4, not 6
    # the checkpoint holds epoch 2's weights: those of a plain 2-epoch run (constant lr, same order)
    two = tiny(tokenizer)
    train_features(
        two, features, TrainParams(learning_rate=1e-3, batch_size=4, epochs=2), pad_id=0, device="cpu"
    )
    _same_weights(stopped, two)


def test_a_resumed_run_keeps_the_validation_history_and_best_weights(tokenizer: Any, tmp_path: Path) -> None:
    features = tokenize_examples(tokenizer, examples_from_kept(kept_rows(tokenizer, 8)), 256)
    params = TrainParams(learning_rate=1e-3, batch_size=4, epochs=4, patience=3, checkpoint_every_steps=2)
    table = [0.3, 0.6, 0.1, 0.2]  # best epoch 2; epoch 4 is the last (epochs=4) and not the best
    full = tiny(tokenizer)
    seen: list[float] = []

    def validate() -> float:
        seen.append(table[len(seen)])
        return seen[-1]

    stats = train_features(full, features, params, pad_id=0, device="cpu", hooks=Hooks(validate=validate))
    assert stats.best_epoch == 2 and stats.validation_rewards == table

    states: dict[int, Path] = {}

    def keep(step: int, src: Path) -> None:  # a copy of each state, as the store would hold it
        import shutil

        states[step] = Path(shutil.copytree(src, tmp_path / f"state-{step}"))

    seen.clear()
    hooks = Hooks(
        validate=validate,
        on_state=keep,
        scratch_dir=tmp_path / "scratch",
        should_stop=lambda: len(states) >= 3,
    )
    train_features(
        tiny(tokenizer), features, params, pad_id=0, device="cpu", hooks=hooks
    )  # killed after step 6
    assert sorted(states) == [2, 4, 6] and (states[6] / "best.safetensors").is_file()
    assert (
        list((tmp_path / "scratch").iterdir()) == []
    )  # states were written under the work dir, then removed
    resumed_model = tiny(tokenizer)
    del seen[3:]  # the resumed run validates epoch 4 only
    resumed = train_features(
        resumed_model,
        features,
        params,
        pad_id=0,
        device="cpu",
        hooks=Hooks(validate=validate),
        resume_from=states[6],
    )
    assert resumed.resumed_from_step == 6 and resumed.validation_rewards == table and resumed.best_epoch == 2
    _same_weights(full, resumed_model)


def test_the_validator_decodes_greedily_and_asks_the_scorer(tokenizer: Any) -> None:
    model = tiny(tokenizer)
    problems = [{"id": f"p{i}", "question": f"What is {i} + 1?", "answer": i + 1} for i in (3, 1, 2)]
    params = GenerationParams(greedy=True, max_new_tokens=5)
    vset = ValidationSet.build("arithmetic", problems, lambda m: render_prompt(tokenizer, m), params)
    assert vset.references == ["2", "3", "4"]  # problems in id order
    asked: list[tuple[list[str], list[str]]] = []

    def scorer(references: Any, completions: Any) -> list[bool]:
        asked.append((list(references), list(completions)))
        return [r != "3" for r in references]

    reward = make_validator(model, tokenizer, "cpu", vset, scorer)()
    assert reward == pytest.approx(2 / 3)
    expected = TransformersGenerator(model, tokenizer, device="cpu").generate(vset.prompts, params)
    assert asked == [(["2", "3", "4"], [o[0].text for o in expected])]
    assert model.training  # the training loop's mode is restored after decoding


# --- the train handler end to end (store in, checkpoint out) -------------------------------------


def test_the_train_handler_streams_trains_uploads_and_cleans_up(tokenizer: Any, tmp_path: Path) -> None:
    from restem.common.v1 import common_pb2
    from restem.events.v1 import events_pb2 as ev

    from services.trainer.config import TrainerConfig
    from services.trainer.core import TRAIN_SUMMARY
    from services.trainer.events import TrainHandler
    from shared.llm.checkpoint import save_checkpoint
    from shared.store import LocalStore

    base = tmp_path / "base"
    save_checkpoint(tiny(tokenizer), tokenizer, base)
    store = LocalStore(tmp_path / "store")
    store.put_bytes(
        "runs/r/iter-1/kept.jsonl", "".join(json.dumps(r) + "\n" for r in kept_rows(tokenizer, 6)).encode()
    )
    work = tmp_path / "work"
    handler = TrainHandler(None, store, None, TrainerConfig(work_dir=work), "cpu")  # type: ignore[arg-type]
    params = common_pb2.TrainParams(
        learning_rate=1e-3, epochs=1, batch_size=4, max_steps=3, max_seq_len=256, checkpoint_every_steps=1
    )
    job = ev.TrainJob(
        kept_key="runs/r/iter-1/kept.jsonl", output_key="runs/r/iter-1/checkpoint", params=params
    )
    steps: list[int] = []
    summary = handler._train(job, base, lambda report: steps.append(report.step))
    assert steps == [1, 2, 3] and summary["steps"] == 3 and summary["examples"] == 6
    assert json.loads(store.get_bytes(f"runs/r/iter-1/checkpoint/{TRAIN_SUMMARY}"))["steps"] == 3
    assert store.dir_exists("runs/r/iter-1/checkpoint")
    assert not (store.root / "runs/r/iter-1/checkpoint-state").exists()  # states deleted, no empty dirs left
    assert list(work.iterdir()) == []  # the M-step's scratch (kept copy, tokenised set, states) is gone


@pytest.mark.parametrize(
    ("base_dtype", "save_dtype", "stored"),
    [("bfloat16", "auto", "BF16"), ("bfloat16", "float32", "F32"), ("float32", "auto", "F32")],
)
def test_the_trained_checkpoint_keeps_the_base_models_dtype_unless_told(
    tokenizer: Any, tmp_path: Path, base_dtype: str, save_dtype: str, stored: str
) -> None:
    import torch
    from restem.common.v1 import common_pb2
    from restem.events.v1 import events_pb2 as ev
    from safetensors import safe_open

    from services.trainer.config import TrainerConfig
    from services.trainer.events import TrainHandler
    from shared.llm.checkpoint import save_checkpoint
    from shared.store import LocalStore

    base = tmp_path / "base"
    save_checkpoint(tiny(tokenizer).to(getattr(torch, base_dtype)), tokenizer, base)
    store = LocalStore(tmp_path / "store")
    store.put_bytes("k.jsonl", "".join(json.dumps(r) + "\n" for r in kept_rows(tokenizer, 4)).encode())
    handler = TrainHandler(None, store, None, TrainerConfig(work_dir=tmp_path / "work"), "cpu")  # type: ignore[arg-type]
    params = common_pb2.TrainParams(
        learning_rate=1e-3, batch_size=4, max_steps=1, max_seq_len=256, save_dtype=save_dtype
    )
    handler._train(ev.TrainJob(kept_key="k.jsonl", output_key="out", params=params), base, None)
    store.get_dir("out", tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
    assert dtypes == {stored}
