"""The run report: a JSON document and its Markdown summary (pure).

The JSON carries the config, the lineage of every artifact (store keys), per-iteration metrics,
timings and tokens, so a reader can recompute anything from the artifacts it names. Every rate over
held-out problems carries its 95 % interval (`<name>_ci: [lo, hi]`, `ci_method`), and paired tests
qualify the comparisons a reader makes (`selection`, `paired_tests`): see `significance`.
"""

from __future__ import annotations

from typing import Any

import yaml
from google.protobuf.json_format import MessageToDict
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared.metrics import BUCKETS, accuracy_by_bucket
from shared.runconfig import EMConfig

from . import significance
from .rewards import REWARD_BUCKETS
from .significance import ci


def _eval(it: pb.Iteration, split: str) -> float | None:
    for e in it.evals:
        if e.split == split:
            return e.pass_at_1
    return None


def _ci_of(evals: list[dict[str, Any]], split: str) -> list[float] | None:
    return next((e["pass_at_1_ci"] for e in evals if e["split"] == split), None)


def _rewards(it: pb.Iteration) -> dict[str, Any] | None:
    """The E-step's reward distribution: samples per bucket over all samples and over the kept
    set, and the kept set's loss weight; None where no filter ran (the base, an older run)."""
    if not it.sample_rewards:
        return None
    return {
        "buckets": list(REWARD_BUCKETS),
        "samples": {b: int(it.sample_rewards.get(b, 0)) for b in REWARD_BUCKETS},
        "kept": {b: int(it.kept_rewards.get(b, 0)) for b in REWARD_BUCKETS},
        "kept_weight": round(it.kept_weight, 6),
    }


def iteration_row(it: pb.Iteration) -> dict[str, Any]:
    evals = [
        significance.with_intervals(
            MessageToDict(e, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        )
        for e in it.evals
    ]
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
        "rewards": _rewards(it),
        "training_skipped": it.train.skipped,
        "train": MessageToDict(it.train, preserving_proto_field_name=True) if it.HasField("train") else None,
        "validation_pass_at_1": _eval(it, "validation"),
        "validation_pass_at_1_ci": _ci_of(evals, "validation"),
        "test_pass_at_1": _eval(it, "test"),
        "test_pass_at_1_ci": _ci_of(evals, "test"),
        "transfer_pass_at_1": {
            e.split.removeprefix("transfer-"): e.pass_at_1
            for e in it.evals
            if e.split.startswith("transfer-")
        },
        "transfer_pass_at_1_ci": {
            e["split"].removeprefix("transfer-"): e["pass_at_1_ci"]
            for e in evals
            if e["split"].startswith("transfer-")
        },
        "evals": evals,
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
            "validation_pass_at_1_ci",
            "test_pass_at_1",
            "test_pass_at_1_ci",
            "transfer_pass_at_1",
            "transfer_pass_at_1_ci",
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
        "accuracy_ci": {
            name: {b: ci(v["accuracy"], int(v["problems"])) for b, v in buckets.items()}
            for name, buckets in by_checkpoint.items()
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
        cis = d.get("accuracy_ci", {}).get(name, {})
        lines.append(f"| {name} | " + " | ".join(_rate(acc.get(b), cis.get(b)) for b in names) + " |")
    return lines


def build_report(
    run: pb.Run,
    test_results: dict[str, list[dict[str, Any]]] | None = None,
    tracking: list[dict[str, str]] | None = None,
    validation_results: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The report document; `tracking`: the run's tracker runs (`RunTrackers.links`).

    `test_results` and `validation_results` map "base", "1", ..., "sft" to that checkpoint's
    per-problem result rows; without them the report has intervals but no paired tests.
    """
    status = pb.RunStatus.Name(run.status).removeprefix("RUN_STATUS_").lower()
    report: dict[str, Any] = {
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
        "ci_level": significance.CI_LEVEL,
        "ci_method": significance.CI_METHOD,
        "paired_test_method": significance.PAIRED_METHOD,
    }
    report["selection"] = significance.selection(report, validation_results)
    report["paired_tests"] = significance.paired_tests(report, test_results)
    report["test_outcomes"] = significance.test_outcomes(run.config_yaml, test_results)
    return report


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _rate(x: float | None, interval: list[float] | None) -> str:
    """`42.2 % [30.9, 54.3]`: a rate and its 95 % interval, in percent."""
    if x is None or not interval:
        return _pct(x)
    return f"{100 * x:.1f} % [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


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
            m, cis = e.get("metrics", {}), e.get("metrics_ci", {})
            if m:
                cells = " | ".join(_rate(m.get(k), cis.get(k)) for k in names)
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
        values, cis = r.get("transfer_pass_at_1", {}), r.get("transfer_pass_at_1_ci", {})
        lines.append(f"| {label} | " + " | ".join(_rate(values.get(n), cis.get(n)) for n in names) + " |")
    return lines


def _mstep_validation(report: dict[str, Any]) -> list[str]:
    """Per-epoch validation reward of each M-step (validation-driven stopping), when it ran."""
    rows = [(str(r["iteration"]), r) for r in report["iterations"] if r.get("train")]
    sft = report.get("sft_baseline")
    if sft and sft.get("train"):
        rows.append(("SFT", sft))
    rows = [(name, r) for name, r in rows if r["train"].get("validation_rewards")]
    if not rows:
        return []
    lines = ["", "M-step validation reward by epoch (the kept epoch in bold):", ""]
    for name, r in rows:
        # the reward is greedy pass@1 on the whole validation split, so it has that split's interval
        n = next((int(e["num_problems"]) for e in r["evals"] if e["split"] == "validation"), 0)
        best = int(r["train"].get("best_epoch", 0))
        cells = [
            f"**{_rate(v, ci(v, n))}**" if i == best else _rate(v, ci(v, n))
            for i, v in enumerate(r["train"]["validation_rewards"], 1)
        ]
        lines.append(f"- iteration {name}: {', '.join(cells)}")
    return lines


def _reward_table(report: dict[str, Any]) -> list[str]:
    """Samples per reward bucket, all and kept, per iteration (binary runs fill 0 and 1 only)."""
    rows = [r for r in report["iterations"] if r.get("rewards")]
    if not rows:
        return []
    em = report["config"].get("em") or {}
    mode = em.get("reward", EMConfig.model_fields["reward"].default)
    floor = em.get("min_reward", EMConfig.model_fields["min_reward"].default)
    lines = [
        "",
        f"Reward distribution of the E-step (`em.reward: {mode}`; kept: reward >= {floor}, at most "
        "`em.cutoff` per problem, weighted by reward):",
        "",
        "| iteration | samples | " + " | ".join(REWARD_BUCKETS) + " | loss weight |",
        "|---|---|" + "---|" * (len(REWARD_BUCKETS) + 1),
    ]
    for r in rows:
        d = r["rewards"]
        for label, key, weight in (("all", "samples", "–"), ("kept", "kept", f"{d['kept_weight']:g}")):
            cells = " | ".join(str(d[key].get(b, 0)) for b in REWARD_BUCKETS)
            lines.append(f"| {r['iteration']} | {label} | {cells} | {weight} |")
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


def _paired_lines(report: dict[str, Any]) -> list[str]:
    """The paired tests on test: is the best iteration's lead over the base and SFT beyond noise?"""
    tests = report.get("paired_tests") or []
    if not tests:
        return []
    lines = ["", "Paired tests on test (the same problems, per-problem results):", ""]
    for t in tests:
        verdict = "distinguishable" if t["distinguishable"] else "not distinguishable"
        a, b = significance.label(t["a"]), significance.label(t["b"])
        lines.append(f"- {a} vs {b}: {verdict}; {significance.describe(t)}")
    return lines


def _header_notes(report: dict[str, Any]) -> list[str]:
    """How to read the numbers: what the brackets are, and whether the best iteration stands out."""
    lines = [
        f"- in brackets: {100 * report['ci_level']:.0f} % {report['ci_method'].capitalize()} score intervals "
        "over each split's problems"
    ]
    selection = report.get("selection")
    if selection:
        lines.append(f"- best iteration vs the runner-up on validation: {selection['note']}")
    return lines


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
        *_header_notes(report),
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
            f"| {name} | {_pct(r['train_pass_rate'])} | {solved} | {kept} "
            f"| {_rate(r['validation_pass_at_1'], r['validation_pass_at_1_ci'])} "
            f"| {_rate(r['test_pass_at_1'], r['test_pass_at_1_ci'])} | {r['tokens_generated']} | {r['seconds']} |"
        )
    sft = report.get("sft_baseline")
    if sft:
        examples = (sft["train"] or {}).get("examples", 0)
        lines.append(
            f"| SFT on reference solutions | – | – | {examples} "
            f"| {_rate(sft['validation_pass_at_1'], sft['validation_pass_at_1_ci'])} "
            f"| {_rate(sft['test_pass_at_1'], sft['test_pass_at_1_ci'])} | 0 | {sft['seconds']} |"
        )
    lines += _paired_lines(report)
    lines += _transfer_table(report)
    lines += _difficulty_table(report)
    lines += _reward_table(report)
    lines += _sampled_table(report)
    lines += _mstep_validation(report)
    lines += ["", "Phase wall times (s):", ""]
    for r in report["iterations"]:
        phases = ", ".join(f"{k} {v}" for k, v in r["phase_seconds"].items()) or "–"
        lines.append(f"- iteration {r['iteration']}: {phases}")
    for name in plots or []:
        lines += ["", f"![{name}]({name})"]
    return "\n".join(lines) + "\n"
