"""Base models named by a Hugging Face Hub id, without reaching the Hub: huggingface_hub fills its own
cache from a local stand-in of the Hub's file API (tests/fixtures/hub.py), and the trainer's
prepare job, offline, imports the model from that cache into the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.trainer.config import HubSettings
from services.trainer.events import PrepareHandler
from shared.bus import EventBus, PermanentError
from shared.models import hub_id, hub_store_key
from shared.store import LocalStore
from tests.fixtures.hub import serve_repo

pytestmark = pytest.mark.integration

FILL = "import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1], revision='main', cache_dir=sys.argv[2], endpoint=sys.argv[3])"


def _fill_cache(repo: str, model_dir: Path, cache: Path) -> None:
    """huggingface_hub itself downloads the repository into `cache` (in a process of its own, which
    is online: this one may have imported huggingface_hub offline)."""
    files = {str(p.relative_to(model_dir)): p for p in model_dir.rglob("*") if p.is_file()}
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    with serve_repo(repo, files) as endpoint:
        run = subprocess.run(
            [sys.executable, "-c", FILL, repo, str(cache), endpoint],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr


def test_a_hub_id_is_a_model_unless_a_local_path_has_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert hub_id("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", "main")
    assert hub_id("org/name@3f2a9c1") == ("org/name", "3f2a9c1")
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert hub_id("models/mine") is None and hub_id("./org/name") is None and hub_id("builtin:x") is None
    assert hub_store_key("org/name", "main") != hub_store_key("org/name", "v2")


async def test_the_prepare_job_imports_a_hub_model_from_the_cache_offline(
    nats_config: Any, tmp_path: Path
) -> None:
    from restem.events.v1 import events_pb2 as ev

    from shared.llm.checkpoint import save_checkpoint
    from tests.fixtures.models import smollm2_tokenizer, tiny_llama

    tokenizer = smollm2_tokenizer()
    save_checkpoint(tiny_llama(tokenizer), tokenizer, tmp_path / "tiny")
    cache = tmp_path / "hf"
    _fill_cache("acme/tiny-llama", tmp_path / "tiny", cache)
    store = LocalStore(tmp_path / "store")
    bus = await EventBus.connect(nats_config, name="test-trainer")
    await bus.ensure_topology()
    try:
        handler = PrepareHandler(
            bus, store, tmp_path / "work", hub=HubSettings(offline=True, cache_dir=cache)
        )
        key = hub_store_key("acme/tiny-llama", "main")
        await handler(
            ev.PrepareJob(run_id="r-000001", job_id="p1", model_source="acme/tiny-llama", model_key=key)
        )
        with pytest.raises(
            PermanentError,
            match=r"acme/other@main is not in the Hugging Face cache and the trainer is offline",
        ):
            await handler(
                ev.PrepareJob(run_id="r-000001", job_id="p2", model_source="acme/other", model_key="models/x")
            )
    finally:
        await bus.close()
    assert store.dir_exists(key) and (cache / "models--acme--tiny-llama" / "refs" / "main").is_file()
