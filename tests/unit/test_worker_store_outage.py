"""A job rides out a short store outage in place instead of using up its deliveries."""

import pytest

from shared.store import StoreUnavailable
from shared.worker import _riding_out_store_outages


async def test_a_store_outage_is_retried_then_the_job_completes():
    calls = []

    async def handle(job: str) -> None:
        calls.append(job)
        if len(calls) == 1:
            raise StoreUnavailable("S3 store x: could not read 'k' after 5 tries")

    await _riding_out_store_outages(handle, "job", "sample", "j1", budget_s=30.0)
    assert calls == ["job", "job"]


async def test_an_outage_longer_than_the_budget_fails_the_attempt():
    async def handle(job: str) -> None:
        raise StoreUnavailable("down")

    with pytest.raises(StoreUnavailable):
        await _riding_out_store_outages(handle, "job", "sample", "j1", budget_s=0.0)


async def test_other_errors_are_not_retried_here():
    calls = []

    async def handle(job: str) -> None:
        calls.append(job)
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        await _riding_out_store_outages(handle, "job", "sample", "j1", budget_s=30.0)
    assert calls == ["job"]
