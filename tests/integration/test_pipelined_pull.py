"""A pipelined worker (the sampler's) over a real nats-server: it pulls its next job once the last
one's generation is over (`model_done`), so that job's output is written while the next one
generates; it never pulls a job while one is generating, and a job that ends without
`model_done` (an error, output already written) frees the model when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import pytest

from shared.bus import Delivery, EventBus
from shared.ordering import model_done

pytestmark = pytest.mark.integration


async def _until(cond: object, what: str) -> None:
    deadline = time.monotonic() + 15
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_the_next_job_is_pulled_once_the_model_is_free_not_before(bus: EventBus) -> None:
    log: list[tuple[str, str]] = []
    generating: list[str] = []
    started = {f"job-{i}": asyncio.Event() for i in range(4)}

    async def handle(d: Delivery) -> None:
        job = d.msg_id or ""
        log.append(("start", job))
        started[job].set()
        if job == "job-2":  # ends without model_done (say its output was already written)
            log.append(("end", job))
            return
        generating.append(job)
        assert len(generating) == 1, f"two jobs hold the model: {generating}"
        await asyncio.sleep(0.05)  # generation
        generating.remove(job)
        log.append(("model_done", job))
        model_done()
        if job == "job-0":  # writing its output: finishes only once the next job has started
            await asyncio.wait_for(started["job-1"].wait(), 10)
        log.append(("end", job))

    for i in range(4):
        await bus.publish_job("sample", "run-p", b"x", msg_id=f"job-{i}")
    stop = asyncio.Event()
    worker = asyncio.create_task(bus.run_worker("sample", handle, stop=stop, concurrency=2, pipelined=True))
    try:
        await _until(lambda: sum(1 for kind, _ in log if kind == "end") == 4, "four jobs done")
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker, 15)
    at = {entry: i for i, entry in enumerate(log)}
    order = [job for kind, job in log if kind == "start"]
    assert sorted(order) == [f"job-{i}" for i in range(4)]
    for before, after in itertools.pairwise(order):
        # each job is pulled after the one before it let go of the model ...
        freed = at.get(("model_done", before), at[("end", before)])
        assert at[("start", after)] > freed, log
    first, second = order[0], order[1]
    if first == "job-0":  # ... and while that one was still writing its output
        assert at[("start", second)] < at[("end", first)], log
