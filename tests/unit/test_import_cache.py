"""The trainer's host cache of converted base models: a model converted once is never converted
again for another store, and an entry is trusted only when it is complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.trainer.core import MODEL_INFO
from services.trainer.events import PrepareHandler
from shared.llm.checkpoint import CheckpointError
from shared.store import LocalStore
from tests.fixtures.models import smollm2_tokenizer, tiny_llama

KEY = "models/tiny-llama-0123456789abcdef"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = smollm2_tokenizer()
    path = tmp_path_factory.mktemp("hf") / "tiny"
    tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _handler(tmp: Path, name: str, cache: Path | None) -> tuple[PrepareHandler, LocalStore]:
    store = LocalStore(tmp / name)
    return PrepareHandler(None, store, tmp / f"work-{name}", cache), store  # type: ignore[arg-type]


def _files(store: LocalStore) -> dict[str, object]:
    """Every file of the model in the store; of the manifest, what it lists (not when it was made)."""
    files: dict[str, object] = {k: store.get_bytes(k) for k in store.list(KEY + "/")}
    files[f"{KEY}/MANIFEST.json"] = json.loads(files[f"{KEY}/MANIFEST.json"])["files"]  # type: ignore[arg-type]
    return files


def test_a_second_store_gets_the_cached_conversion_without_the_source(tmp_path: Path, source: Path) -> None:
    cache = tmp_path / "imports"
    first, store1 = _handler(tmp_path, "a", cache)
    info = first._import(source, KEY)
    assert info["architecture"] == "LlamaForCausalLM"
    assert (cache / "models--tiny-llama-0123456789abcdef" / MODEL_INFO).is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".importing-")]

    gone = tmp_path / "moved"
    shutil.move(source, gone)  # a conversion would fail now: only the cache can serve the model
    try:
        second, store2 = _handler(tmp_path, "b", cache)
        assert second._import(source, KEY) == json.loads(json.dumps(info, default=str))
        assert _files(store2) == _files(store1) and any(k.endswith(".safetensors") for k in _files(store2))
        without_cache, _ = _handler(tmp_path, "c", None)
        with pytest.raises(CheckpointError):
            without_cache._import(source, KEY)
    finally:
        shutil.move(gone, source)


def test_an_incomplete_cache_entry_is_converted_again_and_replaced(tmp_path: Path, source: Path) -> None:
    cache = tmp_path / "imports"
    stale = cache / "models--tiny-llama-0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half a file")  # no MODEL_INFO: never completed
    handler, store = _handler(tmp_path, "a", cache)
    handler._import(source, KEY)
    assert (stale / MODEL_INFO).is_file()
    assert store.get_bytes(f"{KEY}/model.safetensors") == (stale / "model.safetensors").read_bytes()
    assert (stale / "model.safetensors").stat().st_size > 1000
