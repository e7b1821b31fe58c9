"""PNG plots of a run report (matplotlib, Agg backend: no display needed).

- `pass_at_1.png`: greedy test and validation pass@1 by iteration, the base as iteration 0.
- `train_vs_test.png`: the E-step's train pass rate next to test pass@1 by iteration — the picture of
  overfitting the paper shows (train keeps rising while test flattens).
- `pass_at_k.png` / `maj_at_k.png`: one curve per iteration over k, when the run sampled its evaluation.

Every held-out rate is drawn with its 95 % interval from the report (error bars; a band for the SFT
baseline's test pass@1, drawn as a horizontal line). The train pass rate has none: it is measured
on every training problem (see `significance`).
"""

from __future__ import annotations

import io
from typing import Any

DODGE = 0.06  # x offset of the test and validation points of one iteration
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


def _yerr(points: dict[float, float], cis: dict[float, list[float] | None]) -> list[list[float]]:
    """Error bar lengths below and above each point (in %), zero where a point has no interval."""
    below, above = [], []
    for x, y in points.items():
        lo, hi = cis.get(x) or (y / 100, y / 100)
        below.append(max(y - 100 * lo, 0.0))
        above.append(max(100 * hi - y, 0.0))
    return [below, above]


def _iteration_axis(ax: Any, iterations: list[int]) -> None:
    ax.set_xticks(iterations, ["base" if i == 0 else str(i) for i in iterations])
    ax.set_xlabel("EM iteration")


def _split_points(rows: list[dict[str, Any]], split: str, shift: float) -> tuple[dict, dict]:
    """(x -> pass@1 in %, x -> interval) of a split's greedy pass@1, x the iteration plus `shift`."""
    rated = [r for r in rows if r[f"{split}_pass_at_1"] is not None]
    return (
        {r["iteration"] + shift: 100 * r[f"{split}_pass_at_1"] for r in rated},
        {r["iteration"] + shift: r.get(f"{split}_pass_at_1_ci") for r in rated},
    )


def _transfer_and_sft(ax: Any, report: dict[str, Any]) -> None:
    rows = report["iterations"]
    for name in sorted({n for r in rows for n in r.get("transfer_pass_at_1", {})}):
        with_it = [r for r in rows if name in r.get("transfer_pass_at_1", {})]
        pts = {r["iteration"]: 100 * r["transfer_pass_at_1"][name] for r in with_it}
        cis = {r["iteration"]: (r.get("transfer_pass_at_1_ci") or {}).get(name) for r in with_it}
        ax.errorbar(list(pts), list(pts.values()), yerr=_yerr(pts, cis), fmt="^:", capsize=2,
                    label=f"transfer {name} pass@1 (greedy)")  # fmt: skip
    sft = report.get("sft_baseline") or {}
    if sft.get("test_pass_at_1") is not None:
        colour = "#8c564b"
        ax.axhline(100 * sft["test_pass_at_1"], color=colour, linestyle="-.",
                   label="SFT on reference solutions (test)")  # fmt: skip
        if sft.get("test_pass_at_1_ci"):
            lo, hi = sft["test_pass_at_1_ci"]
            ax.axhspan(100 * lo, 100 * hi, color=colour, alpha=0.08, linewidth=0)


def plot_pass_at_1(report: dict[str, Any]) -> bytes:
    fig, ax = _figure()
    rows = report["iterations"]
    # the two splits side by side at each iteration, so that their error bars do not overlap
    for split, style, shift in (("test", "o-", DODGE), ("validation", "s--", -DODGE)):
        pts, cis = _split_points(rows, split, shift)
        if not pts:
            continue
        bars = ax.errorbar(list(pts), list(pts.values()), yerr=_yerr(pts, cis), fmt=style, capsize=3,
                           label=f"{split} pass@1 (greedy), 95 % interval")  # fmt: skip
        colour = bars.lines[0].get_color()
        for x, y in pts.items():
            # above the error bar: beside the point it would sit on a line, on the point on the bar
            top = 100 * cis[x][1] if cis[x] else y
            ax.annotate(f"{y:.0f}", (x, top), textcoords="offset points", xytext=(0, 3), ha="center",
                        fontsize=8, color=colour)  # fmt: skip
    _transfer_and_sft(ax, report)
    best = report["best_iteration"]
    ax.axvline(
        best, color="#999999", linestyle=":", label=f"best on validation ({'base' if best == 0 else best})"
    )
    _iteration_axis(ax, [r["iteration"] for r in rows])
    _pct_axis(ax)
    ax.set_title(f"{report['task']}: held-out accuracy by ReST-EM iteration")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def plot_train_vs_test(report: dict[str, Any]) -> bytes:
    fig, ax = _figure()
    rows = report["iterations"]
    its = [r["iteration"] for r in rows]
    pts, cis = _split_points(rows, "test", 0.0)
    ax.errorbar(list(pts), list(pts.values()), yerr=_yerr(pts, cis), fmt="o-", capsize=3,
                label="test pass@1 (greedy), 95 % interval")  # fmt: skip
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
            names = sorted((int(k.split("@")[1]), k) for k in e.get("metrics", {}) if k.startswith(metric))
            if names:
                points = [(k, e["metrics"][name], (e.get("metrics_ci") or {}).get(name)) for k, name in names]
                series.append((r["iteration"], e["split"], points))
    if not series:
        return None
    fig, ax = _figure(width=8.0)
    for i, (iteration, split, points) in enumerate(series):
        colour = ITER_COLOURS[iteration % len(ITER_COLOURS)]
        label = f"{'base' if iteration == 0 else f'iteration {iteration}'} ({split})"
        # curves a little apart on the log axis, so that their error bars at the same k do not overlap
        spread = 2 ** (0.04 * (i - (len(series) - 1) / 2))
        pts = {k * spread: 100 * v for k, v, _ in points}
        cis = {k * spread: interval for k, _, interval in points}
        ax.errorbar(list(pts), list(pts.values()), yerr=_yerr(pts, cis), fmt="o-", capsize=2, color=colour,
                    label=label)  # fmt: skip
    ks = sorted({k for _, _, pts in series for k, _, _ in pts})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples per problem)")
    _pct_axis(ax)
    ax.set_title(f"{metric}k by iteration (sampled evaluation), 95 % intervals")
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
