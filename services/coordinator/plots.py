"""PNG plots of a run report (matplotlib, Agg backend: no display needed).

- `pass_at_1.png`: greedy test and validation pass@1 by iteration, the base as iteration 0.
- `train_vs_test.png`: the E-step's train pass rate next to test pass@1 by iteration — the picture of
  overfitting the paper shows (train keeps rising while test flattens).
- `pass_at_k.png` / `maj_at_k.png`: one curve per iteration over k, when the run sampled its evaluation.

When the run trained the SFT baseline, pass_at_1.png draws its test pass@1 as a horizontal line.
"""

from __future__ import annotations

import io
from typing import Any

ITER_COLOURS = ["#7f7f7f", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]


def _figure(width: float = 6.4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, 4.0), dpi=120)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _pct_axis(ax: Any) -> None:
    ax.set_ylim(-8, 106)  # room for value labels at 0 and 100
    ax.set_ylabel("%")


def _iteration_axis(ax: Any, iterations: list[int]) -> None:
    ax.set_xticks(iterations, ["base" if i == 0 else str(i) for i in iterations])
    ax.set_xlabel("EM iteration")


def plot_pass_at_1(report: dict[str, Any]) -> bytes:
    fig, ax = _figure()
    rows = report["iterations"]
    its = [r["iteration"] for r in rows]
    values = {
        split: {
            r["iteration"]: 100 * r[f"{split}_pass_at_1"] for r in rows if r[f"{split}_pass_at_1"] is not None
        }
        for split in ("test", "validation")
    }
    for split, style in (("test", "o-"), ("validation", "s--")):
        pts, other = values[split], values["validation" if split == "test" else "test"]
        if not pts:
            continue
        colour = ax.plot(list(pts), list(pts.values()), style, label=f"{split} pass@1 (greedy)")[
            0
        ].get_color()
        for x, y in pts.items():
            # The higher split is labelled above its point and the lower one below, so that no label
            # sits on the other line (ties: test above).
            above = x not in other or y > other[x] or (y == other[x] and split == "test")
            ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 7 if above else -13),
                        ha="center", fontsize=8, color=colour)  # fmt: skip
    for name in sorted({n for r in rows for n in r.get("transfer_pass_at_1", {})}):
        pts = {
            r["iteration"]: 100 * r["transfer_pass_at_1"][name]
            for r in rows
            if name in r.get("transfer_pass_at_1", {})
        }
        ax.plot(list(pts), list(pts.values()), "^:", label=f"transfer {name} pass@1 (greedy)")
    sft = report.get("sft_baseline") or {}
    if sft.get("test_pass_at_1") is not None:
        ax.axhline(
            100 * sft["test_pass_at_1"],
            color="#8c564b",
            linestyle="-.",
            label="SFT on reference solutions (test)",
        )
    best = report["best_iteration"]
    ax.axvline(
        best, color="#999999", linestyle=":", label=f"best on validation ({'base' if best == 0 else best})"
    )
    _iteration_axis(ax, its)
    _pct_axis(ax)
    ax.set_title(f"{report['task']}: held-out accuracy by ReST-EM iteration")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def plot_train_vs_test(report: dict[str, Any]) -> bytes:
    fig, ax = _figure()
    rows = report["iterations"]
    its = [r["iteration"] for r in rows]
    test = [100 * (r["test_pass_at_1"] or 0.0) for r in rows]
    ax.plot(its, test, "o-", label="test pass@1 (greedy)")
    # Iteration i's E-step samples come from the model of iteration i-1: their pass rate measures that
    # model on the training problems, so it is drawn at i-1, beside the same model's test accuracy.
    train = [
        (r["iteration"] - 1, 100 * r["train_pass_rate"]) for r in rows if r["train_pass_rate"] is not None
    ]
    if train:
        ax.plot([t[0] for t in train], [t[1] for t in train], "^-", label="train problems, sampled at T 0.7")
    _iteration_axis(ax, its)
    _pct_axis(ax)
    ax.set_title("Each model on its training problems vs held-out test")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _curves(report: dict[str, Any], metric: str) -> bytes | None:
    series = []
    for r in report["iterations"]:
        for e in r["evals"]:
            points = sorted(
                (int(k.split("@")[1]), v) for k, v in e.get("metrics", {}).items() if k.startswith(metric)
            )
            if points:
                series.append((r["iteration"], e["split"], points))
    if not series:
        return None
    fig, ax = _figure(width=8.0)
    for iteration, split, points in series:
        colour = ITER_COLOURS[iteration % len(ITER_COLOURS)]
        label = f"{'base' if iteration == 0 else f'iteration {iteration}'} ({split})"
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], "o-", color=colour, label=label)
    ks = sorted({k for _, _, pts in series for k, _ in pts})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples per problem)")
    _pct_axis(ax)
    ax.set_title(f"{metric}k by iteration (sampled evaluation)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: the curves fill the axes
    return _png(fig)


def render_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """File name -> PNG bytes for every plot the report has data for."""
    plots = {"pass_at_1.png": plot_pass_at_1(report), "train_vs_test.png": plot_train_vs_test(report)}
    for metric, name in (("pass@", "pass_at_k.png"), ("maj@", "maj_at_k.png")):
        png = _curves(report, metric)
        if png is not None:
            plots[name] = png
    return plots
