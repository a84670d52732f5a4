"""The walkthrough's auto-discovery mode, verbatim but for the paths, run to the end:

    csttool batch --bids-dir /path/to/raw_data --out /path/to/output --include "sub-0*" --exclude "sub-099"

on a BIDS-like tree of four small phantom subjects (sub-001, sub-002, sub-099, sub-100): exactly
sub-001 and sub-002 run, both succeed, and the console is the walkthrough's, line by line.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from walkthrough import check_console

pytestmark = pytest.mark.slow


def test_walkthrough_discovery_command_runs_the_selected_subjects(small_phantom, tmp_path):
    raw = tmp_path / "raw_data"
    for label in ("001", "002", "099", "100"):
        dwi = raw / f"sub-{label}" / "dwi"
        dwi.mkdir(parents=True)
        for src in small_phantom.glob("sub-01_dwi.*"):
            shutil.copy(src, dwi / src.name.replace("sub-01", f"sub-{label}"))
    out = tmp_path / "output"
    proc = subprocess.run([str(Path(sys.executable).parent / "csttool"), "batch", "--bids-dir", str(raw),
                           "--out", str(out), "--include", "sub-0*", "--exclude", "sub-099"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    subjects = check_console(proc.stdout, out)
    assert sorted(subjects) == ["sub-001", "sub-002"]
    assert all(m.group("success") for m in subjects.values())
    assert sorted(p.name for p in out.glob("sub-*")) == ["sub-001", "sub-002"]
    assert (out / "sub-001" / "_done.json").is_file() and (out / "batch_metrics.csv").is_file()
    assert proc.stderr.strip() == "", proc.stderr   # log lines go to the log files, not the console
