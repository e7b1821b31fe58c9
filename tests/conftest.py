"""Test plugins: real servers started per test on free ports (see tests/fixtures)."""

import shared  # noqa: F401  (puts the generated stubs on the import path)

pytest_plugins = ["tests.fixtures.nats", "tests.fixtures.s3"]
