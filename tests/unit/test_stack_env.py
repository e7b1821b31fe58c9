"""The environment local services start with (`shared.client.stack.service_env`)."""

from __future__ import annotations

from shared.client.stack import service_env


def test_services_wait_passively_unless_the_caller_says_otherwise() -> None:
    env = service_env({"PATH": "/usr/bin", "RESTEM_HOME": "/tmp/x"})
    assert env == {"PATH": "/usr/bin", "RESTEM_HOME": "/tmp/x", "OMP_WAIT_POLICY": "PASSIVE"}
    assert service_env({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_callers_environment_is_copied_not_changed() -> None:
    caller = {"PATH": "/usr/bin"}
    service_env(caller)["EXTRA"] = "1"
    assert caller == {"PATH": "/usr/bin"}
