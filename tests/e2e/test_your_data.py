"""Your own data and your own model, on a stack whose store is S3: `restem run` from the user's
directory uploads a GSM8K-format dataset and a model directory that exist only there, the run reads
both from the store after they are deleted, and a second run with the same files uploads nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.client.client import RunClient
from shared.client.stack import down, up
from shared.store import open_store
from tests.fixtures.models import smollm2_tokenizer, tiny_llama

pytestmark = pytest.mark.e2e

CONFIG = """\
name: your-data
task:
  name: gsm8k
  files: {train: data/train.jsonl, validation: data/val.jsonl, test: data/test.jsonl}
model: {base: ./my-model}
em: {iterations: 1, cutoff: 1, shard_size: 4}
sampling: {n: 2, max_new_tokens: 12}
training: {epochs: 1, batch_size: 2}
evaluation: {max_new_tokens: 12}
"""


def _write_client_dir(root: Path) -> None:
    from shared.llm.checkpoint import save_checkpoint

    data = root / "data"
    data.mkdir(parents=True)
    for name, n, start in (("train", 8, 0), ("val", 2, 50), ("test", 3, 80)):
        rows = [
            {"question": f"What is {i} + 2?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
            for i in range(start, start + n)
        ]
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = smollm2_tokenizer()
    save_checkpoint(tiny_llama(tokenizer, seed=7), tokenizer, root / "my-model")
    (root / "run.yaml").write_text(CONFIG)


def _restem(stack: Any, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RESTEM_HOME": str(stack.state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "shared.client", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_run_reads_your_dataset_and_model_from_the_store(
    tmp_path: Path, s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESTEM_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("RESTEM_S3_SECRET_KEY", s3_server.secret_key)
    store_cfg = s3_server.config()
    stack = up(tmp_path / "stack", s3=store_cfg)
    laptop = tmp_path / "laptop"
    try:
        _write_client_dir(laptop)
        first = _restem(stack, laptop, "run", "run.yaml")
        assert first.returncode == 0, first.stderr
        run_id = first.stdout.split("started run ")[1].split()[0]
        for path in sorted(laptop.rglob("*"), reverse=True):  # gone before the E-step starts
            path.unlink() if path.is_file() else path.rmdir()
        with RunClient(stack.coordinator) as client:
            last = list(client.watch_run(run_id, timeout_s=600))[-1]
        assert last.status == pb.RUN_STATUS_SUCCEEDED, last.error
        store = open_store(s3_server.config(bucket=store_cfg.bucket))
        uploaded = store.list("files/")
        _write_client_dir(laptop)  # the same files again, byte for byte, for a second run
        (laptop / "run.yaml").write_text(CONFIG.replace("name: your-data", "name: your-data-again"))
        second = _restem(stack, laptop, "run", "run.yaml")
        assert second.returncode == 0, second.stderr
    finally:
        down(tmp_path / "stack")
    assert "uploaded" in first.stdout and "model of" in first.stdout
    assert "uploaded" not in second.stdout and second.stdout.count("already stored") == 3
    assert store.list("files/") == uploaded  # nothing new in the store
    assert last.base_model_key.startswith("models/my-model-") and store.dir_exists(last.base_model_key)
    stored_config = store.get_bytes(keys.config_key(run_id)).decode()
    assert "sha256:" in stored_config and "./my-model" not in stored_config and "data/" not in stored_config
    assert last.iterations[0].evals[0].num_problems in (2, 3)  # the uploaded splits were evaluated
