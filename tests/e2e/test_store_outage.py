"""The local stack on a real S3 server (SeaweedFS, credentials checked), the production store path,
and that store unreachable for a while in the middle of a run (the network to S3 cut, then
restored): services report NOT_SERVING meanwhile, jobs wait in place instead of failing, and the run
completes with every artifact intact and in S3 (checkpoints are checked against their manifests on
download); the S3 secret reaches the services only through their environment.
"""

from __future__ import annotations

import time

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.client.client import RunClient, check_health
from shared.client.stack import SERVICES, down, up
from shared.store import open_store
from shared.tasks import loads_jsonl
from tests.fixtures.proxy import ThreadedProxy

pytestmark = pytest.mark.e2e

TINY = """
name: store-outage
task:
  name: arithmetic
  arithmetic: {train: 8, validation: 4, test: 8}
em: {iterations: 1, cutoff: 2, shard_size: 4}
sampling: {n: 8, max_new_tokens: 32, seed: 3}
training: {epochs: 1, batch_size: 8}
"""
OUTAGE_S = 15.0  # longer than the store probe's period (5 s) and S3's own retries


def _wait_for_phase(client: RunClient, run_id: str, phase: int, timeout_s: float) -> pb.Run:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        if run.phase == phase or run.status != pb.RUN_STATUS_RUNNING:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} never reached {pb.Phase.Name(phase)}")


def test_a_run_rides_out_a_store_outage(tmp_path, s3_server, monkeypatch):
    monkeypatch.setenv("RESTEM_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("RESTEM_S3_SECRET_KEY", s3_server.secret_key)
    proxy = ThreadedProxy(int(s3_server.endpoint.rsplit(":", 1)[1]))
    proxy.start()
    store_cfg = s3_server.config(endpoint=f"127.0.0.1:{proxy.port}")
    stack = up(tmp_path / "stack", s3=store_cfg)
    try:
        configs = "".join(p.read_text() for p in (tmp_path / "stack" / "config").glob("*.yaml"))
        assert s3_server.secret_key not in configs, "secrets go through the environment, never config files"
        with RunClient(stack.coordinator) as client:
            run_id = client.start_run(TINY).run_id
            run = _wait_for_phase(client, run_id, pb.PHASE_SAMPLING, 600)
            assert run.status == pb.RUN_STATUS_RUNNING, run.error
            proxy.cut()
            cut_at, seen = time.monotonic(), set()
            while time.monotonic() - cut_at < OUTAGE_S:
                for s in SERVICES:
                    if check_health(stack.address(s)) == "NOT_SERVING":
                        seen.add(s)
                time.sleep(0.5)
            proxy.start()  # the same port: the store is back
            last = list(client.watch_run(run_id, timeout_s=900))[-1]
    finally:
        down(tmp_path / "stack")
        proxy.close()
    assert seen == set(SERVICES), f"only {sorted(seen)} said NOT_SERVING while the store was cut"
    assert last.status == pb.RUN_STATUS_SUCCEEDED, last.error
    # Nothing lost or corrupt: every shard's samples, the kept set, the checkpoint (manifest-checked).
    store = open_store(s3_server.config(bucket=store_cfg.bucket))
    for shard in range(2):
        assert len(loads_jsonl(store.get_bytes(keys.samples_key(run_id, 1, shard)))) == 32
    assert store.exists(keys.kept_key(run_id, 1))
    assert last.iterations[1].checkpoint_key, "the M-step produced no checkpoint"
    store.get_dir(last.iterations[1].checkpoint_key, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "config.json").is_file()
    assert store.exists(keys.report_key(run_id, "report.json"))
    assert store.dir_exists(last.base_model_key)
    for split in ("validation", "test"):
        assert store.exists(keys.eval_key(run_id, 1, split))
    assert not (tmp_path / "stack" / "store").exists(), "nothing may land in a local store"
