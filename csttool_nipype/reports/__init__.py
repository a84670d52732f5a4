"""Cohort outputs built after the fact from what is on disk: CSV tables and reports.

One entry point for ``csttool batch``, ``csttool report OUT`` and the BIDS-App ``group``
level: :func:`build_cohort_reports`. Per-subject reports are written at the end of each
subject's job (:func:`write_subject_report`); the cohort build only adds missing ones.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .aggregate import job_folders, subject_row, write_batch_metrics, write_batch_profiles
from .methods import write_cohort_methods
from .subject_report import report_name, write_subject_report

LOGGER = logging.getLogger(__name__)

__all__ = ["build_cohort_reports", "try_write_subject_report", "write_subject_report", "write_batch_metrics",
           "write_batch_profiles"]


def build_cohort_reports(out_dir, subject_reports: str = "missing", strict: bool = False) -> dict:
    """Write the cohort tables and reports of a batch output folder; return their paths.

    Parameters
    ----------
    out_dir : path
        A ``csttool batch`` output folder (``OUT``).
    subject_reports : {"missing", "all", "none"}
        Which successful subjects get their report (re)written: those without one, all, none.
    strict : bool
        Raise when a report cannot be written; otherwise log it and go on (the tables
        are always written first).

    Returns
    -------
    dict
        ``metrics`` (``batch_metrics.csv``), ``profiles`` (``batch_profiles.tsv``),
        ``report`` (``batch_report.html``, absent if it failed), ``methods``
        (``methods.md``, one methods text per configuration; absent if it failed) and
        ``subject_reports`` (list of the subject reports written now).
    """
    if subject_reports not in ("missing", "all", "none"):
        raise ValueError(f"subject_reports must be 'missing', 'all' or 'none', not {subject_reports!r}")
    out_dir = Path(out_dir)
    paths: dict = {"metrics": write_batch_metrics(out_dir), "profiles": write_batch_profiles(out_dir),
                   "subject_reports": []}
    if subject_reports != "none":
        for key in job_folders(out_dir):
            folder = out_dir / key
            if subject_row(out_dir, key)["status"] != "SUCCESS":
                continue
            if subject_reports == "missing" and (folder / report_name(key)).exists():
                continue
            paths["subject_reports"].append(_guarded(strict, f"report of {key}", write_subject_report, folder,
                                                     key=key))
    paths["subject_reports"] = [p for p in paths["subject_reports"] if p]
    report = _guarded(strict, "batch_report.html", _batch_report, out_dir)
    if report:
        paths["report"] = report
    finished = [key for key in job_folders(out_dir) if subject_row(out_dir, key)["status"] == "SUCCESS"]
    methods = _guarded(strict, "methods.md", write_cohort_methods, out_dir, finished)
    if methods:
        paths["methods"] = methods
    return paths


def try_write_subject_report(subject_dir, **kwargs) -> Path | None:
    """:func:`write_subject_report` at the end of a subject's run: a failure is logged, never raised."""
    return _guarded(False, f"the subject report in {subject_dir}", write_subject_report, subject_dir, **kwargs)


def _batch_report(out_dir: Path) -> Path:
    from .cohort_report import write_batch_report

    return write_batch_report(out_dir)


def _guarded(strict: bool, what: str, function, *args, **kwargs):
    if strict:
        return function(*args, **kwargs)
    try:
        return function(*args, **kwargs)
    except Exception:  # noqa: BLE001 - a report must never fail a finished batch
        LOGGER.warning("could not write %s", what, exc_info=True)
        return None
