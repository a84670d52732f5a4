"""``batch_metrics.csv``: one row per subject (and session), rebuilt from disk.

Everything comes from files a batch leaves behind, so ``csttool report OUT`` gives
the same table as the batch itself: ``_done.json`` for finished subjects,
``logs/last_attempt.json`` for failed ones, ``batch_status.json`` for the order of
the last batch and for its entries rejected before running (which have no folder: their
key may be a placeholder such as ``entry#3``), and each subject's summary table (``summary`` in
:mod:`csttool_nipype.derivatives`: one row of summary metrics) when the pipeline wrote one.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .. import derivatives

BASE_COLUMNS = ["subject", "session", "status", "error_category", "error_reason", "duration_s",
                "config_hash", "version"]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _status(out_dir: Path) -> dict:
    return _read_json(Path(out_dir) / "batch_status.json") or {}


def job_folders(out_dir: Path) -> list[str]:
    """Keys of every subject/session folder with a done marker or an attempt record, and of
    the last batch's entries rejected before running."""
    out_dir = Path(out_dir)
    status = _status(out_dir)
    order = status.get("order", [])
    found = set(status.get("invalid") or [])
    for marker in ("_done.json", "logs/last_attempt.json"):
        for pattern in (f"sub-*/{marker}", f"sub-*/ses-*/{marker}"):
            for path in out_dir.glob(pattern):
                root = path.parent if marker == "_done.json" else path.parent.parent
                found.add(str(root.relative_to(out_dir)))
    return [k for k in order if k in found] + sorted(found - set(order))


def _summary_metrics(job_root: Path) -> dict:
    row = {}
    tsv = derivatives.find(job_root, "summary")
    if tsv is not None:
        with open(tsv, newline="") as fh:
            for record in csv.DictReader(fh, delimiter="\t"):
                row.update({k: v for k, v in record.items() if k not in ("subject", "session")})
    return row


def subject_row(out_dir: Path, key: str) -> dict:
    root = Path(out_dir) / key
    subject, _, session = key.partition("/")
    row = {"subject": subject, "session": session or ""}
    status = _status(out_dir)
    if key in (status.get("invalid") or []):
        record = (status.get("outcomes") or {}).get(key, {})
        row.update(status="FAILED", error_category=record.get("category", "invalid input"),
                   error_reason=record.get("reason", ""), duration_s="0.0", config_hash="",
                   version=status.get("version", ""))
        return row
    done = _read_json(root / "_done.json")
    attempt = _read_json(root / "logs" / "last_attempt.json") or {}
    if done and done.get("status") == "SUCCESS":
        row.update(status="SUCCESS", error_category="", error_reason="",
                   duration_s=f"{float(done.get('duration_s', 0)):.1f}", config_hash=done.get("config_hash", ""),
                   version=done.get("version", ""))
        row.update(_summary_metrics(root))
    else:
        row.update(status=attempt.get("status", "FAILED"), error_category=attempt.get("category", ""),
                   error_reason=attempt.get("reason", ""),
                   duration_s=f"{float(attempt.get('duration_s', 0)):.1f}", config_hash="",
                   version=attempt.get("version", ""))
    return row


def write_batch_metrics(out_dir) -> Path:
    """Write ``OUT/batch_metrics.csv`` and return its path."""
    out_dir = Path(out_dir)
    rows = [subject_row(out_dir, key) for key in job_folders(out_dir)]
    extra = []
    for row in rows:
        extra += [k for k in row if k not in BASE_COLUMNS and k not in extra]
    path = out_dir / "batch_metrics.csv"
    tmp = path.with_name(".batch_metrics.csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=BASE_COLUMNS + extra, restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


PROFILE_COLUMNS = ["subject", "session", "side", "node", "metric", "value"]


def write_batch_profiles(out_dir) -> Path:
    """Write ``OUT/batch_profiles.tsv`` (long format: subject, session, side, node, metric, value).

    One block per successful subject, in the order of ``batch_metrics.csv``, copied
    from its ``profiles`` table (:mod:`csttool_nipype.derivatives`; values as written there).
    """
    out_dir = Path(out_dir)
    path = out_dir / "batch_profiles.tsv"
    tmp = path.with_name(".batch_profiles.tsv.tmp")
    with open(tmp, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=PROFILE_COLUMNS, delimiter="\t", extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        for key in job_folders(out_dir):
            if subject_row(out_dir, key)["status"] != "SUCCESS":
                continue
            subject, _, session = key.partition("/")
            tsv = derivatives.find(out_dir / key, "profiles")
            if tsv is not None:
                with open(tsv, newline="") as fh:
                    for record in csv.DictReader(fh, delimiter="\t"):
                        writer.writerow({**record, "subject": subject, "session": session})
    tmp.replace(path)
    return path
