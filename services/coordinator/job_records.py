"""Every job the coordinator publishes is first recorded in the store, so a restarted coordinator can
re-publish the ones a run still waits for (`reconcile`), whatever happened to the queue.

A record is `runs/<run_id>/jobs/<type>/<job_id>.pb`: the job's message, written before the publish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message
from restem.events.v1 import events_pb2 as ev

from shared import keys
from shared.ordering import gather_bounded
from shared.store import ArtifactStore

from . import core

log = logging.getLogger("restem.coordinator.jobs")
T = TypeVar("T")

JOB_MESSAGES: dict[str, type[Message]] = {
    "prepare": ev.PrepareJob,
    "sample": ev.SampleJob,
    "verify": ev.VerifyJob,
    "train": ev.TrainJob,
    "eval": ev.EvalJob,
}


def jobs_prefix(run_id: str) -> str:
    return f"{keys.run_prefix(run_id)}/jobs/"


def job_record_key(job: core.Job) -> str:
    return f"{jobs_prefix(job.message.run_id)}{job.job_type}/{job.job_id}.pb"  # type: ignore[attr-defined]


IO_CONCURRENCY = 32
"""Store reads/writes and publishes in flight at once: a round trip costs milliseconds, a fan-out has
up to thousands of jobs, and a coordinator needs no more threads than this to hide the latency."""
_IO = ThreadPoolExecutor(max_workers=IO_CONCURRENCY, thread_name_prefix="job-records")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_IO, fn, *args)


async def record_jobs(store: ArtifactStore, jobs: Sequence[core.Job]) -> None:
    """Write each job's message where `reconcile_run` finds it (before it is published)."""
    await record_and_publish(store, jobs, None)


async def record_and_publish(
    store: ArtifactStore, jobs: Sequence[core.Job], publish: Callable[[core.Job], Awaitable[object]] | None
) -> None:
    """Record each job, then publish it (the record first: a restarted coordinator re-publishes
    from records), `IO_CONCURRENCY` jobs at a time, so the first job is out after one round trip."""

    async def one(job: core.Job) -> None:
        await _in_thread(store.put_bytes, job_record_key(job), job.message.SerializeToString())
        if publish is not None:
            await publish(job)

    await gather_bounded(IO_CONCURRENCY, (one(job) for job in jobs))


async def recorded_jobs(
    store: ArtifactStore, run_id: str, job_types: Iterable[str] = tuple(JOB_MESSAGES)
) -> list[core.Job]:
    """The jobs of `job_types` recorded for a run, read concurrently; an unreadable record is logged
    and skipped."""
    wanted = set(job_types)
    prefix = jobs_prefix(run_id)

    async def read(key: str) -> core.Job | None:
        job_type, _, name = key[len(prefix) :].partition("/")
        cls = JOB_MESSAGES.get(job_type)
        if cls is None or not name.endswith(".pb") or job_type not in wanted:
            return None
        try:
            msg = cls.FromString(await _in_thread(store.get_bytes, key))
        except DecodeError:
            log.error("job record %s is corrupt; skipped", key)
            return None
        return core.Job(job_type, msg, name.removesuffix(".pb"))

    keys_found = await _in_thread(store.list, prefix)
    jobs = await gather_bounded(IO_CONCURRENCY, (read(key) for key in keys_found))
    return [job for job in jobs if job is not None]
