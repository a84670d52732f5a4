"""BIDS-App entry point: argument checks, participant level through the batch engine,
concurrent participant runs into one derivatives folder, group level from disk."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from csttool_nipype import __version__
from csttool_nipype.cli.bids_app import check_bids_dir, check_locations, main
from csttool_nipype.cli.plugin_options import read_plugin_args
from csttool_nipype.errors import InputError
from csttool_nipype.sims.model import PhantomSpec
from csttool_nipype.sims.writer import write_bids_dataset
from walkthrough import check_console

FAST = ["--stages", "tensor", "--denoise-method", "none", "--no-gibbs", "--no-motion-correction"]


def _errors(capsys):
    """The ERROR lines the command printed (its logging goes to stderr)."""
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ERROR")]


def _bids(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    return raw


def test_output_inside_raw_tree_is_refused(tmp_path, capsys):
    raw = _bids(tmp_path)
    assert main([str(raw), str(raw / "out"), "participant"]) == 2
    assert main([str(raw), str(raw), "participant"]) == 2
    assert main([str(raw), str(raw / "derivatives"), "participant"]) == 2
    errors = _errors(capsys)
    assert len(errors) == 3 and all("\n" not in e for e in errors)
    assert "inside the raw BIDS tree" in errors[0]
    check_locations(raw, raw / "derivatives" / "csttool")   # the BIDS place for derivatives is fine
    check_locations(raw, tmp_path / "out")


def test_work_dir_inside_raw_tree_is_refused(tmp_path, capsys):
    raw = _bids(tmp_path)
    for work in (raw / "work", raw / "derivatives" / "work"):
        assert main([str(raw), str(tmp_path / "out"), "participant", "-w", str(work)]) == 2
    assert all("work folder must not be inside the BIDS folder" in e for e in _errors(capsys))
    assert not (tmp_path / "out").exists()


def test_bids_validation_needs_a_dataset_description(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "sub-01" / "dwi").mkdir(parents=True)
    with pytest.raises(InputError, match="no dataset_description.json"):
        check_bids_dir(raw, skip_validation=False)
    check_bids_dir(raw, skip_validation=True)
    assert main([str(raw), str(tmp_path / "out"), "participant"]) == 2
    assert "--skip-bids-validation" in _errors(capsys)[-1]
    with pytest.raises(InputError, match="not found"):
        check_bids_dir(tmp_path / "missing", skip_validation=True)


def test_bad_arguments_exit_2(tmp_path):
    raw = _bids(tmp_path)
    for argv in ([str(raw), str(tmp_path / "o"), "participant", "--nprocs", "0"],
                 [str(raw), str(tmp_path / "o"), "participant", "--plugin", "Condor"],
                 [str(raw), str(tmp_path / "o"), "everything"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert main([str(raw), str(tmp_path / "o"), "participant", "--plugin-args", "{not json"]) == 2
    assert main([str(raw), str(tmp_path / "never-made"), "group"]) == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"csttool-nipype {__version__}"


def test_plugin_args_from_json_text_or_file(tmp_path):
    assert read_plugin_args('{"sbatch_args": "-p short"}') == (None, {"sbatch_args": "-p short"})
    nipreps = tmp_path / "plugin.json"
    nipreps.write_text(json.dumps({"plugin": "SLURM", "plugin_args": {"sbatch_args": "--time=1:00:00"}}))
    assert read_plugin_args(str(nipreps)) == ("SLURM", {"sbatch_args": "--time=1:00:00"})
    nipreps.write_text(json.dumps({"plugin": "Condor"}))
    with pytest.raises(InputError):
        read_plugin_args(str(nipreps))
    with pytest.raises(InputError):
        read_plugin_args("[1, 2]")


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Two small phantom subjects; sub-01 has a second DWI run (acq-hi) for filter files."""
    root = tmp_path_factory.mktemp("raw")
    write_bids_dataset(root, 2, spec=PhantomSpec(voxel_size=3.0, n_directions=12), seed=1)
    dwi = root / "sub-01" / "dwi"
    for ext in (".nii.gz", ".bval", ".bvec", ".json"):
        shutil.copy(dwi / f"sub-01_dwi{ext}", dwi / f"sub-01_acq-hi_dwi{ext}")
    return root


def _rows(out):
    with open(out / "batch_metrics.csv", newline="") as fh:
        return {r["subject"]: r for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_participant_then_group(raw, tmp_path):
    out = tmp_path / "derivatives"
    assert main([str(raw), str(out), "participant", "--participant-label", "02", *FAST]) == 0
    assert (out / "sub-02" / "_done.json").exists() and not (out / "sub-01").exists()
    (out / "batch_metrics.csv").unlink()
    assert main([str(raw), str(out), "group"]) == 0
    assert [(k, r["status"]) for k, r in _rows(out).items()] == [("sub-02", "SUCCESS")]


@pytest.mark.slow
def test_two_participant_runs_at_the_same_moment_into_one_output(raw, tmp_path):
    """What two SLURM array tasks do: different subjects, one OUTPUT_DIR, started together.
    sub-01 is also selected through a filter file (its acq-hi run) and draws its graph."""
    out, work = tmp_path / "derivatives", tmp_path / "work"
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"dwi": {"acquisition": "hi"}}))
    base = [sys.executable, "-m", "csttool_nipype.cli.bids_app", str(raw), str(out), "participant", "-w", str(work),
            *FAST]
    procs = [subprocess.Popen([*base, "--participant-label", "01", "--bids-filter-file", str(filters),
                               "--write-graph"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
             subprocess.Popen([*base, "--participant-label", "sub-02"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outputs)
    for printed in outputs:   # stdout and stderr together: the walkthrough's lines, no log lines among them
        assert list(check_console(printed, out.absolute())) in (["sub-01"], ["sub-02"])
    assert main([str(raw), str(out), "group"]) == 0
    rows = _rows(out)
    assert sorted(rows) == ["sub-01", "sub-02"] and {r["status"] for r in rows.values()} == {"SUCCESS"}

    # a BIDS-derivatives dataset
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "csttool-nipype" and generated["Version"] == __version__ and generated["CodeURL"]
    ignore = (out / ".bidsignore").read_text().splitlines()
    assert {"batch_*", "**/_done.json", "**/logs/", "**/_work/", "methods.md"} <= set(ignore)
    # written by the group level; the two runs may finish in either order
    listed = re.search(r"^Subjects \(2\): (.*)$", (out / "methods.md").read_text(), re.M)
    assert listed and sorted(listed.group(1).split(", ")) == ["sub-01", "sub-02"]
    fa = {s: out / s / "dwi" / f"{s}_space-dwi_model-tensor_param-fa_dwimap.json" for s in ("sub-01", "sub-02")}
    sidecars = {s: json.loads(p.read_text()) for s, p in fa.items()}
    assert all(m["Description"] for m in sidecars.values())
    # the filter file chose sub-01's acq-hi run, the plain run otherwise
    assert [Path(p).name for p in sidecars["sub-01"]["Sources"]] == ["sub-01_acq-hi_dwi.nii.gz"]
    assert [Path(p).name for p in sidecars["sub-02"]["Sources"]] == ["sub-02_dwi.nii.gz"]

    # -w: the Nipype caches live in WORK_DIR/sub-XX and are kept; nothing of them is in OUTPUT_DIR
    assert (work / "sub-01").is_dir() and (work / "sub-02").is_dir()
    assert not list(out.glob("sub-*/_work"))
    # --write-graph: sub-01's workflow drawn into its figures
    graphs = {p.name for p in (out / "sub-01" / "figures").glob("workflow_*")}
    assert {"workflow_colored.dot", "workflow_flat.dot"} <= graphs
    if shutil.which("dot"):
        assert {"workflow_colored.png", "workflow_colored.svg", "workflow_flat.png", "workflow_flat.svg"} <= graphs
    assert not list((out / "sub-02" / "figures").glob("workflow_*"))
