"""BIDS-App entry point: participant level through the batch engine, group level from disk."""

import csv
import json

import pytest

from csttool_nipype.cli.bids_app import main
from csttool_nipype.science.phantom import PhantomSpec, write_bids_dataset


def test_output_inside_raw_tree_is_refused(tmp_path, caplog):
    raw = tmp_path / "raw"
    raw.mkdir()
    assert main([str(raw), str(raw / "out"), "participant"]) == 2
    assert main([str(raw), str(raw), "participant"]) == 2


@pytest.mark.slow
def test_participant_then_group(tmp_path):
    raw = write_bids_dataset(tmp_path / "raw", 2, spec=PhantomSpec(voxel_size=3.0, n_directions=12), seed=1)
    out = tmp_path / "derivatives"
    fast = ["--stages", "tensor", "--denoise-method", "none", "--no-gibbs", "--no-motion-correction"]
    assert main([str(raw), str(out), "participant", "--participant-label", "02", *fast]) == 0
    assert (out / "sub-02" / "_done.json").exists() and not (out / "sub-01").exists()
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "csttool-nipype"
    (out / "batch_metrics.csv").unlink()
    assert main([str(raw), str(out), "group"]) == 0
    with open(out / "batch_metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["subject"], r["status"]) for r in rows] == [("sub-02", "SUCCESS")]
