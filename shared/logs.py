"""Logs: readable text locally, one JSON object per line on a cluster; a job's ids on every line.

`job_context(run_id=..., iteration=..., job_id=..., phase=...)` sets the ids of the work in hand in
a context variable: every record logged inside it (in the same task, the tasks it creates and the
threads it starts with `asyncio.to_thread`, which copy the context) carries them. So
`grep run-abc` over the logs of all five services follows one run, and a log stack can filter on
`job_id`. The JSON formatter writes them as fields; the text formatter as `[run=... job=...]`.

No secret reaches a line through here: the config's secrets are `SecretStr` (printed as
`**********`) and the context holds ids only.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("run_id", "iteration", "job_id", "job_type", "phase")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "restem_log_context", default=None
)


@contextlib.contextmanager
def job_context(**fields: Any) -> Iterator[None]:
    """Within the block, every log record carries `fields` (on top of the enclosing context)."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context fields {sorted(unknown)}; use {CONTEXT_FIELDS}")
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v not in (None, "")}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the job context onto each record (explicit `extra=` fields win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: getattr(record, k) for k in CONTEXT_FIELDS if getattr(record, k, None) not in (None, "")}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`2026-12-07 03:40:14,123 INFO sampler [run=r1 it=2 job=r1.i2.s3] message`."""

    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)s %(service)s%(ctx)s %(message)s")
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        short = {"run_id": "run", "iteration": "it", "job_id": "job", "job_type": "type", "phase": "phase"}
        ctx = " ".join(f"{short[k]}={v}" for k, v in _fields(record).items())
        record.service = self.service
        record.ctx = f" [{ctx}]" if ctx else ""
        return super().format(record)


def quiet_model_libraries() -> None:
    """Call before transformers is imported: no progress bars in logs, and never reach for a hub."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The variables are read at import: a library imported already is told directly.
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def setup_logging(service: str, level: str = "info", fmt: str = "text") -> None:
    quiet_model_libraries()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # library warnings become log records (JSON lines too), not raw stderr
    # nats-py logs every reconnect attempt at error level; our bus reports connectivity itself.
    logging.getLogger("nats").setLevel(logging.WARNING)
    # The tracking clients log each retry of an unreachable server; shared.tracking warns once itself.
    for noisy in ("mlflow", "wandb", "urllib3.connectionpool"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
