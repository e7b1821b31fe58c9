"""Test plugins: real servers started per test on free ports (see tests/fixtures)."""

pytest_plugins = [
    "tests.fixtures.nats",
    "tests.fixtures.s3",
    "tests.fixtures.mlflow",
    "tests.fixtures.verifier",
]
