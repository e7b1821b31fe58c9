"""The environment local services start with (`shared.client.stack.service_env`)."""

from __future__ import annotations

from shared.client.stack import service_env


def test_services_spin_briefly_unless_the_caller_sets_a_wait_policy() -> None:
    env = service_env({"PATH": "/usr/bin", "RESTEM_HOME": "/tmp/x"})
    assert env == {"PATH": "/usr/bin", "RESTEM_HOME": "/tmp/x", "GOMP_SPINCOUNT": "10000"}
    assert service_env({"GOMP_SPINCOUNT": "500"})["GOMP_SPINCOUNT"] == "500"
    assert service_env({"OMP_WAIT_POLICY": "PASSIVE"}) == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_the_callers_environment_is_copied_not_changed() -> None:
    caller = {"PATH": "/usr/bin"}
    service_env(caller)["EXTRA"] = "1"
    assert caller == {"PATH": "/usr/bin"}
