"""The two trackers `shared.tracking` feeds: MLflow (one run per restem run) and W&B (one per role).

The clients themselves are imported when a tracker opens: both take a second or more to import.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from restem.common.v1 import common_pb2

RUN_TAG = "restem.run_id"
Point = tuple[Mapping[str, float], int]  # (metrics, step)


@dataclass(frozen=True)
class TrackerLink:
    """Where a tracker keeps the run: its id there and the page to open ("" when it has none)."""

    tracker: str
    run_id: str
    url: str
    location: str = ""  # W&B offline: the run directory to `wandb sync`


def write_files(files: Mapping[str, bytes]) -> tempfile.TemporaryDirectory[str]:
    """The files in a fresh temporary directory (trackers upload paths); the caller cleans it up."""
    tmp = tempfile.TemporaryDirectory(prefix="restem-tracking-")
    for rel, data in files.items():
        path = Path(tmp.name) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp


_MLFLOW_BATCH = 1000  # metrics per log_batch request (the server's limit)
_MLFLOW_PARAMS = 100  # params per request (the server's limit)


class MlflowBackend:
    """The MLflow run tagged `restem.run_id` = the run (created when missing) in the experiment."""

    name = "mlflow"

    def __init__(self, settings: common_pb2.MlflowSettings, *, run_id: str, name: str, owner: bool) -> None:
        self.settings, self.restem_run_id, self.run_name = settings, run_id, name
        self.owner = owner  # the coordinator's: it ends the run; a trainer's close leaves it open
        self.client: Any = None
        self.mlflow_run_id = ""
        self.logged_through = -1  # iterations already in the run (a restarted coordinator skips them)

    def open(self) -> TrackerLink:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        experiment = client.get_experiment_by_name(self.settings.experiment)
        if experiment is None:
            with contextlib.suppress(MlflowException):  # another process may create it first
                client.create_experiment(self.settings.experiment)
            experiment = client.get_experiment_by_name(self.settings.experiment)
        if experiment is None:
            raise RuntimeError(f"MLflow experiment {self.settings.experiment!r} could not be created")
        found = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{RUN_TAG}` = '{self.restem_run_id}'",
            max_results=1,
        )
        if found:
            run = found[0]
            self.logged_through = int(run.data.metrics.get("iteration", -1))
        else:
            run = client.create_run(
                experiment.experiment_id, run_name=self.run_name, tags={RUN_TAG: self.restem_run_id}
            )
        self.client, self.mlflow_run_id = client, run.info.run_id
        uri = self.settings.tracking_uri.rstrip("/")
        url = (
            f"{uri}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
            if uri.startswith("http")
            else ""
        )
        return TrackerLink("mlflow", run.info.run_id, url)

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]  # the server's value limit
        for i in range(0, len(items), _MLFLOW_PARAMS):
            self.client.log_batch(self.mlflow_run_id, params=items[i : i + _MLFLOW_PARAMS])

    def log_iteration(self, iteration: int, metrics: Mapping[str, float]) -> None:
        if iteration <= self.logged_through:
            return  # logged before a coordinator restart
        self.log_steps([({**metrics, "iteration": float(iteration)}, iteration)])
        self.logged_through = iteration

    def log_steps(self, points: list[Point]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(_mlflow_key(k), float(v), now, step) for values, step in points for k, v in values.items()
        ]
        for i in range(0, len(metrics), _MLFLOW_BATCH):
            self.client.log_batch(self.mlflow_run_id, metrics=metrics[i : i + _MLFLOW_BATCH])

    def log_files(self, files: Mapping[str, bytes]) -> None:
        with write_files(files) as tmp:
            self.client.log_artifacts(self.mlflow_run_id, tmp)

    def close(self, succeeded: bool) -> None:
        if self.owner:
            self.client.set_terminated(self.mlflow_run_id, "FINISHED" if succeeded else "FAILED")


def _mlflow_key(key: str) -> str:
    """MLflow keys allow letters, digits, `_-. /`: `pass@4` becomes `pass_at_4`."""
    return re.sub(r"[^\w\-. /]", "_", key.replace("@", "_at_"))


class WandbBackend:
    """A W&B run per role of the restem run (`em`: the coordinator; `m<it>`: an M-step), grouped by it."""

    name = "wandb"

    def __init__(
        self,
        settings: common_pb2.WandbSettings,
        *,
        run_id: str,
        name: str,
        role: str,
        config: Mapping[str, Any],
    ) -> None:
        self.settings, self.restem_run_id, self.run_name, self.role = settings, run_id, name, role
        self.config = dict(config)
        self.run: Any = None

    def open(self) -> TrackerLink:
        import wandb

        wid = self.restem_run_id if self.role == "em" else f"{self.restem_run_id}-{self.role}"
        s = self.settings
        self.run = wandb.init(
            project=s.project,
            entity=s.entity or None,
            mode=s.mode or "online",  # type: ignore[arg-type]  # validated by the run config
            # pods have a read-only root: W&B's default (./wandb) would fail there
            dir=s.dir or os.environ.get("WANDB_DIR") or tempfile.gettempdir(),
            id=re.sub(r"[^\w-]", "-", wid),
            name=self.run_name if self.role == "em" else f"{self.run_name} {self.role}",
            group=self.restem_run_id,
            job_type=self.role,
            config=self.config,
            resume="allow",
            reinit="create_new",  # the coordinator tracks many runs at once
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        # run.dir is the run's files/ directory; `wandb sync` takes the run directory above it
        url = "" if s.mode == "offline" else (self.run.url or "")  # offline, reading run.url prints a warning
        return TrackerLink("wandb", self.run.id, url, location=str(Path(self.run.dir).parent))

    def log_params(self, params: Mapping[str, str]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_iteration(self, iteration: int, metrics: Mapping[str, float]) -> None:
        self.run.log({**metrics, "iteration": iteration}, step=iteration)

    def log_steps(self, points: list[Point]) -> None:
        for values, step in points:
            self.run.log(dict(values), step=step)

    def log_files(self, files: Mapping[str, bytes]) -> None:
        import wandb

        safe = re.sub(r"[^\w.-]", "-", self.restem_run_id)
        artifact = wandb.Artifact(f"{safe}-report", type="report")
        with write_files(files) as tmp:
            artifact.add_dir(tmp)  # copied into W&B's staging area: the temporary directory may go
            self.run.log_artifact(artifact)

    def close(self, succeeded: bool) -> None:
        self.run.finish(exit_code=0 if succeeded else 1)
