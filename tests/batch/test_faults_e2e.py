"""#19 acceptance: a 24-subject phantom cohort with six bad inputs, a SIGKILLed MultiProc pool
worker and a kill -9 of the orchestrator, then a rerun.

Every subject runs the BIDS App with ``--plugin MultiProc`` (one pool worker each, as Nipype
gives a subject with one core) on the same small phantom (4 mm, 8 directions); the good
subjects stop after preprocessing (``--stages preprocess``, without denoising, unringing and
motion correction: import and brain mask) to keep the test near two minutes on two cores:
the later stages add nothing to what is tested here (process trees, bookkeeping, tables).
"""

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest

from .test_faults_batch import FAST, bids_copy

from waiting import wait_until

pytestmark = pytest.mark.slow

SUBJECTS = [f"sub-{i:02d}" for i in range(1, 25)]
KILLED = "sub-05"


def _spoil(raw: Path) -> dict[str, str]:
    """Give six subjects one bad input each; returns subject -> what the error names."""
    def files(sub):
        d = raw / sub / "dwi"
        return d / f"{sub}_dwi.nii.gz", d / f"{sub}_dwi.bval", d / f"{sub}_dwi.bvec"

    nii, _, _ = files("sub-03")
    nii.write_bytes(nii.read_bytes()[:30000])                         # truncated file
    nii, _, _ = files("sub-07")
    img = nib.load(nii)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[10, 10, 10, 2] = np.nan                                       # one NaN voxel
    nib.save(nib.Nifti1Image(data, img.affine, img.header), nii)
    _, bval, _ = files("sub-11")
    bval.write_text(" ".join(bval.read_text().split()[:-1]) + "\n")   # one b-value short
    _, bval, _ = files("sub-15")
    bval.write_text(" ".join("1000" for _ in bval.read_text().split()) + "\n")  # no b=0
    nii, _, _ = files("sub-19")
    img = nib.load(nii)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), nii)   # a 3D image
    _, bval, _ = files("sub-23")
    bval.write_text(" ".join(f"{float(b) / 1000:g}" for b in bval.read_text().split()) + "\n")  # ms/µm²
    return {"sub-03": "cannot read", "sub-07": "NaN", "sub-11": "b-values", "sub-15": "no b=0",
            "sub-19": "3D", "sub-23": "ms/µm²"}


def _snapshot(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def _ours(out: Path) -> list[psutil.Process]:
    """Live processes working for this OUT (workers, their pools and watchdogs, orchestrators)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and str(out) in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found




def _kill_a_pool_worker_mid_node(batch, out: Path) -> list:
    """SIGKILL one MultiProc pool worker of the KILLED subject while it computes its brain mask;
    return the batch's process tree (taken before the kill, plus what appeared since)."""
    # the killed subject's Nipype pool worker: a child of its worker that is not the watchdog
    log = out / KILLED / "logs" / f"{KILLED}.log"
    wait_until(lambda: log.exists() and "watchdog pid" in log.read_text(), 300, f"{KILLED} to start", 0.05)
    text = log.read_text()
    worker = psutil.Process(int(re.search(r"attempt started \(pid (\d+)", text).group(1)))
    watchdog = int(re.search(r"watchdog pid (\d+)", text).group(1))

    def pool_workers():
        try:
            return [c for c in worker.children() if c.pid != watchdog]
        except psutil.NoSuchProcess:
            return []

    killed = []

    def kill_a_pool_worker():
        for child in pool_workers():
            try:
                child.send_signal(signal.SIGKILL)          # as the OOM killer does
                killed.append(child.pid)
                return True
            except psutil.NoSuchProcess:
                continue
        return False

    wait_until(lambda: 'Executing "brain_mask"' in log.read_text(), 120, f"{KILLED} to compute its brain mask", 0.05)
    # the process tree before the kill: subject workers, their watchdogs and the pool workers
    # (after it, the killed subject may already have ended: the snapshot is what must not survive)
    tree = psutil.Process(batch.pid).children(recursive=True)
    assert len(tree) >= 3, "the batch runs subjects with pool workers and watchdogs"
    wait_until(kill_a_pool_worker, 30, f"{KILLED}'s MultiProc pool worker", 0.05)   # mid-node
    time.sleep(0.5)
    seen = {p.pid for p in tree}
    tree += [p for p in psutil.Process(batch.pid).children(recursive=True) if p.pid not in seen]
    return tree


def test_24_subjects_bad_inputs_killed_worker_killed_batch_then_rerun(small_phantom, tmp_path):
    t_start = time.monotonic()
    raw = bids_copy(small_phantom, tmp_path / "raw", SUBJECTS)
    bad = _spoil(raw)
    raw_before = _snapshot(raw)
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    argv = [sys.executable, "-m", "csttool_nipype.cli.bids_app", str(raw), str(out), "participant",
            "--nprocs", "2", "--plugin", "MultiProc", "--stages", "preprocess", *FAST]
    batch = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        tree = _kill_a_pool_worker_mid_node(batch, out)
    except BaseException:   # a failed check must not leave the batch (and its subjects) running
        batch.kill()
        batch.communicate(timeout=60)
        raise
    batch.send_signal(signal.SIGKILL)                      # kill -9 of the orchestrator
    batch.communicate(timeout=60)
    _, alive = psutil.wait_procs(tree, timeout=15)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"
    assert not _ours(out)

    rerun = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
    printed = rerun.stdout
    assert rerun.returncode == 1, printed + rerun.stderr
    assert "Traceback" not in printed + rerun.stderr
    failed = re.search(r"Failed:\s+(\d+) \((.*)\)", printed)
    assert failed and failed.group(1) == "6" and sorted(failed.group(2).split(", ")) == sorted(bad), printed
    assert re.search(rf"^\d+\. {KILLED}: Success", printed, re.M) or f"{KILLED}: Skipped" in printed

    with open(out / "batch_metrics.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert sorted(r["subject"] for r in table) == SUBJECTS, "each subject exactly once"
    for row in table:
        if row["subject"] in bad:
            assert row["status"] == "FAILED" and row["error_category"] == "invalid input", row
            assert bad[row["subject"]] in row["error_reason"], row
        else:
            assert row["status"] == "SUCCESS", row
            assert (out / row["subject"] / "dwi" / f"{row['subject']}_space-dwi_desc-preproc_dwi.nii.gz").is_file()
    for sub in set(SUBJECTS) - set(bad):
        ended = (out / sub / "logs" / f"{sub}.log").read_text().count(f"=== {sub}: attempt ended: SUCCESS")
        assert ended == 1, f"{sub} finished {ended} times"
        assert json.loads((out / sub / "_done.json").read_text())["status"] == "SUCCESS"

    assert not _ours(out), "no process left after the rerun"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "out", "raw"]
    assert not any(cwd.iterdir()), "nothing in the working directory (crash files included)"
    assert _snapshot(raw) == raw_before, "the raw data is only read"
    print(f"\n24-subject fault run: {time.monotonic() - t_start:.0f} s")
