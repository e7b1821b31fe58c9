"""The local stack on a real S3 server (SeaweedFS, credentials checked): the production store path."""

from __future__ import annotations

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.client.client import RunClient
from shared.client.stack import down, up
from shared.store import open_store
from shared.tasks import loads_jsonl

pytestmark = pytest.mark.e2e

TINY = """
task:
  name: arithmetic
  arithmetic: {train: 8, validation: 4, test: 8}
em: {iterations: 1, cutoff: 2, shard_size: 8}
sampling: {n: 8, max_new_tokens: 32, seed: 3}
training: {epochs: 1, batch_size: 8}
"""


def test_a_run_on_s3_keeps_every_artifact_there(tmp_path, s3_store_config, monkeypatch):
    # Secrets reach the services through their environment, never through config files.
    monkeypatch.setenv("RESTEM_S3_ACCESS_KEY", s3_store_config.access_key.get_secret_value())
    monkeypatch.setenv("RESTEM_S3_SECRET_KEY", s3_store_config.secret_key.get_secret_value())
    stack = up(tmp_path / "stack", s3=s3_store_config)
    try:
        configs = "".join(p.read_text() for p in (tmp_path / "stack" / "config").glob("*.yaml"))
        assert s3_store_config.secret_key.get_secret_value() not in configs
        with RunClient(stack.coordinator) as client:
            run = client.start_run(TINY)
            last = list(client.watch_run(run.run_id, timeout_s=900))[-1]
    finally:
        down(tmp_path / "stack")
    assert last.status == pb.RUN_STATUS_SUCCEEDED, last.error
    assert not (tmp_path / "stack" / "store").exists(), "nothing may land in a local store"
    store = open_store(s3_store_config)
    assert store.dir_exists(last.base_model_key)
    samples = loads_jsonl(store.get_bytes(keys.samples_key(last.run_id, 1, 0)))
    assert len(samples) == 64
    assert store.exists(keys.report_key(last.run_id, "report.json"))
    for split in ("validation", "test"):
        assert store.exists(keys.eval_key(last.run_id, 1, split))
