"""Concurrency helpers of the control plane.

`KeyedOrder`: the same key one at a time in submission order, other keys in parallel (the
coordinator applies the events of different runs concurrently while each run still sees its own
events in stream order). `gather_bounded`: many store writes or publishes with bounded concurrency
(a fan-out of a thousand jobs is not a thousand round trips one after another). `ModelSlot`: a
worker's pipelined pull (its next job is taken once the model is free, not when the last job is
done).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class KeyedOrder:
    """At most `limit` pieces of work run at once; work queued behind its key does not count."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self._tails: dict[str, asyncio.Future[None]] = {}
        self._slots = asyncio.Semaphore(limit)

    async def run(
        self,
        key: str,
        work: Coroutine[Any, Any, None],
        while_waiting: Coroutine[Any, Any, None] | None = None,
    ) -> None:
        """Run `work` after every earlier `run` of `key` has finished (whatever its outcome).

        `while_waiting` runs only until `work` may start (e.g. a heartbeat that keeps a queued
        message from being redelivered) and is then cancelled.
        """
        prev = self._tails.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[key] = mine
        try:
            if prev is not None and not prev.done():
                waiter = asyncio.ensure_future(while_waiting) if while_waiting is not None else None
                try:
                    await asyncio.wait({prev})  # never raises, even when the earlier work failed
                finally:
                    if waiter is not None:
                        waiter.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await waiter
            elif while_waiting is not None:
                while_waiting.close()
            async with self._slots:
                await work
        finally:
            work.close()  # a no-op once awaited; stops a coroutine that never ran (cancelled while queued)
            mine.set_result(None)
            if self._tails.get(key) is mine:
                del self._tails[key]


async def gather_bounded(limit: int, work: Iterable[Awaitable[T]]) -> list[T]:
    """Await every piece of `work`, at most `limit` at a time; results in input order.

    The first failure is raised once the pieces already started have finished (none is left
    running in the background); pieces not yet started are not started.
    """
    slots = asyncio.Semaphore(limit)
    failed = False

    async def one(aw: Awaitable[T]) -> T:
        nonlocal failed
        async with slots:
            if failed:
                if asyncio.iscoroutine(aw):
                    aw.close()
                raise asyncio.CancelledError
            try:
                return await aw
            except BaseException:
                failed = True
                raise

    results = await asyncio.gather(*(one(aw) for aw in work), return_exceptions=True)
    errors = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    ]
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


class ModelSlot:
    """A replica's model, held by one job at a time from its pull to the end of its generation.

    The worker claims the slot before it pulls a job and the job gives it back with `model_done()`
    once its generation is over (or when it ends, whichever is first), so the replica pulls its next
    job while the last one still writes its output and announces it: the GPU does not wait for
    the store. The replica never holds a job it cannot start soon (a pulled job waits at most for
    the one generation before it), so fair share between runs is kept.
    """

    def __init__(self) -> None:
        self._free = asyncio.Semaphore(1)

    async def claim(self, stopped: asyncio.Future[Any]) -> bool:
        """Wait for the slot; False when `stopped` completes first."""
        claim = asyncio.ensure_future(self._free.acquire())
        await asyncio.wait({claim, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if claim.done():
            return True
        claim.cancel()
        return False

    def release(self) -> None:
        self._free.release()

    def start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run the job that holds the slot; the slot is free at its `model_done()` or its end."""
        held = [True]

        def done(*_: Any) -> None:
            if held[0]:
                held[0] = False
                self.release()

        token = _MODEL_DONE.set(done)
        try:
            task = asyncio.create_task(work)  # the task's context carries `done`
        finally:
            _MODEL_DONE.reset(token)
        task.add_done_callback(done)
        return task


_MODEL_DONE: contextvars.ContextVar[Any] = contextvars.ContextVar("restem_model_done", default=None)


def model_done() -> None:
    """Called by a job when it no longer needs the model (a no-op outside a pipelined worker)."""
    done = _MODEL_DONE.get()
    if done is not None:
        done()
