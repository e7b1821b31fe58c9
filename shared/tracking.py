"""Experiment tracking (MLflow, Weights & Biases): one run's metrics, params and files, never in its way.

`Tracking` feeds a run's trackers from one background thread: a call returns at once, and the
calls reach each tracker in order. A tracker that does not answer is retried (`RETRY_S`), then
warned about once and skipped until it answers again: a run never fails or waits because its
tracker is down. Consecutive step logs are sent as one batch.

Who logs what (docs/observability.md): the coordinator opens the run's tracker run at its first
event, logs the config as params and a file, one point per finished iteration (step = iteration)
and the report files at the end; the trainer logs each optimiser step of its M-step. MLflow gets
one run per restem run (found again by its `restem.run_id` tag, so a restarted coordinator and the
trainers log to the same one); W&B gets one run per process role, grouped by the restem run id (the
W&B way for several writers), the M-steps as `<run>-m<iteration>`.

Credentials come from each process's environment (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME /
_PASSWORD, WANDB_API_KEY), never from the run config.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from restem.common.v1 import common_pb2

from shared.logs import job_context
from shared.tracking_backends import MlflowBackend, Point, TrackerLink, WandbBackend

log = logging.getLogger("restem.tracking")
RETRY_S = (1.0, 2.0, 4.0)  # waits between the attempts of one call while the tracker has been answering
MAX_QUEUED = 20_000  # calls held for slow trackers; beyond it the oldest step logs are dropped


class Backend(Protocol):
    """One tracker's client, called from the tracking thread only."""

    name: str

    def open(self) -> TrackerLink: ...
    def log_params(self, params: Mapping[str, str]) -> None: ...
    def log_iteration(self, iteration: int, metrics: Mapping[str, float]) -> None: ...
    def log_steps(self, points: list[Point]) -> None: ...
    def log_files(self, files: Mapping[str, bytes]) -> None: ...
    def close(self, succeeded: bool) -> None: ...


def settings_of(config: Any) -> common_pb2.TrackingSettings:
    """The run config's `tracking:` section as the message jobs carry."""
    out = common_pb2.TrackingSettings()
    if config.mlflow is not None:
        out.mlflow.CopyFrom(
            common_pb2.MlflowSettings(
                tracking_uri=config.mlflow.tracking_uri, experiment=config.mlflow.experiment
            )
        )
    if config.wandb is not None:
        w = config.wandb
        out.wandb.CopyFrom(
            common_pb2.WandbSettings(
                project=w.project, entity=w.entity or "", mode=w.mode, dir=str(w.dir) if w.dir else ""
            )
        )
    return out


def enabled(settings: common_pb2.TrackingSettings) -> bool:
    return settings.HasField("mlflow") or settings.HasField("wandb")


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as `a.b.c: value` strings (what trackers take as params)."""
    out: dict[str, str] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


class Tracking:
    """A run's trackers in this process, fed from one background thread (see the module doc)."""

    def __init__(self, backends: list[Backend], run_id: str = "") -> None:
        self.backends, self.run_id = backends, run_id
        self.links: dict[str, TrackerLink] = {}
        self._opened: set[str] = set()
        self._down: set[str] = set()  # warned about; one attempt per call until it answers again
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._held: tuple[str, Any] | None = None  # taken from the queue while batching steps; next up
        self._thread = threading.Thread(target=self._work, name="tracking", daemon=True)
        self._thread.start()

    # --- the caller's side: never blocks, never raises ---------------------------------------

    def log_params(self, params: Mapping[str, str]) -> None:
        self._put("log_params", dict(params))

    def log_iteration(self, iteration: int, metrics: Mapping[str, float]) -> None:
        self._put("log_iteration", (iteration, dict(metrics)))

    def log_step(self, metrics: Mapping[str, float], step: int) -> None:
        self._put("log_steps", [(dict(metrics), step)])

    def log_files(self, files: Mapping[str, bytes]) -> None:
        self._put("log_files", dict(files))

    def close(self, succeeded: bool, timeout_s: float = 60.0) -> None:
        """Finish the tracker runs and stop the thread (waits up to `timeout_s` for what is queued)."""
        self._put("close", succeeded)
        self._thread.join(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until what was queued so far has been sent (or given up on); False on timeout."""
        done = threading.Event()
        self._put("flush", done)
        return done.wait(timeout_s)

    def _put(self, op: str, arg: Any) -> None:
        if self._queue.qsize() >= MAX_QUEUED and op == "log_steps":
            return  # the trackers are far behind (down for long): keep the iteration logs, drop steps
        self._queue.put((op, arg))

    # --- the thread ---------------------------------------------------------------------------

    def _work(self) -> None:
        with job_context(run_id=self.run_id):  # a new thread starts with an empty log context
            self._serve()

    def _serve(self) -> None:
        while True:
            held, self._held = self._held, None
            op, arg = held or self._queue.get()
            if op == "flush":
                arg.set()
                continue
            if op == "log_steps":
                arg = self._more_steps(arg)
            for backend in self.backends:
                self._call(backend, op, arg)
            if op == "close":
                return

    def _more_steps(self, points: list[Point]) -> list[Point]:
        """The step logs queued right behind `points`, sent together (one request per batch)."""
        while len(points) < 1000:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item[0] != "log_steps":
                self._held = item  # the next call to send, in order
                break
            points = points + item[1]
        return points

    def _call(self, backend: Backend, op: str, arg: Any) -> None:
        name = backend.name
        if name not in self._opened and not self._attempt(backend, "open", None):
            return
        method: Callable[..., Any] = getattr(backend, op)
        args = arg if op == "log_iteration" else (arg,)
        self._attempt(backend, op, lambda: method(*args))

    def _attempt(self, backend: Backend, op: str, fn: Callable[[], Any] | None) -> bool:
        waits = () if backend.name in self._down else RETRY_S
        for attempt in range(len(waits) + 1):
            try:
                if fn is None:
                    self.links[backend.name] = backend.open()
                    self._opened.add(backend.name)
                    log.info(
                        "tracking on %s: %s", backend.name, self.links[backend.name].url or "(no web page)"
                    )
                else:
                    fn()
                if backend.name in self._down:
                    self._down.discard(backend.name)
                    log.info("%s answers again; tracking resumed", backend.name)
                return True
            except Exception as exc:
                if attempt < len(waits):
                    time.sleep(waits[attempt])
                    continue
                if backend.name not in self._down:
                    self._down.add(backend.name)
                    log.warning(
                        "%s does not answer (%s: %s); the run goes on without it and tries again with "
                        "the next log (this warning is not repeated)",
                        backend.name, op, _short(exc),
                    )  # fmt: skip
        return False


def _short(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


def open_tracking(
    settings: common_pb2.TrackingSettings, *, run_id: str, name: str, role: str, config: Mapping[str, Any]
) -> Tracking | None:
    """The trackers `settings` name, for restem run `run_id` as `role` (`em` or `m<iteration>`)."""
    if not enabled(settings):
        return None
    backends: list[Backend] = []
    if settings.HasField("mlflow"):
        backends.append(MlflowBackend(settings.mlflow, run_id=run_id, name=name, owner=role == "em"))
    if settings.HasField("wandb"):
        backends.append(WandbBackend(settings.wandb, run_id=run_id, name=name, role=role, config=config))
    return Tracking(backends, run_id)


# The MLflow client retries a failed request for minutes by default; `Tracking` retries itself.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# Both clients print to stdout/stderr, which would break a service's one-JSON-object-per-line logs;
# `Tracking` logs the run's page itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("WANDB_SILENT", "true")
