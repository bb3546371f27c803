"""The report's figures (matplotlib, Agg): each function returns a Figure, `save` writes it.

Every figure colours a method with `method_colour` (one palette, in prift.weights.METHODS order), so
a method has one colour in all of them. Within a method, SFT models are drawn light and RL models
solid; RL models of runs without a learning signal are cross-hatched and never averaged in. Error
bars and bands are the standard deviation over seeds and are drawn only where there are two seeds
or more. A missing value is a hatched outline marked n/a; a zero is a bar labelled 0.0.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from common import atomic  # noqa: E402
from workflows.report.stats import curve, mean_std  # noqa: E402

BASE_COLOUR = "#7f7f7f"
PALETTE = (  # Okabe-Ito (colour-blind safe), then Paul Tol's muted set: one colour per named method
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000",
    "#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#882255", "#AA4499",
)
SFT_ALPHA = 0.5
NO_SIGNAL_HATCH = "xx"


def method_colour(method: str) -> str:
    """One colour per method in every figure: a named method's by its place in prift.weights.METHODS
    (so it never changes with the sweep), the base model grey, any other name one chosen by a hash of
    its name (stable from figure to figure and sweep to sweep)."""
    from prift.weights import METHODS

    if method == "base":
        return BASE_COLOUR
    names = list(METHODS)
    if method in names and names.index(method) < len(PALETTE):
        return PALETTE[names.index(method)]
    return PALETTE[zlib.crc32(method.encode()) % len(PALETTE)]


def save(fig, path: Path, dpi: int = 120) -> Path:
    """Write the figure atomically and free it."""
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip("."))  # the temporary name hides the format
    plt.close(fig)
    return path


def comparison_figure(bars: list[dict], tasks: list[str], sizes: dict[str, tuple[int, int]], metric_name: str):
    """Grouped bars, one group per task, one bar per row (base, then each method's SFT and RL).

    `bars`: [{"label", "method", "stage", "flagged", "values": {task: [value per seed]}}]; a task a
    row lacks is drawn n/a. Values in [0, 1], shown in %."""
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(bars) * len(tasks) + 2), 5.2))
    width = 0.8 / max(len(bars), 1)
    seeds = sorted({len(v) for b in bars for v in b["values"].values()})
    top = max([100 * max(v) for b in bars for v in b["values"].values() if v] + [10.0])  # all-zero rows: a 0-12% axis
    for i, b in enumerate(bars):
        xs = [j + i * width for j in range(len(tasks))]
        colour = method_colour(b["method"])
        first = next((t for t in tasks if b["values"].get(t)), None)  # the bar that carries the legend entry
        for x, task in zip(xs, tasks):
            values = b["values"].get(task)
            if not values:
                ax.bar(x, 0.08 * top, width, facecolor="none", edgecolor="#999999", hatch="//", linewidth=0.6)
                ax.text(x, 0.09 * top, "n/a", ha="center", va="bottom", fontsize=6, color="#666666", rotation=90)
                continue
            mean, std = mean_std([100 * v for v in values])
            ax.bar(x, mean, width, color=colour, alpha=SFT_ALPHA if b["stage"] == "sft" else 1.0,
                         hatch=NO_SIGNAL_HATCH if b["flagged"] else None, edgecolor="white" if b["flagged"] else None,
                         label=b["label"] if task == first else None)
            if std is not None:  # two seeds or more: their spread; one seed has none to show
                ax.errorbar(x, mean, yerr=[[min(std, mean)], [std]], fmt="none", ecolor="#333333", capsize=2, lw=0.8)
            ax.text(x, mean + (std or 0) + 0.01 * top, f"{mean:.1f}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))],
                  [f"{t}\n({sizes[t][0]} problems)" if t in sizes else t for t in tasks])
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel(f"{metric_name} (%)")
    n = sorted({s[1] for s in sizes.values()})
    counts = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}"
    spread = "error bars: std over seeds where a bar has 2+" if seeds and max(seeds) > 1 else "one seed: no error bars"
    ax.set_title(f"{metric_name} per task, n = {'/'.join(map(str, n)) or '?'} samples per problem\n"
                 f"mean over {counts} seed(s) per bar; {spread}", fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, max(len(bars), 1)), loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.tight_layout()
    return fig


def curves_figure(per_method: dict[str, dict], labels: dict[str, str], beta: float | None, stage: str = "GRPO",
                  title: str = "GRPO from each SFT initialization"):
    """Training curves by step (GRPO's, or SFT's with `stage`="SFT"), one panel per logged key
    (`labels`: log key -> axis label), methods overlaid. `per_method`: {method: {"ok": [history
    per seed], "flagged": [(seed, history)]}}, a history {key: {step: value}}. Runs with a learning
    signal: mean line, ± std band (2+ seeds); runs without one: their own dashed line, labelled, not
    in the mean."""
    keys = list(labels)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        drawn = False
        for method, runs in sorted(per_method.items()):
            colour = method_colour(method)
            ok = [h[key] for h in runs["ok"] if h.get(key)]
            if ok:
                steps, means, stds, _ = curve(ok)
                ax.plot(steps, means, color=colour, marker="o", ms=3,
                        label=f"{method} ({len(ok)} seed{'s' * (len(ok) > 1)})")
                if len(ok) > 1:
                    sd = np.array([s or 0.0 for s in stds])
                    ax.fill_between(steps, np.array(means) - sd, np.array(means) + sd, color=colour, alpha=0.2, lw=0)
                drawn = True
            for seed, h in runs["flagged"]:
                if h.get(key):
                    steps = sorted(h[key])
                    ax.plot(steps, [h[key][s] for s in steps], color=colour, ls="--", lw=1,
                            label=f"{method} seed {seed}: no learning signal")
                    drawn = True
        ax.set_xlabel(f"{stage} step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(labels[key])
        if not drawn:
            reason = (f"not logged: rl.beta = {beta:g}, so GRPO has no KL term\n(TRL logs kl only when beta > 0)"
                      if key == "kl" and not beta else "not logged by any run")
            ax.text(0.5, 0.5, reason, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="#666666")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.legend(fontsize=7)
        ax.set_title({"kl": "KL to the SFT start"}.get(key, labels[key]), fontsize=9)
    fig.suptitle(f"{title}: mean ± std over seeds (band only with 2+ seeds)", fontsize=10)
    fig.tight_layout()
    return fig


STAGE_STYLE = {"base": ":", "sft": "--", "rl": "-"}


def pass_at_k_figure(curves: dict[str, list[dict]], sizes: dict[str, tuple[int, int]]):
    """One panel per task: Pass@k against k = 1..n, one line per model row (colour: its method;
    dotted base, dashed SFT, solid RL). `curves`: {task: [{"label", "method", "stage", "ks", "values"}]};
    `sizes`: {task: (problems, samples)}."""
    tasks = sorted(curves)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.4, 4.4 * len(tasks)), 4.0), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for c in curves[task]:
            colour = "#555555" if c["method"] == "base" else method_colour(c["method"])
            style = "-." if c.get("flagged") else STAGE_STYLE.get(c["stage"], "-")  # RL without a learning signal
            ax.plot(c["ks"], [100 * v for v in c["values"]], color=colour, ls=style, marker="o", ms=3, label=c["label"])
        problems, samples = sizes.get(task, (0, 0))
        ax.set_title(f"{task}: {problems} problems x {samples} samples", fontsize=9)
        ax.set_xlabel("k (samples kept)")
        ax.set_ylabel("Pass@k (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.suptitle("Room for RL: Pass@k, k = 1..n, mean over problems and seeds", fontsize=10)
    fig.tight_layout()
    return fig


def weights_figure(weights: dict[str, np.ndarray]):
    """One histogram per method of its per-token weights on the same response tokens, as shares of
    those tokens, on one shared y-axis."""
    fig, axes = plt.subplots(1, len(weights), figsize=(3.2 * len(weights), 3.2), squeeze=False, sharey=True)
    for ax, (method, w) in zip(axes[0], weights.items()):
        ax.hist(w, bins=20, range=(0, 1), weights=np.full(len(w), 1.0 / max(len(w), 1)), color=method_colour(method))
        ax.set_title(f"{method} (mean {w.mean():.2f})", fontsize=9)
        ax.set_xlabel("token weight")
    axes[0][0].set_ylabel("share of response tokens")
    n = len(next(iter(weights.values()))) if weights else 0
    fig.suptitle(f"Per-token training weight by method ({n} response tokens of the cached SFT data)", fontsize=10)
    fig.tight_layout()
    return fig
