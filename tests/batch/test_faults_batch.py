"""Fault matrix, batch rows: `csttool batch` / `csttool-nipype` as a user runs them, on a small
phantom (4 mm, 8 directions) and with the real fault injected (a hostile manifest, SIGINT,
a second batch, read-only mounts). Stages stop at import or tensor to stay fast."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from csttool_nipype.cli.main import main
from waiting import default_sigint

pytestmark = pytest.mark.slow
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FAST = ["--no-gibbs", "--no-motion-correction", "--denoise-method", "none"]
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to mount read-only filesystems "
                                                    "(as root, chmod -w does not stop writes)")


@pytest.fixture
def phantom(small_phantom):
    """One small phantom subject (``tests/conftest.py``)."""
    return small_phantom


def bids_copy(phantom: Path, root: Path, subjects) -> Path:
    """A BIDS tree with the phantom's files under each subject's name."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "faults", "BIDSVersion": "1.8.0"}))
    for sub in subjects:
        folder = root / sub / "dwi"
        folder.mkdir(parents=True)
        for f in phantom.iterdir():
            shutil.copy(f, folder / f.name.replace("sub-01", sub))
    return root


def rows(out: Path) -> list[dict]:
    with open(out / "batch_metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_hostile_manifest_ids_write_nothing_and_are_listed_once(phantom, tmp_path, capsys, monkeypatch):
    """Rows "unsafe ids", "duplicate id" (#19 items 2, 3) and "manifest relative paths"."""
    raw = tmp_path / "study" / "raw"
    raw.mkdir(parents=True)
    for f in phantom.iterdir():
        shutil.copy(f, raw / f.name)
    nifti = "raw/sub-01_dwi.nii.gz"            # relative to the manifest's folder, not to the cwd
    ids = ["sub-01", "sub-../../../evil2", "sub-../evil", "sub-a/b", "sub-ü with space",
           "sub-<img src=x onerror=alert(1)>", "sub-01"]
    manifest = tmp_path / "study" / "manifest.json"
    manifest.write_text(json.dumps({"subjects": [{"id": i, "nifti": nifti} for i in ids]}))
    out = tmp_path / "runs" / "out"
    monkeypatch.chdir(tmp_path)
    code = main(["batch", "--manifest", str(manifest), "--out", str(out), "--stages", "import", *FAST])
    printed = capsys.readouterr().out
    assert code == 1
    assert re.search(r"^1\. sub-01: Success", printed, re.M)
    for i in range(2, 8):
        assert re.search(rf"^{i}\. entry#{i}: Failed \(INVALID INPUT\) - subjects\[{i}\]", printed, re.M), printed
    assert "duplicate of entry 1" in printed
    assert "Success:    1" in printed and "Failed:     6" in printed
    table = rows(out)
    assert [r["subject"] for r in table] == ["sub-01"] + [f"entry#{i}" for i in range(2, 8)]
    assert table[0]["status"] == "SUCCESS" and {r["status"] for r in table[1:]} == {"FAILED"}
    assert {r["error_category"] for r in table[1:]} == {"invalid input"}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["sub-01"]
    assert not list(tmp_path.rglob("*evil*")), "nothing made from a rejected id, inside OUT or out of it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "study"]
    assert "invalid" not in (out / "sub-01" / "logs" / "sub-01.log").read_text()
    html = (out / "batch_report.html").read_text()
    assert "<img src=x" not in html and "&lt;img src=x" in html


def test_ctrl_c_writes_interrupted_everywhere_and_exits_130(phantom, tmp_path):
    """Row "orchestrator SIGINT" (#19 item 7): console, batch_status.json, batch_metrics.csv and
    the subject log say INTERRUPTED; the summary is printed; exit code 130."""
    raw = bids_copy(phantom, tmp_path / "raw", ["sub-01", "sub-02"])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "csttool_nipype.cli.main", "batch", "--bids-dir", str(raw),
                             "--out", str(out), "--nprocs", "1", "--stages", "tensor", *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=default_sigint)
    log = out / "sub-01" / "logs" / "sub-01.log"
    t0 = time.monotonic()
    while not (log.exists() and "attempt started" in log.read_text()):
        assert time.monotonic() - t0 < 120 and proc.poll() is None, "sub-01 did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout
    assert "Traceback" not in stdout
    assert re.search(r"^1\. sub-01: INTERRUPTED - the batch was interrupted", stdout, re.M), stdout
    assert "Interrupted: 1 (sub-01), not started: 1" in stdout and "Main metrics:" in stdout
    status = json.loads((out / "batch_status.json").read_text())
    assert status["interrupted"] is True
    assert status["outcomes"]["sub-01"]["status"] == status["outcomes"]["sub-02"]["status"] == "INTERRUPTED"
    assert [(r["subject"], r["status"]) for r in rows(out)] == [("sub-01", "INTERRUPTED")]
    assert "interrupted after" in log.read_text()


def test_second_batch_keeps_the_first_batchs_outcome(phantom, tmp_path, capsys):
    """Row "two batches on one OUT" (#19 item 8): a subject batch B skips because batch A did it
    keeps A's record in batch_status.json."""
    raw = bids_copy(phantom, tmp_path / "raw", ["sub-01", "sub-02"])
    out = tmp_path / "out"
    assert main(["batch", "--bids-dir", str(raw), "--out", str(out), "--participant-label", "01",
                 "--stages", "import", *FAST]) == 0
    first = json.loads((out / "batch_status.json").read_text())["outcomes"]["sub-01"]
    assert main(["batch", "--bids-dir", str(raw), "--out", str(out), "--stages", "import", *FAST]) == 0
    assert "sub-01: Skipped" in capsys.readouterr().out
    merged = json.loads((out / "batch_status.json").read_text())["outcomes"]
    assert merged["sub-01"] == first and first["status"] == "SUCCESS" and first["duration_s"] > 0
    assert merged["sub-02"]["status"] == "SUCCESS"


def test_several_dwi_runs_the_first_is_used_and_said(phantom, tmp_path, caplog):
    """Row "BIDS, several DWI runs per session": the first in sorted order runs, a warning names it."""
    from csttool_nipype.bids import discover_bids

    raw = bids_copy(phantom, tmp_path / "raw", ["sub-01"])
    folder = raw / "sub-01" / "dwi"
    for f in list(folder.iterdir()):
        shutil.copy(f, folder / f.name.replace("sub-01_dwi", "sub-01_run-2_dwi"))
        f.rename(folder / f.name.replace("sub-01_dwi", "sub-01_run-1_dwi"))
    specs = discover_bids(raw)
    assert len(specs) == 1 and specs[0].inputs["nifti"].endswith("sub-01_run-1_dwi.nii.gz")
    assert "sub-01: 2 DWI runs (sub-01_run-1_dwi.nii.gz, sub-01_run-2_dwi.nii.gz); using sub-01_run-1" in caplog.text


def test_bids_folder_without_dwi_is_one_line(tmp_path, capsys):
    """Row "BIDS folder with no DWI"."""
    raw = tmp_path / "raw"
    (raw / "sub-01" / "anat").mkdir(parents=True)
    (raw / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"")
    code = main(["batch", "--bids-dir", str(raw), "--out", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "no subjects with a DWI run" in err[0] and str(raw) in err[0]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- read-only mounts (root)
def _mount(*args) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount here ({result.stderr.strip()})")


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@needs_root
def test_read_only_output_is_one_line_and_exit_2_in_every_command(phantom, tmp_path):
    """Row "read-only output location" (#19 item 5): `csttool run`, `csttool batch` and
    `csttool-nipype` each print one line naming OUT and exit 2, without a traceback."""
    raw = bids_copy(phantom, tmp_path / "raw", ["sub-01"])
    ro = tmp_path / "ro"
    ro.mkdir()
    _mount("-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro))
    nifti = raw / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    commands = {
        "run": [sys.executable, "-m", "csttool_nipype.cli.main", "run", "--dwi", str(nifti), "--out", str(ro / "o")],
        "batch": [sys.executable, "-m", "csttool_nipype.cli.main", "batch", "--bids-dir", str(raw), "--out", str(ro)],
        "bids-app": [sys.executable, "-m", "csttool_nipype.cli.bids_app", str(raw), str(ro), "participant"],
    }
    try:
        for name, argv in commands.items():
            result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
            lines = [line for line in result.stderr.splitlines() if " ERROR " in f" {line}" or "Traceback" in line]
            assert result.returncode == 2, (name, result.stderr)
            assert len(lines) == 1 and str(ro) in lines[0], (name, result.stderr)
            assert "Read-only file system" in lines[0], (name, result.stderr)
            assert "Traceback" not in result.stderr + result.stdout, name
    finally:
        _umount(ro)


@needs_root
def test_read_only_input_folder_is_only_read(phantom, tmp_path):
    """Row "read-only input folder": a BIDS tree on a read-only bind mount runs, and nothing
    is written next to the inputs."""
    src = bids_copy(phantom, tmp_path / "src", ["sub-01"])
    before = sorted((str(p), p.stat().st_mtime_ns) for p in src.rglob("*"))
    raw = tmp_path / "raw"
    raw.mkdir()
    _mount("--bind", str(src), str(raw))
    try:
        _mount("-o", "remount,bind,ro", str(raw))
        out = tmp_path / "out"
        assert main(["batch", "--bids-dir", str(raw), "--out", str(out), "--stages", "import", *FAST]) == 0
        assert (out / "sub-01" / "_done.json").exists()
    finally:
        _umount(raw)
    assert sorted((str(p), p.stat().st_mtime_ns) for p in src.rglob("*")) == before
