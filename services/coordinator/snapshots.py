"""Run records mirrored into the store, so that the store alone can bring runs back.

NATS KV holds the live run records; a lost NATS volume would take every run with it. After each
successful write of a run the coordinator also puts the record at `run-states/<run_id>.pb`
(`shared.keys.state_key`). Writes are coalesced per run: while one is in flight, later states
replace each other and only the newest is written next, so a fast E-step costs at most one write
in flight per run. A finished run's record is written before the event that finished it is acked.

`recover` recreates, for every snapshot whose run NATS does not know, the KV record; the caller
then re-enters the running ones (`reconcile.reconcile_run`). A snapshot may be a few events behind
the record it mirrors: re-entering re-publishes the jobs that state still waits for, and a job whose
output is already stored only re-announces it (every write is idempotent by key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.kv import RunStateKV
from shared.store import ArtifactStore

log = logging.getLogger("restem.coordinator.snapshots")


class Snapshots:
    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._latest: dict[str, bytes] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._warned = False

    def _put(self, run_id: str, data: bytes) -> None:
        self.store.put_bytes(keys.state_key(run_id), data)

    async def _write(self, run_id: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._put, run_id, data)
            self._warned = False
        except Exception as exc:  # the KV still holds the run; the next write catches up
            if not self._warned:
                log.warning(
                    "run %s: state snapshot not written (%s); will retry with the next change", run_id, exc
                )
                self._warned = True

    async def _drain(self, run_id: str) -> None:
        while (data := self._latest.pop(run_id, None)) is not None:
            await self._write(run_id, data)
        self._writers.pop(run_id, None)

    async def note(self, run: pb.Run) -> None:
        """Mirror the run's new state: now for a finished run, else in the background."""
        data = run.SerializeToString()
        if run.status in (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED, pb.RUN_STATUS_CANCELLED):
            self._latest.pop(run.run_id, None)
            writer = self._writers.get(run.run_id)
            if writer is not None:
                with contextlib.suppress(Exception):
                    await writer
            await self._write(run.run_id, data)
            return
        self._latest[run.run_id] = data
        if run.run_id not in self._writers:
            self._writers[run.run_id] = asyncio.create_task(self._drain(run.run_id))

    async def flush(self) -> None:
        """Wait for every pending write (shutdown, tests)."""
        while self._writers:
            await asyncio.gather(*list(self._writers.values()), return_exceptions=True)


def stored_run_ids(store: ArtifactStore) -> list[str]:
    return [
        key[len(keys.STATE_PREFIX) : -len(".pb")]
        for key in store.list(keys.STATE_PREFIX)
        if key.endswith(".pb")
    ]


async def recover(store: ArtifactStore, kv: RunStateKV) -> tuple[list[pb.Run], list[str]]:
    """(runs recreated in the KV from their snapshots, run ids the KV already had)."""
    recovered: list[pb.Run] = []
    present: list[str] = []
    for run_id in await asyncio.to_thread(stored_run_ids, store):
        if await kv.get(run_id) is not None:
            present.append(run_id)
            continue
        data = await asyncio.to_thread(store.get_bytes, keys.state_key(run_id))
        run = pb.Run.FromString(data)
        await kv.create(run_id, data)
        log.info("run %s recovered from its snapshot (%s)", run_id, pb.RunStatus.Name(run.status))
        recovered.append(run)
    return recovered, present
