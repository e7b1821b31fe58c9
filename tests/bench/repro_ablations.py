"""The paper's ablations on the arithmetic task (`make repro-ablations`), each a real run through a
fresh local stack, from examples/arithmetic-repro.yaml without its transfer set:

- (c) samples per problem: K = 1, 2, 4, 8, 16 (at most min(K, 4) kept per problem), three
  iterations each, the best on validation;
  the test pass@1 of that iteration and the E-step tokens it took (the compute note).
- (b) iterations: K = 8 for six iterations: the train pass rate (samples judged correct) against
  validation and test pass@1, and where validation peaks. An EM run's first iterations do not
  depend on how many follow (seeds are per iteration), so its first three are the K = 8 point of (c).
- (a) scarce human data: the same K = 8 run's SFT baseline sees the reference solutions of 25 % of
  the train problems (`baseline.sft_references`), while ReST-EM uses every problem.

Writes docs/repro/ablations/: results.json, table.md and plots with 95 % intervals.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.repro_common import rate, run_configs, save_report  # noqa: E402

OUT = ROOT / "docs" / "repro" / "ablations"
KS = (1, 2, 4, 8, 16)
ITERATIONS = 6  # the K = 8 run
SELECTED_WITHIN = 3  # (c) picks the best of the first three iterations, as every other K's run does
REFERENCES = 0.25


def configs() -> dict[str, str]:
    """Run name -> config text."""
    base = yaml.safe_load((ROOT / "examples" / "arithmetic-repro.yaml").read_text())
    base["evaluation"].pop("transfer", None)
    base.pop("baseline", None)
    out = {}
    for k in KS:
        cfg = copy.deepcopy(base)
        cfg["name"] = f"ablation-k{k}"
        cfg["sampling"]["n"] = k
        cfg["em"]["cutoff"] = min(k, base["em"]["cutoff"])  # a problem cannot keep more than it drew
        cfg["evaluation"]["samples"] = 0  # greedy pass@1 only: pass@k and maj@k are `make repro`'s
        if k == 8:
            cfg["em"]["iterations"] = ITERATIONS
            cfg["baseline"] = {"sft": True, "sft_references": REFERENCES}
        else:
            cfg["em"]["iterations"] = SELECTED_WITHIN
        out[f"k{k}"] = yaml.safe_dump(cfg, sort_keys=False)
    return out


def _best_within(report: dict[str, Any], upto: int) -> dict[str, Any]:
    """The iteration (1..upto) with the highest validation pass@1, the earliest on ties."""
    its = [r for r in report["iterations"][1 : upto + 1] if r["validation_pass_at_1"] is not None]
    return max(its, key=lambda r: (r["validation_pass_at_1"], -r["iteration"]))


def _n(r: dict[str, Any], split: str) -> int:
    return next((int(e["num_problems"]) for e in r["evals"] if e["split"] == split), 0)


def samples_table(reports: dict[str, dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    for k in KS:
        rep = reports[f"k{k}"]
        best = _best_within(rep, SELECTED_WITHIN)
        tokens = sum(r.get("tokens_generated", 0) for r in rep["iterations"][1 : best["iteration"] + 1])
        rows.append(
            {"k": k, "iteration": best["iteration"], "test": best["test_pass_at_1"], "n": _n(best, "test"),
             "ci": best["test_pass_at_1_ci"], "validation": best["validation_pass_at_1"], "tokens": tokens}
        )  # fmt: skip
    lines = [
        "| K | best iteration (of 3, on validation) | validation pass@1 | test pass@1 | E-step tokens to it |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        rep = reports[f"k{r['k']}"]["iterations"][r["iteration"]]
        lines.append(
            f"| {r['k']} | {r['iteration']} | {rate(r['validation'], _n(rep, 'validation'))} "
            f"| {rate(r['test'], r['n'])} | {r['tokens']} |"
        )
    return "\n".join(lines), rows


def iterations_table(report: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    for r in report["iterations"]:
        rows.append(
            {"iteration": r["iteration"], "train_pass_rate": r.get("train_pass_rate"),
             "samples": r.get("samples", 0), "validation": r["validation_pass_at_1"],
             "validation_ci": r["validation_pass_at_1_ci"], "test": r["test_pass_at_1"],
             "test_ci": r["test_pass_at_1_ci"], "kept": r.get("kept", 0)}
        )  # fmt: skip
    lines = [
        "| iteration | train pass rate (samples correct) | validation pass@1 | test pass@1 | kept |",
        "|---|---|---|---|---|",
    ]
    for r, it in zip(rows, report["iterations"], strict=True):
        train = rate(r["train_pass_rate"], r["samples"]) if r["iteration"] else "–"
        best = " (best on validation)" if r["iteration"] == report["best_iteration"] else ""
        lines.append(
            f"| {r['iteration'] or 'base'}{best} | {train} | {rate(r['validation'], _n(it, 'validation'))} "
            f"| {rate(r['test'], _n(it, 'test'))} | {r['kept'] if r['iteration'] else '–'} |"
        )
    return "\n".join(lines), rows


def scarce_table(report: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    sft = report["sft_baseline"]
    best = _best_within(report, SELECTED_WITHIN)
    paired = next((t for t in report.get("paired_tests") or [] if t["b"] == "sft"), None)
    lines = [
        "| model | references used | test pass@1 |",
        "|---|---|---|",
        f"| SFT on references of {REFERENCES:.0%} of train problems | {(sft.get('train') or {}).get('examples', 0)} "
        f"| {rate(sft['test_pass_at_1'], _n(sft, 'test'))} |",
        f"| ReST-EM iteration {best['iteration']} (best of 3 on validation) | 0 | "
        f"{rate(best['test_pass_at_1'], _n(best, 'test'))} |",
    ]
    return "\n".join(lines), {
        "sft": sft["test_pass_at_1"],
        "restem": best["test_pass_at_1"],
        "paired": paired,
    }


def _outcomes(report: dict[str, Any], checkpoint: str) -> dict[str, bool]:
    t = report["test_outcomes"]
    return dict(zip(t["problem_ids"], (c == "1" for c in t["correct"][checkpoint]), strict=True))


def _paired(a: dict[str, bool], b: dict[str, bool], name_a: str, name_b: str) -> str:
    from shared.stats import compare_paired

    c = compare_paired(a, b)
    t = c.table
    return (
        f"{name_a} vs {name_b}: {t.only_a} test problems solved only by the first, {t.only_b} only by the "
        f"second, exact McNemar p = {c.p_value:.3g} ({'distinguishable' if c.distinguishable else 'within noise'})"
    )


def paired_lines(reports: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(c): each K against the next larger one; (b): the best iteration against each later one."""
    best = {k: str(_best_within(reports[f"k{k}"], SELECTED_WITHIN)["iteration"]) for k in KS}
    samples = [
        "- "
        + _paired(
            _outcomes(reports[f"k{a}"], best[a]), _outcomes(reports[f"k{b}"], best[b]), f"K = {a}", f"K = {b}"
        )
        for a, b in itertools.pairwise(KS)
    ]
    k8 = reports["k8"]
    chosen = k8["best_iteration"]
    later = [r["iteration"] for r in k8["iterations"] if r["iteration"] > chosen]
    iterations = [
        "- "
        + _paired(_outcomes(k8, str(chosen)), _outcomes(k8, str(i)), f"iteration {chosen}", f"iteration {i}")
        for i in later
    ]
    return samples, iterations


def plots(samples: list[dict[str, Any]], iterations: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [r["k"] for r in samples]
    y = [100 * r["test"] for r in samples]
    err = [
        [100 * (r["test"] - r["ci"][0]) for r in samples],
        [100 * (r["ci"][1] - r["test"]) for r in samples],
    ]
    ax.errorbar(ks, y, yerr=err, marker="o", capsize=4)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="samples per problem (K)", ylabel="test pass@1 (%)", ylim=(-2, 102),
           title="Test pass@1 of the best of 3 iterations, 95 % Wilson intervals")  # fmt: skip
    fig.tight_layout()
    fig.savefig(OUT / "samples_per_problem.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    its = [r["iteration"] for r in iterations]
    for key, label in (("validation", "validation pass@1"), ("test", "test pass@1")):
        vals = [100 * r[key] for r in iterations]
        cis = [r[f"{key}_ci"] for r in iterations]
        ax.errorbar(its, vals, yerr=[[v - 100 * c[0] for v, c in zip(vals, cis, strict=True)],
                                     [100 * c[1] - v for v, c in zip(vals, cis, strict=True)]],
                    marker="o", capsize=4, label=label)  # fmt: skip
    train = [(r["iteration"], 100 * r["train_pass_rate"]) for r in iterations if r["iteration"]]
    ax.plot(
        [t[0] for t in train],
        [t[1] for t in train],
        marker="s",
        linestyle="--",
        label="train pass rate (E-step)",
    )
    ax.set(xlabel="iteration (0: base)", ylabel="%", ylim=(-2, 102), title="K = 8 over six iterations")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "iterations.png", dpi=120)
    plt.close(fig)


def render(reports: dict[str, dict[str, Any]]) -> str:
    s_table, s_rows = samples_table(reports)
    i_table, i_rows = iterations_table(reports["k8"])
    a_table, a_result = scarce_table(reports["k8"])
    (OUT / "results.json").write_text(
        json.dumps({"samples_per_problem": s_rows, "iterations": i_rows, "scarce_references": a_result,
                    "runs": {name: r["run_id"] for name, r in reports.items()},
                    "wall_seconds": {name: r["wall_seconds"] for name, r in reports.items()}}, indent=2)
    )  # fmt: skip
    plots(s_rows, i_rows)
    paired = a_result["paired"]
    a_note = (
        f"Paired on the same test problems: {paired['only_a']} solved only by ReST-EM, "
        f"{paired['only_b']} only by SFT, exact McNemar p = {paired['p_value']:.3g}."
        if paired
        else ""
    )
    s_paired, i_paired = paired_lines(reports)
    text = "\n\n".join([
        "(c) Samples per problem (three iterations each):", s_table,
        "Paired on the same test problems:\n\n" + "\n".join(s_paired),
        "![samples per problem](samples_per_problem.png)",
        "(b) Iterations (K = 8):", i_table,
        "Paired on the same test problems:\n\n" + "\n".join(i_paired), "![iterations](iterations.png)",
        f"(a) Human references for {REFERENCES:.0%} of the train problems:", a_table, a_note,
        "Runs: " + ", ".join(f"{n} `{r['run_id']}` ({r['wall_seconds']:.0f} s)" for n, r in reports.items())
        + ". In brackets: 95 % Wilson intervals over the split's problems.",
    ])  # fmt: skip
    (OUT / "table.md").write_text(text + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--from-dir", type=Path, help="re-render from saved reports (<dir>/<run>/report.json)"
    )
    parser.add_argument(
        "--only", nargs="*", choices=[f"k{k}" for k in KS], help="run only these (others are read)"
    )
    args = parser.parse_args()
    texts = configs()
    src = args.from_dir or OUT
    # K = 8 first: it alone answers (a) and (b)
    everything = sorted(texts, key=lambda name: name != "k8")
    todo = everything if args.from_dir is None and args.only is None else list(args.only or [])
    reports = {}
    OUT.mkdir(parents=True, exist_ok=True)
    done = run_configs([texts[n] for n in todo]) if todo else []
    for (report, files), name in zip(done, todo, strict=True):
        save_report(OUT / name, report, files)
        reports[name] = report
    for name in texts:
        if name not in reports:
            reports[name] = json.loads((src / name / "report.json").read_text())
    print(render(reports))


if __name__ == "__main__":
    main()
