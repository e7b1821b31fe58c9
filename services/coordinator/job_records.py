"""Every job the coordinator publishes is first recorded in the store, so a restarted coordinator can
re-publish the ones a run still waits for (`reconcile`), whatever happened to the queue.

A record is `runs/<run_id>/jobs/<type>/<job_id>.pb`: the job's message, written before the publish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from google.protobuf.message import DecodeError, Message
from restem.events.v1 import events_pb2 as ev

from shared import keys
from shared.store import ArtifactStore

from . import core

log = logging.getLogger("restem.coordinator.jobs")

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


async def record_jobs(store: ArtifactStore, jobs: Sequence[core.Job]) -> None:
    """Write each job's message where `reconcile_run` finds it (before it is published)."""
    for job in jobs:
        data = job.message.SerializeToString()
        await asyncio.to_thread(store.put_bytes, job_record_key(job), data)


async def recorded_jobs(store: ArtifactStore, run_id: str) -> list[core.Job]:
    """The jobs recorded for a run; an unreadable record is logged and skipped."""
    found = []
    prefix = jobs_prefix(run_id)
    for key in await asyncio.to_thread(store.list, prefix):
        job_type, _, name = key[len(prefix) :].partition("/")
        cls = JOB_MESSAGES.get(job_type)
        if cls is None or not name.endswith(".pb"):
            continue
        try:
            msg = cls.FromString(await asyncio.to_thread(store.get_bytes, key))
        except DecodeError:
            log.error("job record %s is corrupt; skipped", key)
            continue
        found.append(core.Job(job_type, msg, name.removesuffix(".pb")))
    return found
