"""Phantom cohorts and batch tables shared by the batch tests."""

from __future__ import annotations

import csv
from pathlib import Path

from csttool_nipype.sims.model import PhantomSpec
from csttool_nipype.sims.writer import write_bids_dataset


def cohort_with_a_truncated_subject(root: Path, seed: int) -> Path:
    """Three 3 mm, 12-direction phantom subjects in BIDS under ``root``; sub-03's NIfTI is cut
    after 20 000 bytes (it must fail, alone)."""
    write_bids_dataset(root, 3, spec=PhantomSpec(voxel_size=3.0, n_directions=12, snr=30.0), seed=seed)
    bad = root / "sub-03" / "dwi" / "sub-03_dwi.nii.gz"
    bad.write_bytes(bad.read_bytes()[:20000])
    return root


def metrics_by_subject(out: Path) -> dict[str, dict]:
    """``OUT/batch_metrics.csv`` as subject -> row."""
    with open(Path(out) / "batch_metrics.csv", newline="") as fh:
        return {r["subject"]: r for r in csv.DictReader(fh)}
