"""The small form of `make chaos` that `make test` runs: one EM iteration of a small arithmetic run
under SIGKILLs of all five services (each phase hit) and one nats-server crash, compared with the
same run undisturbed. The full form (`make chaos`: two iterations, >= 15 kills, two NATS crashes)
is too long for CI; this one keeps the guarantee checked on every change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared.client.stack import SERVICES
from tests.chaos.chaos import PHASES, chaos_test

pytestmark = pytest.mark.e2e


def test_small_run_survives_kills_of_every_service_and_a_nats_crash(tmp_path: Path) -> None:
    outcome = chaos_test(
        kills=5,
        nats_restarts=1,
        iterations=1,
        size="small",
        seed=1,
        timeout_s=600,
        state=tmp_path / "stack",
    )
    chaos = outcome.chaos
    assert outcome.chaos_run.run.status == pb.RUN_STATUS_SUCCEEDED, outcome.chaos_run.run.error
    assert outcome.clean.run.status == pb.RUN_STATUS_SUCCEEDED, outcome.clean.run.error
    assert all(chaos.total(s) >= 1 for s in SERVICES), dict(chaos.kills)
    assert all(chaos.phase_total(p) >= 1 for p in PHASES.values()), dict(chaos.kills)
    assert chaos.total() >= 5 and len(chaos.nats_restarts) == 1
    # Not vacuous: the clean run kept samples, and the disturbed run kept exactly the same bytes.
    assert outcome.clean.kept[1], "the clean run kept nothing; the comparison would prove nothing"
    assert outcome.chaos_run.kept == outcome.clean.kept
    assert outcome.chaos_run.counts() == outcome.clean.counts()
    assert outcome.chaos_run.metrics() == outcome.clean.metrics()
    assert outcome.passed
