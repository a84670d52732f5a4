"""`csttool batch` on phantom subjects with real faults: corrupt input, a killed worker,
a killed orchestrator (resume from Nipype's cache), and the CSV it leaves behind."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from csttool_nipype.cli.main import main

from cohorts import cohort_with_a_truncated_subject, metrics_by_subject
from waiting import wait_until
from walkthrough import check_console

pytestmark = pytest.mark.slow

FAST = ["--stages", "tensor", "--no-gibbs", "--no-motion-correction"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Three small phantom subjects; sub-03's NIfTI is cut short."""
    return cohort_with_a_truncated_subject(tmp_path_factory.mktemp("raw"), seed=5)


def _batch(raw, out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "csttool_nipype.cli.main", "batch", "--bids-dir", str(raw), "--out", str(out),
         *FAST, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)




def test_corrupt_subject_fails_alone_and_csv_has_real_numbers(raw, tmp_path, capsys):
    out = tmp_path / "out"
    # --plugin/--plugin-args reach each subject's workflow (Nipype logs its plugin to the subject log)
    code = main(["batch", "--bids-dir", str(raw), "--out", str(out), "--nprocs", "2", "--denoise-method",
                 "none", "--plugin", "MultiProc", "--plugin-args", '{"n_procs": 1}', *FAST])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 1, "some subjects failed: exit code 1"
    subjects = check_console(printed, out)   # the walkthrough's console, line by line
    assert subjects["sub-03"].group("kind") == "INVALID INPUT"
    assert printed.rstrip().endswith(f"Batch Report: {out / 'batch_report.html'}"), "nothing below the block"
    assert not captured.err, "log lines go to the log files, not the console"
    assert "[MultiProc]" in (out / "sub-01" / "logs" / "sub-01.log").read_text()
    rows = metrics_by_subject(out)
    assert rows["sub-01"]["status"] == rows["sub-02"]["status"] == "SUCCESS"
    assert rows["sub-03"]["status"] == "FAILED" and rows["sub-03"]["error_category"] == "invalid input"
    assert "sub-03_dwi.nii.gz" in rows["sub-03"]["error_reason"]
    assert re.search(r"^\d\. sub-03: Failed \(INVALID INPUT\) - .*sub-03_dwi\.nii\.gz", printed, re.M)
    assert re.search(r"^\d\. sub-01: Success in \d", printed, re.M)
    assert "Failed:     1 (sub-03)" in printed
    for sub in ("sub-01", "sub-02"):
        promoted = out / sub
        assert (promoted / "dwi" / f"{sub}_space-dwi_model-tensor_param-fa_dwimap.nii.gz").exists()
        assert not (promoted / "_work").exists()
        assert float(rows[sub]["duration_s"]) > 0 and rows[sub]["config_hash"]
    assert (out / "sub-03" / "logs" / "sub-03.log").exists()


def test_killed_worker_fails_that_subject_only(raw, tmp_path):
    out = tmp_path / "out"
    proc = _batch(raw, out, "--nprocs", "1", "--participant-label", "01", "02")
    log = out / "sub-01" / "logs" / "sub-01.log"
    wait_until(lambda: log.exists() and "attempt started (pid" in log.read_text(), 600, "sub-01 worker", 0.5)
    pid = int(re.search(r"attempt started \(pid (\d+)", log.read_text()).group(1))
    os.kill(pid, signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 1, stdout
    rows = metrics_by_subject(out)
    assert rows["sub-01"]["status"] == "FAILED" and rows["sub-01"]["error_category"] == "killed"
    assert "SIGKILL" in rows["sub-01"]["error_reason"]
    assert rows["sub-02"]["status"] == "SUCCESS"


def _attempts(log: Path) -> list[str]:
    return log.read_text().split("=== sub-02: attempt started")[1:]


def test_killed_batch_resumes_from_cached_nodes(raw, tmp_path):
    out = tmp_path / "out"
    args = ("--nprocs", "1", "--participant-label", "01", "02", "--denoise-method", "patch2self")
    proc = _batch(raw, out, *args)
    log = out / "sub-02" / "logs" / "sub-02.log"
    wait_until(lambda: log.exists() and 'Finished "denoise"' in log.read_text(), 600, "sub-02 denoised", 0.5)
    proc.kill()                      # the orchestrator dies; its worker must die with it
    proc.communicate(timeout=60)
    worker = int(re.search(r"sub-02: attempt started \(pid (\d+)", log.read_text()).group(1))
    wait_until(lambda: not Path(f"/proc/{worker}").exists() or
               Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z", 30, "worker to die", 0.5)
    assert (out / "sub-01" / "_done.json").exists() and not (out / "sub-02" / "_done.json").exists()

    proc = _batch(raw, out, *args)
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout
    assert re.search(r"sub-01: Skipped", stdout) and re.search(r"sub-02: Success", stdout)
    first, second = _attempts(log)[-2:]
    assert 'Executing "denoise"' in first
    assert 'Executing "denoise"' not in second and 'Cached "single_subject_02_wf.dwi_preproc_wf.denoise"' in second
    assert 'Executing "fit_tensor"' in second
    promoted = out / "sub-02"
    assert not (promoted / "_work").exists()
    assert not any("_work" in str(p) for p in promoted.rglob("*"))
