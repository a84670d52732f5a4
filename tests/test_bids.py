"""BIDS discovery on pybids' layout: inheritance of bval/bvec/JSON, .bidsignore, derivatives/,
selection, the kept index (--bids-database-dir), and a root-level bval/bvec dataset that plans
valid and runs."""

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from csttool_nipype.bids import (
    DATABASE_FILE, bidsignore_patterns, discover_bids, merged_sidecar, write_dataset_description,
)
from csttool_nipype.errors import InputError
from csttool_nipype.subject_job import dwi_inputs


def _touch(path, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _run(root, sub, ses=None, entities="", exts=(".nii.gz", ".bval", ".bvec")):
    """One DWI run of empty files; returns the NIfTI's path."""
    folder = root / sub / (ses or "") / "dwi"
    stem = "_".join(filter(None, [sub, ses, entities])) + "_dwi"
    for ext in exts:
        _touch(folder / f"{stem}{ext}")
    return str(folder / f"{stem}.nii.gz")


def test_walkthrough_include_exclude_labels_and_sessions(tmp_path, capsys):
    """The walkthrough's `csttool batch --bids-dir RAW --out OUT --include "sub-0*" --exclude "sub-099"`
    on a BIDS-like tree (no dataset_description.json) selects sub-0* but sub-099, every session."""
    from csttool_nipype.cli.main import main

    for sub in ("sub-001", "sub-002", "sub-099", "sub-100"):
        _run(tmp_path, sub)
    _run(tmp_path, "sub-003", "ses-a")
    _run(tmp_path, "sub-003", "ses-b")
    _touch(tmp_path / "sub-004" / "anat" / "sub-004_T1w.nii.gz")  # no DWI: not a subject here
    _run(tmp_path / "derivatives" / "old", "sub-005")               # derivatives are not raw subjects
    assert main(["batch", "--bids-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--include", "sub-0*",
                 "--exclude", "sub-099", "--dry-run"]) == 0
    planned = re.findall(r"^\d+\. (\S+): ", capsys.readouterr().out, re.M)
    assert planned == ["sub-001", "sub-002", "sub-003/ses-a", "sub-003/ses-b"]
    assert not (tmp_path / "out").exists()
    specs = discover_bids(tmp_path, include=["sub-0*"], exclude=["sub-099"])
    assert [s.key for s in specs] == ["sub-001", "sub-002", "sub-003/ses-a", "sub-003/ses-b"]
    assert all(s.error is None for s in specs)
    assert [s.key for s in discover_bids(tmp_path, participant_label=["100", "sub-002"])] == ["sub-002", "sub-100"]
    assert [s.key for s in discover_bids(tmp_path, session_label=["b"])] == ["sub-003/ses-b"]


def test_filters_agree_with_a_pybids_query(tmp_path):
    """Entity filters select the runs pybids' own BIDSLayout query selects on the same tree."""
    from bids import BIDSLayout

    for sub, ses, ents in (("sub-01", None, "acq-ax"), ("sub-01", None, "acq-sag"),
                           ("sub-02", "ses-1", "acq-sag_run-02"), ("sub-03", None, "")):
        _run(tmp_path, sub, ses, ents)
    _run(tmp_path / "derivatives", "sub-05")
    layout = BIDSLayout(tmp_path, validate=False)
    for filters in ({}, {"acquisition": "sag"}, {"acquisition": ["ax", "sag"]}, {"acquisition": None},
                    {"run": 2}, {"session": "1"}):
        expected = sorted(layout.get(return_type="filename", suffix="dwi", datatype="dwi",
                                     extension=[".nii", ".nii.gz"], **filters))
        firsts = {}   # one run per subject/session is kept: the first in sorted order
        for path in expected:
            firsts.setdefault(str(Path(path).parent), path)
        found = {s.inputs["nifti"] for s in discover_bids(tmp_path, bids_filters=filters)}
        assert found == set(firsts.values()), filters
    # an entity no file has: matches nothing, or everything when asked to be absent (pybids refuses it)
    assert discover_bids(tmp_path, bids_filters={"echo": 1}) == []
    assert len(discover_bids(tmp_path, bids_filters={"echo": None})) == 3
    with pytest.raises(InputError, match="BIDS filter: unknown entity 'colour'"):
        discover_bids(tmp_path, bids_filters={"colour": "blue"})
    with pytest.raises(InputError, match="BIDS filter: run: .* is not a label, a number, null or a list"):
        discover_bids(tmp_path, bids_filters={"run": [1, {"a": 2}]})


def test_bval_bvec_and_sidecars_are_inherited_as_pybids_finds_them(tmp_path):
    """bval/bvec: the nearest applicable file (as pybids' get_bval/get_bvec find it); JSON: every
    level merged as pybids' get_metadata merges them. "Applicable" is the BIDS rule pybids applies
    to JSON metadata (the file's entities are a subset of the run's): a root ``acq-hardi_dwi.bvec``
    is not sub-01's, although pybids' looser get_nearest (only shared entities compared) offers it."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    _touch(tmp_path / "dataset_description.json", json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    _touch(tmp_path / "dwi.bval", "0 1000")
    _touch(tmp_path / "dwi.bvec", "0 1\n0 0\n0 0")
    _touch(tmp_path / "dwi.json", json.dumps({"PhaseEncodingDirection": "j-", "EchoTime": 0.08, "Site": "root"}))
    _touch(tmp_path / "acq-hardi_dwi.bvec", "0 0\n0 1\n0 0")   # only for acq-hardi runs
    one = _run(tmp_path, "sub-01", exts=(".nii.gz",))
    _touch(tmp_path / "sub-01" / "sub-01_dwi.json", json.dumps({"Site": "subject"}))
    two = _run(tmp_path, "sub-02", "ses-1", "acq-hardi", exts=(".nii.gz", ".bval", ".json"))
    Path(two).with_name("sub-02_ses-1_acq-hardi_dwi.json").write_text(json.dumps({"EchoTime": 0.1}))
    specs = {s.key: s for s in discover_bids(tmp_path)}
    assert set(specs) == {"sub-01", "sub-02/ses-1"} and not any(s.error for s in specs.values())

    layout = BIDSLayout(tmp_path, validate=False, indexer=BIDSLayoutIndexer(validate=False, index_metadata=True))
    for key, nifti in (("sub-01", one), ("sub-02/ses-1", two)):
        inputs = specs[key].inputs
        assert inputs["nifti"] == nifti
        assert inputs["bval"] == layout.get_bval(nifti)
        if key != "sub-01":
            assert inputs["bvec"] == layout.get_bvec(nifti)
        sidecars = inputs["json"]
        assert isinstance(sidecars, list) and sidecars[0] == str(tmp_path / "dwi.json")
        merged = json.loads(Path(merged_sidecar(sidecars, tmp_path / "m" / f"{key}.json")).read_text())
        assert merged == dict(layout.get_metadata(nifti))
    assert specs["sub-01"].inputs["bval"] == str(tmp_path / "dwi.bval")
    assert specs["sub-01"].inputs["bvec"] == str(tmp_path / "dwi.bvec")
    assert layout.get_bvec(one) == str(tmp_path / "acq-hardi_dwi.bvec")   # pybids' get_nearest, see above
    assert specs["sub-02/ses-1"].inputs["bvec"] == str(tmp_path / "acq-hardi_dwi.bvec")
    assert specs["sub-02/ses-1"].inputs["bval"] == two.replace(".nii.gz", ".bval")


def test_missing_or_ambiguous_sidecars_are_invalid_at_planning(tmp_path):
    _run(tmp_path, "sub-01", exts=(".nii.gz", ".bval"))                       # no bvec anywhere
    _run(tmp_path, "sub-02", entities="acq-a_run-1")
    _touch(tmp_path / "sub-02" / "sub-02_acq-a_dwi.json", "{}")               # two JSON files at one level,
    _touch(tmp_path / "sub-02" / "sub-02_run-1_dwi.json", "{}")               # equally specific
    specs = {s.key: s for s in discover_bids(tmp_path)}
    assert specs["sub-01"].error == (f"{tmp_path}/sub-01/dwi/sub-01_dwi.nii.gz: no bvec file (.bvec) next to it "
                                     "or in a parent folder (BIDS inheritance)")
    assert "ambiguous json files" in specs["sub-02"].error and "\n" not in specs["sub-02"].error


def test_bidsignore_sourcedata_and_derivatives_are_not_searched(tmp_path):
    _run(tmp_path, "sub-01")
    _run(tmp_path, "sub-02")
    _run(tmp_path, "sub-03", entities="acq-bad")
    _run(tmp_path, "sub-03", entities="acq-good")
    _run(tmp_path / "derivatives" / "pipeline", "sub-04")
    _run(tmp_path / "sourcedata", "sub-05")
    _run(tmp_path, "sub-06")
    _touch(tmp_path / ".bidsignore", "# ignored by the validator and by discovery\nsub-02/\n*_acq-bad_dwi.*\n"
                                     "/sub-06/dwi/*.bvec\n!sub-02/negation-not-supported\n")
    specs = {s.key: s for s in discover_bids(tmp_path)}
    assert sorted(specs) == ["sub-01", "sub-03", "sub-06"]
    assert specs["sub-03"].inputs["nifti"].endswith("sub-03_acq-good_dwi.nii.gz")
    assert "no bvec file" in specs["sub-06"].error   # its bvec is ignored
    patterns = bidsignore_patterns(tmp_path)
    assert [bool(patterns[0].search(p)) for p in ("/sub-02", "/sub-02/dwi/x", "/a/sub-02", "/sub-020")] == \
           [True, True, True, False]
    assert patterns[2].search("/sub-06/dwi/sub-06_dwi.bvec") and not patterns[2].search("/x/sub-06/dwi/a.bvec")


def test_several_runs_say_which_one_is_used(tmp_path, caplog):
    first = _run(tmp_path, "sub-01", entities="run-1")
    _run(tmp_path, "sub-01", entities="run-2")
    with caplog.at_level(logging.WARNING, logger="csttool_nipype.bids"):
        (spec,) = discover_bids(tmp_path)
    assert spec.inputs["nifti"] == first
    assert re.search(r"sub-01: 2 DWI runs \(sub-01_run-1_dwi.nii.gz, sub-01_run-2_dwi.nii.gz\); "
                     r"using sub-01_run-1_dwi.nii.gz", caplog.text)


def test_database_dir_is_reused_and_rebuilt_when_the_dataset_changes(tmp_path, monkeypatch):
    import csttool_nipype.bids as bids_module

    raw, db = tmp_path / "raw", tmp_path / "db"
    _run(raw, "sub-01")
    builds = []
    build = bids_module._build_database
    monkeypatch.setattr(bids_module, "_build_database", lambda *a: builds.append(a[0]) or build(*a))
    assert [s.key for s in discover_bids(raw, database_dir=db)] == ["sub-01"]
    assert (db / DATABASE_FILE).is_file() and len(builds) == 1
    assert [s.key for s in discover_bids(raw, database_dir=db, participant_label=["01"])] == ["sub-01"]
    assert len(builds) == 1, "the kept index is reused"
    _run(raw, "sub-02")
    assert [s.key for s in discover_bids(raw, database_dir=db)] == ["sub-01", "sub-02"]
    assert len(builds) == 2, "a new subject folder makes a new index"
    assert [s.key for s in discover_bids(raw, database_dir=db)] == ["sub-01", "sub-02"] and len(builds) == 2
    # a stale index: a file removed inside a subject is reported, not planned as valid
    Path(raw / "sub-02" / "dwi" / "sub-02_dwi.bvec").unlink()
    (spec2,) = [s for s in discover_bids(raw, database_dir=db) if s.subject == "sub-02"]
    assert "sub-02_dwi.bvec: indexed but no longer there" in spec2.error
    other = tmp_path / "other"
    _run(other, "sub-09")
    with pytest.raises(InputError, match=f"holds the index of {raw}, not of {other}"):
        discover_bids(other, database_dir=db)
    foreign = tmp_path / "foreign"
    _touch(foreign / DATABASE_FILE)
    with pytest.raises(InputError, match="did not write"):
        discover_bids(raw, database_dir=foreign)


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs (as root, file modes do not stop writes); skips where it cannot be mounted."""
    import os
    import subprocess

    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and a tmpfs mount for a read-only folder")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_unwritable_database_dir_is_one_error(tmp_path, read_only_dir):
    _run(tmp_path / "raw", "sub-01")
    with pytest.raises(InputError, match=f"^{read_only_dir}/index: cannot write the BIDS index there \\(Read-only"):
        discover_bids(tmp_path / "raw", database_dir=read_only_dir / "index")
    assert not list(read_only_dir.iterdir())


def test_cli_flags_reach_discovery(tmp_path, capsys):
    from csttool_nipype.cli import bids_app
    from csttool_nipype.cli.main import main

    raw = tmp_path / "raw"
    _touch(raw / "dataset_description.json", json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    _touch(raw / "dwi.bval", "0 1000")
    _touch(raw / "dwi.bvec", "0 1\n0 0\n0 0")
    _run(raw, "sub-01", exts=(".nii.gz",))
    assert main(["batch", "--bids-dir", str(raw), "--out", str(tmp_path / "out"), "--dry-run",
                 "--bids-database-dir", str(tmp_path / "db")]) == 0
    assert "1. sub-01: " in capsys.readouterr().out and (tmp_path / "db" / DATABASE_FILE).is_file()
    assert bids_app.main([str(raw), str(tmp_path / "o2"), "participant", "--participant-label", "99",
                          "--bids-database-dir", str(tmp_path / "db2")]) == 2   # no such subject
    assert (tmp_path / "db2" / DATABASE_FILE).is_file()


def test_job_inputs_name_the_sidecar(tmp_path):
    """A manifest's or discovery's ``json`` is the import's sidecar; several are merged in order."""
    a = _touch(tmp_path / "a.json", json.dumps({"x": 1, "y": 1}))
    b = _touch(tmp_path / "b.json", json.dumps({"y": 2}))
    assert dwi_inputs({"nifti": "n", "json": str(a)}, tmp_path) == {"nifti": "n", "sidecar": str(a)}
    fields = dwi_inputs({"nifti": "n", "json": [str(a), str(b)]}, tmp_path / "work")
    merged = Path(fields["sidecar"])
    assert merged.parent == tmp_path / "work" / "inputs" and json.loads(merged.read_text()) == {"x": 1, "y": 2}
    stamp = merged.stat().st_mtime_ns
    dwi_inputs({"nifti": "n", "json": [str(a), str(b)]}, tmp_path / "work")
    assert merged.stat().st_mtime_ns == stamp, "unchanged content is not rewritten (the Nipype cache holds)"
    with pytest.raises(InputError, match="c.json: does not exist"):
        dwi_inputs({"nifti": "n", "json": [str(a), str(tmp_path / "c.json")]}, tmp_path / "work")


def test_dataset_description_and_bidsignore_of_the_derivatives(tmp_path):
    out = tmp_path / "out"
    write_dataset_description(out, source_dir=tmp_path / "raw")
    _touch(out / ".bidsignore", (out / ".bidsignore").read_text() + "mine/\n")
    write_dataset_description(out)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["SourceDatasets"][0]["URL"].endswith("/raw")
    lines = (out / ".bidsignore").read_text().splitlines()
    assert "mine/" in lines and "**/_done.json" in lines and len(lines) == len(set(lines))


@pytest.mark.slow
def test_root_level_bval_bvec_dataset_plans_valid_and_runs(tmp_path, capsys):
    """The issue's dataset: bval/bvec (and the JSON) at the dataset root. The dry run and the
    run agree: sub-01 (inherits them) is valid and succeeds, sub-02 (an acquisition they do not
    apply to, without its own bvec) is invalid in both with the same reason."""
    from csttool_nipype.cli.main import main
    from csttool_nipype.sims.model import PhantomSpec
    from csttool_nipype.sims.writer import write_bids_dataset

    raw = write_bids_dataset(tmp_path / "raw", 1, spec=PhantomSpec(voxel_size=3.0, n_directions=12, snr=30.0),
                             seed=3)
    dwi = raw / "sub-01" / "dwi"
    for ext in ("bval", "bvec", "json"):
        shutil.move(dwi / f"sub-01_dwi.{ext}", raw / f"acq-hardi_dwi.{ext}")
    (dwi / "sub-01_dwi.nii.gz").rename(dwi / "sub-01_acq-hardi_dwi.nii.gz")
    _touch(raw / "sub-01" / "sub-01_dwi.json", json.dumps({"InstitutionName": "inherited from the subject level"}))
    bad = _run(raw, "sub-02", exts=(".nii.gz", ".bval"))
    out = tmp_path / "out"
    argv = ["batch", "--bids-dir", str(raw), "--out", str(out), "--stages", "tensor", "--denoise-method", "none",
            "--no-gibbs", "--no-motion-correction"]
    reason = f"{bad}: no bvec file (.bvec) next to it or in a parent folder (BIDS inheritance)"

    assert main([*argv, "--dry-run"]) == 1
    plan = capsys.readouterr().out
    assert re.search(r"^\d\. sub-01: .*sub-01_acq-hardi_dwi\.nii\.gz \(config", plan, re.M)
    assert f"sub-02: INVALID - {reason}" in plan

    assert main(argv) == 1
    with open(out / "batch_metrics.csv", newline="") as fh:
        rows = {r["subject"]: r for r in csv.DictReader(fh)}
    assert rows["sub-01"]["status"] == "SUCCESS", rows["sub-01"]["error_reason"]
    assert rows["sub-02"]["status"] == "FAILED" and rows["sub-02"]["error_category"] == "invalid input"
    assert rows["sub-02"]["error_reason"] == reason
    sidecar = json.loads((out / "sub-01" / "dwi" / "sub-01_space-dwi_desc-preproc_dwi.json").read_text())
    assert sidecar["InstitutionName"] == "inherited from the subject level"
    assert sidecar["PhaseEncodingDirection"] == "j-"   # from the root JSON
    assert (out / "sub-01" / "dwi" / "sub-01_space-dwi_model-tensor_param-fa_dwimap.nii.gz").is_file()
