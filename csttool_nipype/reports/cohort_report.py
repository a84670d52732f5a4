"""``OUT/batch_report.html``: the cohort at a glance, rebuilt from files on disk.

Reads ``batch_metrics.csv``, ``batch_profiles.tsv`` and ``batch_status.json`` (all
written by :func:`csttool_nipype.reports.build_cohort_reports`), so it can be rebuilt at
any time without reprocessing. Outliers: a robust z-score (median and MAD) beyond
:data:`Z_THRESHOLD` on a key metric, computed when at least :data:`MIN_SUBJECTS_FOR_Z`
subjects have that metric, or any QC flag.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..science.coverage import PARTIAL_COVERAGE_FLAG
from . import cohort_figures
from ..science.profiles import COVERAGE_COLUMNS
from .render import figure_entry, format_number, render, to_float
from .subject_report import report_name

LOGGER = logging.getLogger(__name__)

Z_THRESHOLD = 3.5          # Iglewicz & Hoaglin's cut-off for the modified z-score
MIN_SUBJECTS_FOR_Z = 5
#: Metrics screened for outliers: (column of batch_metrics.csv, label).
KEY_METRICS = [("fa_mean_left", "FA left"), ("fa_mean_right", "FA right"), ("md_mean_left", "MD left"),
               ("md_mean_right", "MD right"), ("fa_mean_li", "FA laterality"), ("md_mean_li", "MD laterality"),
               ("streamline_count_left", "streamlines left"), ("streamline_count_right", "streamlines right"),
               ("volume_mm3_left", "volume left"), ("volume_mm3_right", "volume right")]

#: Table columns: (header, CSV column, display scale, kind).
METRIC_COLUMNS = [("FA L", "fa_mean_left", 1, "num"), ("FA R", "fa_mean_right", 1, "num"),
                  ("FA LI", "fa_mean_li", 1, "num"), ("MD L", "md_mean_left", 1e3, "num"),
                  ("MD R", "md_mean_right", 1e3, "num"), ("MD LI", "md_mean_li", 1, "num"),
                  ("streamlines L", "streamline_count_left", 1, "num"),
                  ("streamlines R", "streamline_count_right", 1, "num"),
                  ("volume L (cm³)", "volume_mm3_left", 1e-3, "num"), ("volume R (cm³)", "volume_mm3_right", 1e-3, "num")]

STATUSES = ("SUCCESS", "FAILED", "TIMEOUT", "SKIPPED")


def read_rows(metrics_csv: Path) -> list[dict]:
    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["key"] = row["subject"] + (f"/{row['session']}" if row.get("session") else "")
    return rows


def robust_z(values: list[float]) -> list[float]:
    """Modified z-scores ``(x - median) / (1.4826 MAD)`` (NaN where a value is missing).

    With a MAD of 0, the mean absolute deviation (x 1.2533) stands in; all NaN when
    both are 0 or fewer than :data:`MIN_SUBJECTS_FOR_Z` values are finite.
    """
    x = np.asarray(values, float)
    finite = x[np.isfinite(x)]
    if finite.size < MIN_SUBJECTS_FOR_Z:
        return [math.nan] * len(x)
    median = float(np.median(finite))
    scale = 1.4826 * float(np.median(np.abs(finite - median)))
    if scale == 0:
        scale = 1.2533 * float(np.mean(np.abs(finite - median)))
    if scale == 0:
        return [math.nan] * len(x)
    return list((x - median) / scale)


def find_outliers(rows: list[dict]) -> dict[str, list[str]]:
    """Subject key -> reasons (robust z beyond the threshold on a key metric, QC flags)."""
    ok = [r for r in rows if r["status"] == "SUCCESS"]
    reasons: dict[str, list[str]] = {}
    for column, label in KEY_METRICS:
        for row, z in zip(ok, robust_z([to_float(r.get(column)) for r in ok])):
            if math.isfinite(z) and abs(z) > Z_THRESHOLD:
                reasons.setdefault(row["key"], []).append(
                    f"{label} {format_number(row.get(column), 3)} (robust z = {z:+.1f})")
    for row in ok:
        for reason in (row.get("flag_reasons") or row.get("flags") or "").split(";"):
            if reason.strip() and not reason.strip().startswith(PARTIAL_COVERAGE_FLAG):
                reasons.setdefault(row["key"], []).append(f"QC flag: {reason.strip()}")
    return reasons


def _what(reason: str) -> str:
    """Short form of an outlier reason: the metric's label, or "QC flag"."""
    return "QC flag" if reason.startswith("QC flag") else reason.split(" (robust z")[0].rsplit(" ", 1)[0]


def _log_path(out_dir: Path, key: str) -> str:
    path = Path(key) / "logs" / f"{key.replace('/', '_')}.log"
    return str(path) if (out_dir / path).is_file() else ""


def _sortable(value) -> str:
    x = to_float(value)
    return repr(x) if math.isfinite(x) else ""


def covered_nodes(profiles) -> dict[str, dict[str, tuple[int, int]]]:
    """Subject key -> side -> (first, last) profile node with an FA value (the covered range)."""
    out: dict = {}
    fa = profiles[(profiles["metric"] == "fa") & profiles["value"].notna()]
    for (key, side), nodes in fa.groupby(["key", "side"])["node"]:
        out.setdefault(key, {})[side] = (int(nodes.min()), int(nodes.max()))
    return out


def coverage_text(row: dict, nodes: dict | None) -> str:
    """What of the CST a subject's field of view holds: MNI z range, share, profile nodes."""
    z_min, z_max, share = (to_float(row.get(c)) for c in COVERAGE_COLUMNS)
    parts = []
    if math.isfinite(z_min) and math.isfinite(z_max):
        parts.append(f"z {z_min:.0f} to {z_max:.0f} mm" + (f" ({100 * share:.0f} %)" if math.isfinite(share) else ""))
    if nodes:
        parts.append("nodes " + ", ".join(f"{side[0].upper()} {a}–{b}" for side, (a, b) in sorted(nodes.items())))
    return "; ".join(parts)


def table_rows(out_dir: Path, rows: list[dict], outliers: dict, last_status: dict,
               nodes: dict | None = None) -> list[dict]:
    out = []
    for index, row in enumerate(rows, start=1):
        report = Path(row["key"]) / report_name(row["key"])
        duration = to_float(row.get("duration_s"))
        cells = [{"text": format_number(to_float(row.get(col)) * scale, 3), "sort": _sortable(row.get(col))}
                 for _, col, scale, _ in METRIC_COLUMNS]
        out.append({
            "index": index, "key": row["key"], "subject": row["subject"], "session": row.get("session", ""),
            "status": row["status"], "last": last_status.get(row["key"], ""),
            "category": row.get("error_category", ""), "reason": row.get("error_reason", ""),
            "duration_min": format_number(duration / 60, 2), "duration_sort": _sortable(duration),
            "cells": cells, "flags": (row.get("flags") or "").replace(";", ", "),
            "coverage": coverage_text(row, (nodes or {}).get(row["key"])) if row["status"] == "SUCCESS" else "",
            "partial": PARTIAL_COVERAGE_FLAG in (row.get("flags") or "").split(";"),
            "outlier": "; ".join(outliers.get(row["key"], [])),
            "outlier_on": ", ".join(dict.fromkeys(_what(r) for r in outliers.get(row["key"], []))),
            "report": str(report) if (out_dir / report).is_file() else "",
            "log": _log_path(out_dir, row["key"]),
        })
    return out


def batch_status(out_dir: Path) -> dict:
    """``batch_status.json`` of the last batch (empty without one)."""
    try:
        return json.loads((out_dir / "batch_status.json").read_text())
    except (OSError, ValueError):
        return {}


def header(out_dir: Path, rows: list[dict]) -> dict:
    """Run facts: dates, versions, config hashes, counts, durations."""
    status = batch_status(out_dir)
    outcomes = status.get("outcomes", {})
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES[:3]}
    counts["SKIPPED"] = sum(o.get("status") == "SKIPPED" for o in outcomes.values())
    durations = [to_float(r.get("duration_s")) for r in rows if r["status"] == "SUCCESS"]
    durations = [d for d in durations if math.isfinite(d) and d > 0]
    hashes = sorted({r.get("config_hash") for r in rows if r.get("config_hash")})
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "report_version": __version__,
        "versions": sorted({r.get("version") for r in rows if r.get("version")}),
        "batch_started": status.get("started", ""), "batch_duration_s": status.get("duration_s"),
        "batch_hash": status.get("config_hash", ""), "subject_hashes": hashes, "counts": counts,
        "n_subjects": len(rows), "in_last_batch": len(outcomes),
        "median_s": statistics.median(durations) if durations else None,
        "min_s": min(durations) if durations else None, "max_s": max(durations) if durations else None,
    }


def _profiles(profiles_tsv: Path):
    import pandas as pd

    table = pd.read_csv(profiles_tsv, sep="\t", dtype={"subject": str, "session": str}, keep_default_na=False,
                        na_values={"value": ["", "nan", "NaN"]})
    table["key"] = table["subject"] + table["session"].map(lambda s: f"/{s}" if s else "")
    table["value"] = table["value"].astype(float)
    return table


def _figure(title: str, caption: str, draw) -> dict:
    return figure_entry(title, caption, draw, LOGGER)


def cohort_figures_for(rows: list[dict], outliers: dict, profiles_tsv: Path) -> list[dict]:
    ok = [r for r in rows if r["status"] == "SUCCESS" and math.isfinite(to_float(r.get("fa_mean_left")))]
    if not ok:
        return []
    flagged = set(outliers)
    figs = [_figure("Mean CST FA and MD", "Each subject is a pair of points (left and right CST) joined by a line; "
                    "black bars are the cohort medians. Outliers and flagged subjects are red and named.",
                    lambda: cohort_figures.metrics_figure(ok, flagged))]
    if profiles_tsv.is_file():
        figs.append(_figure(
            "Tract profiles", "FA and MD along each CST (node 0 = brainstem): every subject in grey, the mean "
            "(coloured line) ± 1 SD (band) of the subjects not highlighted, and outliers and flagged subjects in "
            "their own colours. At each node the mean and SD use only the subjects whose profile covers it: a "
            "field of view that stops above the medulla leaves the lowest nodes empty (partial_coverage; the "
            "table gives each subject's covered nodes). A focal dip on one side in one subject points to a lesion or a local tracking "
            "problem.",
            lambda: cohort_figures.profiles_figure(_profiles(profiles_tsv), flagged)))
    figs.append(_figure("Laterality", "Laterality index (L−R)/(L+R) per subject: 0 is symmetric, positive means "
                        "larger on the left. Outliers and flagged subjects are red.",
                        lambda: cohort_figures.laterality_figure(ok, flagged)))
    return figs


def write_batch_report(out_dir) -> Path:
    """Render ``OUT/batch_report.html`` from the tables on disk; return its path."""
    out_dir = Path(out_dir)
    rows = read_rows(out_dir / "batch_metrics.csv")
    outliers = find_outliers(rows)
    last = {k: v.get("status", "") for k, v in batch_status(out_dir).get("outcomes", {}).items()}
    profiles_tsv = out_dir / "batch_profiles.tsv"
    nodes = covered_nodes(_profiles(profiles_tsv)) if profiles_tsv.is_file() else {}
    table = table_rows(out_dir, rows, outliers, last, nodes)
    path = render(
        "batch_report.html.j2", out_dir / "batch_report.html", head=header(out_dir, rows), rows=table,
        metric_headers=[(h, kind) for h, _, _, kind in METRIC_COLUMNS],
        has_sessions=any(r.get("session") for r in rows),
        failures=[r for r in table if r["status"] in ("FAILED", "TIMEOUT")],
        outliers=[(key, reasons) for key, reasons in outliers.items()],
        figures=cohort_figures_for(rows, outliers, out_dir / "batch_profiles.tsv"),
        z_threshold=Z_THRESHOLD, min_subjects=MIN_SUBJECTS_FOR_Z,
        n_with_metrics=sum(math.isfinite(to_float(r.get("fa_mean_left"))) for r in rows),
        out_dir=str(out_dir),
    )
    LOGGER.info("cohort report: %s", path)
    return path
