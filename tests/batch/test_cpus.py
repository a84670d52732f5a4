"""``--nprocs`` is the CPUs of the whole command, ``--subjects-at-once`` how many subjects share them,
the same in ``csttool batch`` and the BIDS-App; with a SLURM plugin ``--nprocs`` does not apply."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from csttool_nipype.batch.state import job_paths
from csttool_nipype.cli import bids_app
from csttool_nipype.cli.main import main
from csttool_nipype.cli.plugin_options import SLURM_SUBJECTS_AT_ONCE, cpus_from_args
from csttool_nipype.cohort import BATCH_LOG, cpu_plan
from csttool_nipype.config import SUBJECT_MEMORY_GB, available_cpus
from csttool_nipype.errors import InputError

FAST = ["--no-gibbs", "--no-motion-correction", "--denoise-method", "none"]


@pytest.mark.parametrize("nprocs, at_once, n_subjects, expected", [
    (1, None, 5, (1, 1)),    # the default: one subject at a time
    (2, None, 5, (2, 1)),    # as many subjects as CPUs, one CPU each
    (4, None, 2, (2, 2)),    # fewer subjects than CPUs: the rest goes to each subject's MultiProc
    (4, None, 1, (1, 4)),    # one subject gets every CPU
    (4, 1, 5, (1, 4)),       # fewer subjects at once (memory): more CPUs each
    (5, 2, 9, (2, 2)),       # nprocs // at_once, never more than the CPUs
    (3, None, 0, (1, 3)),    # nothing to run
])
def test_cpu_plan(nprocs, at_once, n_subjects, expected):
    assert cpu_plan(nprocs, at_once, n_subjects, memory_gb=64.0) == expected


@pytest.mark.parametrize("memory_gb, expected", [
    (64.0, (8, 1)),      # memory for all: one subject per CPU
    (9.0, (4, 2)),       # 4 subjects of SUBJECT_MEMORY_GB fit: the other CPUs go to them
    (1.0, (1, 8)),       # less than one subject's share: still one at a time
])
def test_cpu_plan_keeps_the_subjects_at_once_within_memory(memory_gb, expected):
    assert SUBJECT_MEMORY_GB == 2.0   # the numbers below are for 2 GB per subject
    assert cpu_plan(8, None, 20, memory_gb=memory_gb) == expected
    assert cpu_plan(8, 8, 20, memory_gb=memory_gb) == (8, 1), "--subjects-at-once is the user's choice"


def _args(nprocs=None, subjects_at_once=None):
    return argparse.Namespace(nprocs=nprocs, subjects_at_once=subjects_at_once)


def test_cpus_from_args_locally_and_on_slurm():
    assert cpus_from_args(_args(), None, 10) == (available_cpus(), None)      # every CPU, as csttool run
    assert cpus_from_args(_args(subjects_at_once=3), "MultiProc", 10) == (3, 3)   # one CPU per subject
    assert cpus_from_args(_args(4), "Linear", 10) == (4, None)
    with pytest.raises(InputError, match="--subjects-at-once 3 needs at least one CPU per subject"):
        cpus_from_args(_args(2, 3), None, 10)
    # SLURM: the nodes are jobs with their own CPUs; subjects driven at once, one local CPU each
    assert cpus_from_args(_args(), "SLURM", 20) == (SLURM_SUBJECTS_AT_ONCE, SLURM_SUBJECTS_AT_ONCE)
    assert cpus_from_args(_args(), "SLURMGraph", 3) == (3, 3)
    assert cpus_from_args(_args(subjects_at_once=12), "SLURM", 20) == (12, 12)
    with pytest.raises(InputError, match="--nprocs counts this machine's CPUs and does not apply with --plugin SLURM"):
        cpus_from_args(_args(8), "SLURM", 20)


def _bids(small_phantom: Path, root: Path, subjects) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "cpus", "BIDSVersion": "1.8.0"}))
    for sub in subjects:
        (root / sub / "dwi").mkdir(parents=True)
        for f in small_phantom.iterdir():
            shutil.copy(f, root / sub / "dwi" / f.name.replace("sub-01", sub))
    return root


@pytest.mark.parametrize("command", ["batch", "bids-app"])
def test_more_subjects_at_once_than_cpus_is_one_line_exit_2_nothing_written(command, small_phantom, tmp_path, capsys):
    raw = _bids(small_phantom, tmp_path / "raw", ["sub-01"])
    out = tmp_path / "out"
    flags = ["--nprocs", "2", "--subjects-at-once", "3"]
    if command == "batch":
        code = main(["batch", "--bids-dir", str(raw), "--out", str(out), *flags])
    else:
        code = bids_app.main([str(raw), str(out), "participant", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--subjects-at-once 3 needs at least one CPU per subject" in err[0], err
    assert not out.exists()


@pytest.mark.slow
def test_the_cpus_are_shared_by_the_subjects_at_once(small_phantom, tmp_path):
    """A real batch (import stage only): 4 CPUs and 2 subjects give 2 subjects at once with 2 CPUs each
    (what each job was started with, kept with --keep-work); --subjects-at-once 1 gives one subject 4."""
    raw = _bids(small_phantom, tmp_path / "raw", ["sub-01", "sub-02"])
    out = tmp_path / "out"
    for flags, at_once, cpus in ((["--nprocs", "4"], 2, 2),
                                 (["--nprocs", "4", "--subjects-at-once", "1", "--force"], 1, 4)):
        assert main(["batch", "--bids-dir", str(raw), "--out", str(out), "--stages", "import", "--keep-work",
                     *flags, *FAST]) == 0
        for key in ("sub-01", "sub-02"):
            job = json.loads(job_paths(out, key).jobfile.read_text())
            assert job["context"]["n_procs"] == cpus, (flags, key)
        assert f"4 CPU(s): {at_once} subject(s) at once, {cpus} CPU(s) each" in (out / BATCH_LOG).read_text()
