"""Cohort report figures: metric distributions, overlaid profiles, laterality (PNG data URIs)."""

from __future__ import annotations

import numpy as np

from .figures import SIDE_COLORS, metric_scale, new_figure, png_data_uri
from .render import to_float

OUTLIER_COLOR = "#d62728"
HIGHLIGHT_COLORS = ["#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f00", "#17becf", "#000000", "#bcbd22"]
LABEL_LIMIT = 40   # beyond this many subjects, points are not labelled one by one
NAME_ALL = 12      # up to this many subjects, every point is named


def _jitter(n: int, width: float = 0.12) -> np.ndarray:
    """Deterministic horizontal offsets spreading ``n`` points."""
    return np.zeros(n) if n < 2 else np.linspace(-width, width, n)


def metrics_figure(rows: list[dict], outliers: set[str]) -> str:
    """Mean CST FA and MD per side, one point per subject, the two sides of a subject joined."""
    metrics = ("fa", "md")
    fig = new_figure(4.6 * len(metrics), 4.4)
    axes = fig.subplots(1, len(metrics))
    offsets = _jitter(len(rows))
    for ax, metric in zip(axes, metrics):
        scale, unit = metric_scale(metric)
        for offset, row in zip(offsets, rows):
            left = to_float(row.get(f"{metric}_mean_left")) * scale
            right = to_float(row.get(f"{metric}_mean_right")) * scale
            bad = row["key"] in outliers
            ax.plot([offset, 1 + offset], [left, right], color=OUTLIER_COLOR if bad else "#bbbbbb", lw=0.8,
                    zorder=1)
            for x, y, side in ((offset, left, "left"), (1 + offset, right, "right")):
                ax.scatter([x], [y], s=36 if bad else 22, zorder=3, color=OUTLIER_COLOR if bad else SIDE_COLORS[side],
                           edgecolors="black" if bad else "none", linewidths=0.6)
            if (bad and len(rows) <= LABEL_LIMIT) or len(rows) <= NAME_ALL:
                ax.annotate(row["key"], (1 + offset, right), xytext=(6, 0), textcoords="offset points",
                            fontsize=8, color=OUTLIER_COLOR if bad else "#333333", va="center")
        for x, side in ((0, "left"), (1, "right")):
            values = np.array([to_float(r.get(f"{metric}_mean_{side}")) * scale for r in rows])
            values = values[np.isfinite(values)]
            if values.size:
                ax.plot([x - 0.25, x + 0.25], [np.median(values)] * 2, color="black", lw=1.5, zorder=2)
        ax.set_xticks([0, 1], ["left CST", "right CST"])
        ax.set_xlim(-0.5, 1.7)
        ax.set_ylabel(f"mean {metric.upper()}{unit}")
        ax.set_title(f"mean CST {metric.upper()} per subject", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return png_data_uri(fig)


def profiles_figure(profiles, highlight: set[str], metrics=("fa", "md")) -> str:
    """Every subject's profile (grey), the mean ± SD band of the others, highlighted subjects in colour.

    ``profiles``: long table with ``key``, ``side``, ``node``, ``metric``, ``value``. The
    band leaves the highlighted subjects out (unless fewer than two would remain), so that
    they are compared with the rest of the cohort.
    """
    marked = sorted(set(profiles["key"]) & set(highlight))
    colors = {key: HIGHLIGHT_COLORS[i % len(HIGHLIGHT_COLORS)] for i, key in enumerate(marked)}
    fig = new_figure(11, 3.4 * len(metrics))
    axes = np.atleast_2d(fig.subplots(len(metrics), 2, sharey="row"))
    for i, metric in enumerate(metrics):
        scale, unit = metric_scale(metric)
        for j, side in enumerate(("left", "right")):
            ax = axes[i, j]
            part = profiles[(profiles["metric"] == metric) & (profiles["side"] == side)]
            wide = part.pivot_table(index="key", columns="node", values="value", aggfunc="first") * scale
            reference = wide.drop(index=[k for k in marked if k in wide.index])
            reference = reference if len(reference) >= 2 else wide
            for n, (key, values) in enumerate(reference.iterrows()):
                ax.plot(wide.columns, values.to_numpy(float), lw=0.8, color="#555555", alpha=0.6, zorder=2,
                        label="each subject" if n == 0 else None)
            if len(reference):
                mean = reference.mean(axis=0).to_numpy(float)
                sd = reference.std(axis=0, ddof=1).to_numpy(float)
                ax.fill_between(wide.columns, mean - sd, mean + sd, color=SIDE_COLORS[side], alpha=0.25, lw=0,
                                label="mean ± 1 SD" + (" (others)" if len(reference) < len(wide) else ""), zorder=0)
                ax.plot(wide.columns, mean, color=SIDE_COLORS[side], lw=2, zorder=1)
            for key in marked:
                if key in wide.index:
                    ax.plot(wide.columns, wide.loc[key].to_numpy(float), lw=1.6, color=colors[key], zorder=3,
                            label=key if len(marked) <= 8 else None)
            ax.set_title(f"{metric.upper()}, {side} CST ({len(wide)} subjects)", fontsize=10)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(f"{metric.upper()}{unit}")
            if i == len(metrics) - 1:
                ax.set_xlabel("node: 0 = brainstem … motor cortex")
            ax.legend(fontsize=7, loc="best")
    return png_data_uri(fig)


def laterality_figure(rows: list[dict], outliers: set[str]) -> str:
    """Laterality index (L−R)/(L+R) of FA, MD and streamline count, one row per subject."""
    columns = [("fa_mean_li", "FA"), ("md_mean_li", "MD"), ("streamline_count_li", "streamline count")]
    n = len(rows)
    fig = new_figure(11, max(2.6, 0.6 + 0.22 * min(n, 120)))
    axes = fig.subplots(1, len(columns), sharey=True)
    y = np.arange(n)[::-1]
    for ax, (column, label) in zip(axes, columns):
        values = np.array([to_float(r.get(column)) for r in rows])
        colors = [OUTLIER_COLOR if r["key"] in outliers else "#4d4d4d" for r in rows]
        ax.axvline(0, color="black", lw=0.8)
        ax.hlines(y, 0, np.nan_to_num(values), colors=colors, lw=1.2)
        ax.scatter(values, y, color=colors, s=18, zorder=3)
        finite = values[np.isfinite(values)]
        lim = max(0.05, 1.15 * float(np.max(np.abs(finite)))) if finite.size else 0.05
        ax.set_xlim(-lim, lim)
        ax.set_title(f"{label}: (L−R)/(L+R)", fontsize=10)
        ax.set_xlabel("← right larger    left larger →", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [r["key"] for r in rows] if n <= LABEL_LIMIT else [""] * n, fontsize=8)
    axes[0].set_ylim(-0.7, n - 0.3)
    return png_data_uri(fig)
