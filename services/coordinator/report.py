"""The run report: a JSON document and its Markdown summary (pure).

The JSON carries the config, the lineage of every artifact (store keys), per-iteration metrics,
timings and tokens, so a reader can recompute anything from the artifacts it names. Plots,
pass@k and maj@k come with the reports issue.
"""

from __future__ import annotations

from typing import Any

import yaml
from google.protobuf.json_format import MessageToDict
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared.metrics import BUCKETS, accuracy_by_bucket
from shared.runconfig import EMConfig


def _eval(it: pb.Iteration, split: str) -> float | None:
    for e in it.evals:
        if e.split == split:
            return e.pass_at_1
    return None


def iteration_row(it: pb.Iteration) -> dict[str, Any]:
    return {
        "iteration": it.iteration,
        "policy_key": it.policy_key,
        "checkpoint_key": it.checkpoint_key,
        "samples": it.samples,
        "correct_samples": it.correct_samples,
        "train_pass_rate": it.train_pass_rate if it.iteration else None,
        "problems_solved": it.problems_solved,
        "problems_total": it.problems_total,
        "kept": it.kept,
        "kept_key": it.kept_key or None,
        "training_skipped": it.train.skipped,
        "train": MessageToDict(it.train, preserving_proto_field_name=True) if it.HasField("train") else None,
        "validation_pass_at_1": _eval(it, "validation"),
        "test_pass_at_1": _eval(it, "test"),
        "transfer_pass_at_1": {
            e.split.removeprefix("transfer-"): e.pass_at_1
            for e in it.evals
            if e.split.startswith("transfer-")
        },
        "evals": [
            MessageToDict(e, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for e in it.evals
        ],
        "tokens_generated": it.tokens_generated,
        "sampling_rounds": it.sampling_rounds,
        "phase_seconds": {k: round(v, 2) for k, v in sorted(it.phase_seconds.items())},
        "seconds": round(it.seconds, 2),
    }


def _sft_row(run: pb.Run) -> dict[str, Any]:
    """The SFT baseline: the base fine-tuned on reference solutions with the M-step's settings."""
    row = iteration_row(run.sft)
    return {
        k: row[k]
        for k in (
            "checkpoint_key",
            "train",
            "validation_pass_at_1",
            "test_pass_at_1",
            "transfer_pass_at_1",
            "evals",
            "seconds",
        )
    }


def _stopped_early(run: pb.Run) -> bool:
    """The EM loop ended before `em.iterations` because validation stopped improving."""
    em = (yaml.safe_load(run.config_yaml) or {}).get("em") or {}
    planned = em.get("iterations", EMConfig.model_fields["iterations"].default)
    done = run.iterations[-1].iteration if run.iterations else 0
    return run.status == pb.RUN_STATUS_SUCCEEDED and isinstance(planned, int) and done < planned


def difficulty(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Test accuracy per difficulty bucket, buckets from the base model's per-problem pass rate.

    `results` maps "base", "1", "2", ..., "sft" to that checkpoint's test results (eval rows). The
    base rate of a problem is its share of correct sampled answers when the evaluation sampled
    (`evaluation.samples`), else its greedy answer (0 or 1: only "easy" and "very hard").
    """
    base = results.get("base")
    if not base:
        return None
    rate = {
        r["problem_id"]: (sum(s["correct"] for s in r["samples"]) / len(r["samples"]))
        if r.get("samples")
        else float(r["correct"])
        for r in base
    }
    by_checkpoint = {
        name: accuracy_by_bucket({r["problem_id"]: r["correct"] for r in rows}, rate)
        for name, rows in results.items()
    }
    return {
        "base_rate_from": "sampled" if base[0].get("samples") else "greedy",
        "problems": {b: v["problems"] for b, v in by_checkpoint["base"].items()},
        "accuracy": {
            name: {b: v["accuracy"] for b, v in buckets.items()} for name, buckets in by_checkpoint.items()
        },
    }


def _difficulty_table(report: dict[str, Any]) -> list[str]:
    d = report.get("difficulty")
    if not d:
        return []
    names = [b for b in BUCKETS if b in d["problems"]]
    lines = [
        "",
        f"Test pass@1 by difficulty (buckets from the base model's {d['base_rate_from']} pass rate):",
        "",
    ]
    lines += ["| checkpoint | " + " | ".join(f"{b} ({d['problems'][b]})" for b in names) + " |"]
    lines.append("|---|" + "---|" * len(names))
    for name, acc in d["accuracy"].items():
        lines.append(f"| {name} | " + " | ".join(_pct(acc.get(b)) for b in names) + " |")
    return lines


def build_report(
    run: pb.Run,
    test_results: dict[str, list[dict[str, Any]]] | None = None,
    tracking: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The report document; `tracking`: the run's tracker runs (`RunTrackers.links`)."""
    status = pb.RunStatus.Name(run.status).removeprefix("RUN_STATUS_").lower()
    return {
        "run_id": run.run_id,
        "name": run.name,
        "status": status,
        "error": run.error or None,
        "task": run.task,
        "base_model": {"source": run.model_source, "key": run.base_model_key},
        "config": yaml.safe_load(run.config_yaml) or {},
        "created": run.created.ToJsonString(),
        "finished": run.finished.ToJsonString() if run.HasField("finished") else None,
        "wall_seconds": round((run.finished.ToDatetime() - run.created.ToDatetime()).total_seconds(), 2)
        if run.HasField("finished")
        else None,
        "best_iteration": run.best_iteration,
        "stopped_early": _stopped_early(run),
        "difficulty": difficulty(test_results) if test_results else None,
        "best_iteration_rule": "highest validation pass@1, earliest on ties; test is never used to choose",
        "iterations": [iteration_row(it) for it in run.iterations],
        "sft_baseline": _sft_row(run) if run.sft_enabled else None,
        "tokens_generated": sum(it.tokens_generated for it in run.iterations),
        "tracking": tracking or [],
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _sampled_table(report: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for r in report["iterations"]:
        for e in r["evals"]:
            names += [k for k in e.get("metrics", {}) if k not in names]
    if not names:
        return []
    names.sort(key=lambda k: (k.split("@")[0] != "pass", int(k.split("@")[1])))
    lines = [
        "",
        "Sampled evaluation (T and top-p from `evaluation`):",
        "",
        "| iteration | split | " + " | ".join(names) + " |",
    ]
    lines.append("|---|---|" + "---|" * len(names))
    for r in report["iterations"]:
        for e in r["evals"]:
            m = e.get("metrics", {})
            if m:
                cells = " | ".join(_pct(m.get(k)) for k in names)
                lines.append(
                    f"| {'base' if r['iteration'] == 0 else r['iteration']} | {e['split']} | {cells} |"
                )
    return lines


def _transfer_table(report: dict[str, Any]) -> list[str]:
    """Greedy pass@1 on the transfer sets, per checkpoint (reported, never used to choose)."""
    names = sorted({n for r in report["iterations"] for n in r.get("transfer_pass_at_1", {})})
    if not names:
        return []
    lines = ["", "Transfer sets (greedy pass@1; `evaluation.transfer`):", ""]
    lines += ["| iteration | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows = [("base" if r["iteration"] == 0 else str(r["iteration"]), r) for r in report["iterations"]]
    if report.get("sft_baseline"):
        rows.append(("SFT on reference solutions", report["sft_baseline"]))
    for label, r in rows:
        values = r.get("transfer_pass_at_1", {})
        lines.append(f"| {label} | " + " | ".join(_pct(values.get(n)) for n in names) + " |")
    return lines


def _mstep_validation(report: dict[str, Any]) -> list[str]:
    """Per-epoch validation reward of each M-step (validation-driven stopping), when it ran."""
    rows = [(str(r["iteration"]), r["train"]) for r in report["iterations"] if r.get("train")]
    sft = report.get("sft_baseline")
    if sft and sft.get("train"):
        rows.append(("SFT", sft["train"]))
    rows = [(name, t) for name, t in rows if t.get("validation_rewards")]
    if not rows:
        return []
    lines = ["", "M-step validation reward by epoch (the kept epoch in bold):", ""]
    for name, t in rows:
        best = int(t.get("best_epoch", 0))
        cells = [f"**{_pct(v)}**" if i == best else _pct(v) for i, v in enumerate(t["validation_rewards"], 1)]
        lines.append(f"- iteration {name}: {', '.join(cells)}")
    return lines


def _policy(report: dict[str, Any]) -> str:
    adaptive = report["config"].get("sampling", {}).get("adaptive", {})
    if not adaptive.get("enabled"):
        return "fixed K"
    rounds = [str(r.get("sampling_rounds", 0)) for r in report["iterations"] if r["iteration"]]
    return f"adaptive (rounds per iteration: {', '.join(rounds) or '–'})"


def _tracking_lines(report: dict[str, Any]) -> list[str]:
    """Where the run is tracked: the tracker's run id and its page (or its directory, offline)."""
    out = []
    for t in report.get("tracking") or []:
        where = t["url"] or (f"offline, in {t['location']}" if t.get("location") else "no web page")
        out.append(f"- tracked in {t['tracker']}: run `{t['run_id']}` — {where}")
    return out


def render_markdown(report: dict[str, Any], plots: list[str] | None = None) -> str:
    lines = [
        f"# restem run `{report['run_id']}`",
        "",
        f"- status: **{report['status']}**" + (f" — {report['error']}" if report["error"] else ""),
        f"- task: {report['task']}; base model: {report['base_model']['source']}",
        f"- wall time: {report['wall_seconds']} s; tokens generated: {report['tokens_generated']}",
        f"- best iteration (on validation): {report['best_iteration']}"
        + (
            " — the EM loop stopped early: validation stopped improving (`em.early_stop_patience`)"
            if report.get("stopped_early")
            else ""
        ),
        f"- sampling policy: {_policy(report)}",
        *_tracking_lines(report),
        "",
        "| iteration | train pass rate | solved | kept | validation pass@1 | test pass@1 | tokens | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["iterations"]:
        solved = f"{r['problems_solved']}/{r['problems_total']}" if r["iteration"] else "–"
        kept = ("skipped (0 kept)" if r["training_skipped"] else str(r["kept"])) if r["iteration"] else "–"
        name = "base" if r["iteration"] == 0 else str(r["iteration"])
        lines.append(
            f"| {name} | {_pct(r['train_pass_rate'])} | {solved} | {kept} | {_pct(r['validation_pass_at_1'])} "
            f"| {_pct(r['test_pass_at_1'])} | {r['tokens_generated']} | {r['seconds']} |"
        )
    sft = report.get("sft_baseline")
    if sft:
        examples = (sft["train"] or {}).get("examples", 0)
        lines.append(
            f"| SFT on reference solutions | – | – | {examples} | {_pct(sft['validation_pass_at_1'])} "
            f"| {_pct(sft['test_pass_at_1'])} | 0 | {sft['seconds']} |"
        )
    lines += _transfer_table(report)
    lines += _difficulty_table(report)
    lines += _sampled_table(report)
    lines += _mstep_validation(report)
    lines += ["", "Phase wall times (s):", ""]
    for r in report["iterations"]:
        phases = ", ".join(f"{k} {v}" for k, v in r["phase_seconds"].items()) or "–"
        lines.append(f"- iteration {r['iteration']}: {phases}")
    for name in plots or []:
        lines += ["", f"![{name}]({name})"]
    return "\n".join(lines) + "\n"
