"""The demo config through the local stack: held-out accuracy must rise (make test-slow, ~6-10 min)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.client.client import RunClient
from shared.client.stack import down, up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DEMO = Path(__file__).resolve().parents[2] / "examples" / "arithmetic-demo.yaml"


def test_demo_raises_held_out_accuracy(tmp_path):
    stack = up(tmp_path / "stack")
    try:
        with RunClient(stack.coordinator) as client:
            run = client.start_run(DEMO.read_text())
            for _ in client.watch_run(run.run_id, timeout_s=3600):
                pass
            report = client.report(run.run_id)
    finally:
        down(tmp_path / "stack")
    assert report["status"] == "succeeded", report["error"]
    test = [r["test_pass_at_1"] for r in report["iterations"]]
    assert test[0] < 0.10, f"the base should be weak on this task: {test}"
    assert max(test[1:]) >= 0.60, (
        f"ReST-EM should reach 60% held-out pass@1 within the demo's iterations: {test}"
    )
    train = [r["train_pass_rate"] for r in report["iterations"][1:]]
    assert all(r["kept"] > 0 for r in report["iterations"][1:]), "every iteration should keep samples"
    assert train == sorted(train), f"the E-step's pass rate should rise as the policy improves: {train}"
