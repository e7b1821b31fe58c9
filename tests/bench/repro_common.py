"""What the reproduction scripts share (`make repro`, `make repro-code`, `make repro-ablations`):
running run configs through a fresh local stack, saving a run's report and plots, and rates with
their 95 % Wilson intervals over a split's problems (`shared.stats`)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def rate(x: float | None, n: int) -> str:
    """`42.2 % [30.9, 54.4]`: a rate over `n` problems and its 95 % Wilson interval."""
    from shared.stats import wilson

    if x is None:
        return "–"
    if n < 1:
        return f"{100 * x:.1f} %"
    lo, hi = wilson(min(max(x, 0.0), 1.0), n)
    return f"{100 * x:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def split_eval(evals: list[dict[str, Any]], split: str) -> dict[str, Any]:
    return next((e for e in evals if e["split"] == split), {})


def metrics_of(evals: list[dict[str, Any]]) -> dict[str, Any]:
    return split_eval(evals, "test").get("metrics", {})


def run_configs(
    configs: Sequence[str], timeout_s: float = 7200
) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    """Run each config, one after the other, through one fresh local stack; (report, files) each.

    One at a time: runs sharing the sampler would share its batches, and each run's numbers should
    be what it gives alone. Exits when a run does not succeed."""
    from shared.client.client import RunClient
    from shared.client.stack import down, up
    from shared.logs import quiet_model_libraries

    quiet_model_libraries()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = up(Path(tmp) / "stack")
        try:
            with RunClient(stack.coordinator) as client:
                for text in configs:
                    started = time.monotonic()
                    run = client.start_run(text)
                    print(f"run {run.run_id} started; following it ...", flush=True)
                    last = None
                    for snapshot in client.watch_run(run.run_id, timeout_s=timeout_s):
                        if (snapshot.iteration, snapshot.phase) != last:
                            last = (snapshot.iteration, snapshot.phase)
                            print(f"  iteration {snapshot.iteration} phase {snapshot.phase}", flush=True)
                    report, files = client.report_files(run.run_id)
                    if report["status"] != "succeeded":
                        raise SystemExit(f"run {run.run_id} did not succeed: {report['error']}")
                    print(f"run {run.run_id}: {time.monotonic() - started:.0f} s", flush=True)
                    out.append((report, files))
        finally:
            down(Path(tmp) / "stack")
    return out


def save_report(out: Path, report: dict[str, Any], files: dict[str, bytes]) -> None:
    """The report's JSON, Markdown and plots into `out` (replaced)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    for name, data in files.items():
        (out / name).write_bytes(data)


def replace_between(path: Path, begin: str, end: str, body: str) -> None:
    """Rewrite the text between two marker lines of a file."""
    text = path.read_text()
    start, stop = text.index(begin), text.index(end) + len(end)
    path.write_text(text[:start] + begin + "\n\n" + body + "\n\n" + end + text[stop:])
