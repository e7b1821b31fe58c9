"""What a work-queue or event handler gets, and what the bus does when it fails: the value types and
rules of `shared.bus`, apart from its NATS plumbing.

NOT here: connecting, subscribing, settling messages (`shared.bus.EventBus`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

JOB_TYPES = ("prepare", "sample", "verify", "train", "eval")
# Headers of a dead letter: why it died, where it was published, after how many deliveries.
H_REASON = "Restem-Dlq-Reason"
H_SUBJECT = "Restem-Original-Subject"
H_DELIVERED = "Restem-Num-Delivered"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (bad input): the message is dead-lettered at once with this reason."""


@dataclass(frozen=True)
class Delivery:
    subject: str
    data: bytes
    msg_id: str | None  # the Nats-Msg-Id header
    num_delivered: int  # 1 on first delivery
    run_id: str  # parsed from the subject


@dataclass(frozen=True)
class DeadLetter:
    subject: str  # the original subject
    data: bytes
    reason: str
    num_delivered: int
    seq: int = 0  # its sequence in the dead-letter stream: a reader resumes after the last it saw


Handler = Callable[[Delivery], Awaitable[None]]
AbandonIf = Callable[[str], Awaitable[bool]]  # run id -> is that run over (its jobs' work unwanted)?


class Settle(Enum):
    """How a handled message is settled: done, retried after a delay, or never delivered again."""

    ACK = "ack"
    NAK = "nak"
    TERM = "term"


@dataclass(frozen=True)
class RetryPolicy:
    """How one consumer retries and where its dead letters go."""

    durable: str
    ack_wait_s: float
    max_deliver: int
    backoff_s: tuple[float, ...]
    dlq_token: str  # job type, or "events"
    run_id_index: int  # position of the run id among the subject's tokens
    abandon_if: AbandonIf | None = None  # jobs only: drop a job whose run is over

    def backoff(self, n: int) -> float:
        return float(self.backoff_s[min(n - 1, len(self.backoff_s) - 1)]) if self.backoff_s else 0.0


def check_token(what: str, value: str) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"{what} must be a single subject token [A-Za-z0-9_-]+, got {value!r}")
    return value


def check_job_type(job_type: str) -> str:
    if job_type not in JOB_TYPES:
        raise ValueError(f"unknown job type {job_type!r}; expected one of {JOB_TYPES}")
    return job_type


def redact_url(url: str) -> str:
    """The URL(s) without any user:password@ part, so they can go in logs and error messages."""
    return re.sub(r"//[^/@,]*@", "//", url)


def header_safe(text: str, limit: int = 2000) -> str:
    # NATS headers are single-line; non-ASCII values come back from get_msg as email.Header objects.
    flat = " ".join(text.split())
    return flat.encode("ascii", "backslashreplace").decode("ascii")[:limit]
