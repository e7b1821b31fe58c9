"""Abandoning a job whose run is over (cancelled, or failed elsewhere) while the job still runs.

The bus (``EventBus.run_worker(abandon_if=...)``) asks every few seconds whether a running job's run
is over; if so it sets the job's abandon flag, cancels the handler's task and terminates the message
(no redelivery). Cancelling the task frees the worker's slot at once, but a thread the handler is
waiting on (a generate or training call in ``asyncio.to_thread``) keeps running until it looks at
the flag: long loops call ``check()`` once per step, which raises ``Abandoned`` when the flag is set.
The flag travels in a context variable, which ``asyncio.to_thread`` copies into the thread, so no
signature between the bus and the loop has to carry it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar

_flag: ContextVar[threading.Event | None] = ContextVar("restem_abandon", default=None)


class Abandoned(Exception):
    """The job's run is over; its work is thrown away."""


def check() -> None:
    """Raise ``Abandoned`` if the current job was abandoned; free when no job is current."""
    flag = _flag.get()
    if flag is not None and flag.is_set():
        raise Abandoned("the run this job belongs to is over (cancelled or failed); work abandoned")


def abandoned() -> bool:
    flag = _flag.get()
    return flag is not None and flag.is_set()


@contextlib.contextmanager
def scope(flag: threading.Event) -> Iterator[None]:
    """Make `flag` the current job's abandon flag in this context (and in tasks/threads started from it)."""
    token = _flag.set(flag)
    try:
        yield
    finally:
        _flag.reset(token)
