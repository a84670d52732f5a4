"""Nipype on a real SLURM controller: job submission, status from the pipeline's own files.

Needs a running SLURM (``bash ci/slurm/start-local-slurm.sh`` brings one up on this
machine; ``.ci/run`` does it before pytest). Skips, saying why, where there is none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from csttool_nipype.config import ExecutionConfig
from csttool_nipype.execution import WorkflowFailed, run_workflow
from csttool_nipype.reports.aggregate import BASE_COLUMNS

from cohorts import cohort_with_a_truncated_subject, metrics_by_subject

START_SCRIPT = Path(__file__).resolve().parents[1] / "ci" / "slurm" / "start-local-slurm.sh"


def _slurm_problem() -> str | None:
    """None when SLURM answers with a usable node, else why not."""
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return "SLURM client commands (sinfo, sbatch) are not installed"
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    states = proc.stdout.split()
    if proc.returncode != 0:
        return f"the SLURM controller does not answer ({proc.stderr.strip()})"
    if not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        return f"no usable SLURM node (states: {' '.join(states) or 'none'})"
    return None


def _jobcomp_log() -> Path | None:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    kind = re.search(r"^JobCompType\s*=\s*(\S+)", config, re.M)
    where = re.search(r"^JobCompLoc\s*=\s*(\S+)", config, re.M)
    if kind and kind.group(1) == "jobcomp/filetxt" and where:
        return Path(where.group(1))
    return None


def job_states(job_ids) -> dict[str, str]:
    """Final state of each job per the scheduler's records (job completion log, or sacct)."""
    wanted = {str(j) for j in job_ids}
    states: dict[str, str] = {}
    deadline = time.time() + 30
    while time.time() < deadline:
        log = _jobcomp_log()
        if log is not None and log.exists():
            for line in log.read_text(errors="replace").splitlines():
                fields = dict(re.findall(r"(\w+)=(\S*)", line))
                if fields.get("JobId") in wanted:
                    states[fields["JobId"]] = fields.get("JobState", "")
        else:
            out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(sorted(wanted))],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                jid, _, state = line.partition("|")
                states[jid] = state.split()[0] if state else ""
        if wanted <= set(states):
            break
        time.sleep(1)
    return states


@pytest.fixture(scope="module")
def slurm():
    problem = _slurm_problem()
    if problem:
        pytest.skip(f"SLURM is not available here: {problem}; start it with 'bash {START_SCRIPT}' "
                    "(needs root; .ci/run does it)")
    os.environ.setdefault("LOGNAME", os.environ.get("USER", "root"))


def _adds(x):
    return x + 1


def _raises(x):
    raise ValueError(f"deliberate failure on {x}")


def _killed(x):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _chain(name: str, second, mem_gb: float = 0.2, n_procs: int = 1):
    wf = pe.Workflow(name=name)
    first = pe.Node(Function(input_names=["x"], output_names=["y"], function=_adds), name="first")
    first.inputs.x = 41
    then = pe.Node(Function(input_names=["x"], output_names=["y"], function=second), name="then",
                   mem_gb=mem_gb, n_procs=n_procs)
    last = pe.Node(Function(input_names=["x"], output_names=["y"], function=_adds), name="last")
    wf.connect([(first, then, [("y", "x")]), (then, last, [("y", "x")])])
    return wf


def _submitted(caplog) -> dict[str, int]:
    """node name -> SLURM job id, from the log lines run_workflow writes."""
    out = {}
    for rec in caplog.records:
        match = re.match(r"SLURM job (\d+) submitted for node (\S+)", rec.getMessage())
        if match:
            out[match.group(2).split(".")[-1]] = int(match.group(1))
    return out


def test_slurm_plugin_runs_nodes_as_jobs_with_their_resource_estimates(slurm, tmp_path, caplog):
    caplog.set_level("INFO", logger="csttool_nipype.execution")
    wf = _chain("ok", _adds, mem_gb=1.5, n_procs=2)
    graph = run_workflow(wf, tmp_path / "work", tmp_path / "crash", ExecutionConfig(plugin="SLURM"))
    results = {n.name: n.result.outputs.y for n in graph.nodes()}
    assert results == {"first": 42, "then": 43, "last": 44}
    jobs = _submitted(caplog)
    assert set(jobs) == {"first", "then", "last"}
    assert set(job_states(jobs.values()).values()) == {"COMPLETED"}
    log = _jobcomp_log()
    if log is not None:   # the request came from the node's own estimates: 2 CPUs, 1.5 GB
        line = next(ln for ln in log.read_text().splitlines() if f"JobId={jobs['then']} " in ln)
        tres = dict(re.findall(r"(\w+)=([\d.]+[KMGT]?)", re.search(r"Tres=(\S+)", line).group(1)))
        assert tres["cpu"] == "2" and _megabytes(tres["mem"]) == 1536


def _megabytes(value: str) -> float:
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}
    return float(value[:-1]) * scale[value[-1]] if value[-1] in scale else float(value)


def test_failed_node_is_failed_although_slurm_says_completed(slurm, tmp_path, caplog):
    """Nipype's job script catches the node's exception: the job ends COMPLETED in SLURM's
    records, so the status must (and does) come from the crash/result files."""
    caplog.set_level("INFO", logger="csttool_nipype.execution")
    with pytest.raises(WorkflowFailed) as info:
        run_workflow(_chain("bad", _raises), tmp_path / "work", tmp_path / "crash", ExecutionConfig(plugin="SLURM"))
    assert str(info.value) == "then: ValueError: deliberate failure on 42"
    assert info.value.crash_files
    jobs = _submitted(caplog)
    assert "last" not in jobs   # never submitted after its input failed
    assert job_states([jobs["then"]]) == {str(jobs["then"]): "COMPLETED"}


def test_job_killed_without_result_is_reported_with_its_job_id(slurm, tmp_path, caplog):
    caplog.set_level("INFO", logger="csttool_nipype.execution")
    with pytest.raises(WorkflowFailed) as info:
        run_workflow(_chain("killed", _killed), tmp_path / "work", tmp_path / "crash",
                     ExecutionConfig(plugin="SLURM"))
    jobs = _submitted(caplog)
    assert str(info.value).startswith(f"then: SLURM job {jobs['then']} ended without a result")


def test_slurm_graph_waits_for_its_jobs_and_checks_results(slurm, tmp_path):
    graph = run_workflow(_chain("graph_ok", _adds), tmp_path / "work", tmp_path / "crash",
                         ExecutionConfig(plugin="SLURMGraph"))
    assert {n.name: n.result.outputs.y for n in graph.nodes()} == {"first": 42, "then": 43, "last": 44}
    # the scheduler ran them: each job's output file is written by slurmd
    assert len(list((tmp_path / "work").rglob("batchscript_*.sh.o"))) == 3


def test_slurm_graph_failure_cancels_what_depends_on_it(slurm, tmp_path):
    started = time.monotonic()
    with pytest.raises(WorkflowFailed) as info:
        run_workflow(_chain("graph_bad", _raises), tmp_path / "work", tmp_path / "crash",
                     ExecutionConfig(plugin="SLURMGraph"))
    assert str(info.value) == "then: ValueError: deliberate failure on 42"
    assert time.monotonic() - started < 120   # did not wait forever for the dependent job


# ----------------------------------------------------------------------------- BIDS App on SLURM
#: Options of the integration run: every stage, without the optional preprocessing steps,
#: registration on a 3 mm template grid and about one tracking seed per voxel, on 3 mm phantoms
#: (about a minute per run on two cores).
PIPELINE = ["--denoise-method", "none", "--no-gibbs", "--no-motion-correction", "--template-resolution", "3",
            "--seed-density", "0.04"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three phantom subjects; sub-03's NIfTI is truncated (it must fail, alone)."""
    return cohort_with_a_truncated_subject(tmp_path_factory.mktemp("raw"), seed=11)


def _same_file(a: Path, b: Path) -> bool:
    """Byte-identical, or for NIfTI/JSON the same content (gzip headers, key order and run times aside)."""
    if a.read_bytes() == b.read_bytes():
        return True
    if a.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib
        import numpy as np

        ia, ib = nib.load(a), nib.load(b)
        return np.array_equal(ia.get_fdata(), ib.get_fdata()) and np.array_equal(ia.affine, ib.affine)
    if a.suffix == ".json":
        return _without_durations(json.loads(a.read_text())) == _without_durations(json.loads(b.read_text()))
    return False


def _without_durations(obj):
    """A JSON value without its run times (keys ending in ``_s``: seconds)."""
    if isinstance(obj, dict):
        return {k: _without_durations(v) for k, v in obj.items() if not k.endswith("_s")}
    if isinstance(obj, list):
        return [_without_durations(v) for v in obj]
    return obj


def _start_bids_app(argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "csttool_nipype.cli.bids_app", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_bids_app_on_slurm_matches_multiproc_and_isolates_a_failure(slurm, cohort, tmp_path):
    on_slurm, local = tmp_path / "slurm", tmp_path / "multiproc"
    sbatch = {"sbatch_args": "--time=20"}
    # both at once: the SLURM run spends much of its time waiting for the scheduler
    runs = [_start_bids_app([str(cohort), str(on_slurm), "participant", "--plugin", "SLURM",
                             "--plugin-args", json.dumps(sbatch), *PIPELINE]),
            _start_bids_app([str(cohort), str(local), "participant", "--plugin", "MultiProc", "--nprocs", "2",
                             *PIPELINE])]
    printed = [run.communicate(timeout=1200)[0] for run in runs]
    assert [run.returncode for run in runs] == [1, 1], "\n\n".join(printed)   # 1: some subjects failed (sub-03)

    # status: from the pipeline's own files, the same on both
    rows, rows_local = metrics_by_subject(on_slurm), metrics_by_subject(local)
    assert {k: r["status"] for k, r in rows.items()} == {"sub-01": "SUCCESS", "sub-02": "SUCCESS",
                                                          "sub-03": "FAILED"}
    assert rows["sub-03"]["error_category"] == "invalid input" and "sub-03_dwi.nii.gz" in rows["sub-03"]["error_reason"]
    assert "sub-03: Failed (INVALID INPUT)" in printed[0]
    ignore = {"duration_s"}
    assert list(rows) == list(rows_local)
    for key in rows:
        assert {k: v for k, v in rows[key].items() if k not in ignore} == \
               {k: v for k, v in rows_local[key].items() if k not in ignore}, key
    metrics = [k for k in rows["sub-01"] if k not in BASE_COLUMNS]
    assert metrics and all(any(rows[s][k] not in ("", "nan") for k in metrics) for s in ("sub-01", "sub-02"))

    # the nodes really went through the scheduler, with the user's sbatch arguments
    for sub in ("sub-01", "sub-02"):
        log = (on_slurm / sub / "logs" / f"{sub}.log").read_text()
        jobs = {m.group(2).split(".")[-1]: m.group(1)
                for m in re.finditer(r"SLURM job (\d+) submitted for node (\S+)", log)}
        assert {"dwi_import", "fit_tensor", "track"} <= set(jobs), sorted(jobs)
        states = job_states(jobs.values())
        assert set(states.values()) == {"COMPLETED"}, states
        comp = _jobcomp_log()
        if comp is not None:
            lines = [ln for ln in comp.read_text().splitlines()
                     if re.search(r"JobId=(\d+) ", ln).group(1) in set(jobs.values())]
            limits = {re.search(r"TimeLimit=(\S+)", ln).group(1) for ln in lines}
            assert lines and limits <= {"20", "00:20:00"}, limits   # minutes, as the log writes them

    # the same derivatives (reports aside: they record run times)
    for sub in ("sub-01", "sub-02"):
        done = json.loads((on_slurm / sub / "_done.json").read_text())
        done_local = json.loads((local / sub / "_done.json").read_text())
        paths = sorted(o["path"] for o in done["outputs"])
        assert paths == sorted(o["path"] for o in done_local["outputs"])
        assert any(p.endswith("_desc-summary_metrics.tsv") for p in paths)
        derivatives = [p for p in paths if p.startswith(("dwi/", "xfm/")) or p.endswith("_qc.png")]
        different = [p for p in derivatives if not _same_file(on_slurm / sub / p, local / sub / p)]
        assert not different, different
