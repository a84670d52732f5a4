"""The engine isolates jobs: a raise, SIGKILL, segfault or hang of one never stops the others."""

import json
import multiprocessing
import time

from csttool_nipype.batch.jobs import Job
from csttool_nipype.batch.runner import BatchOptions, BatchRunner
from csttool_nipype.batch.state import job_paths, read_done

FUNCTION = "tests.batch.fake_jobs:behave"


def _jobs(tmp_path, actions, **extra):
    counter = tmp_path / "executions.txt"
    return [Job(f"sub-{i:02d}", {"name": f"sub-{i:02d}", "action": a, "counter": str(counter), **extra}, "h1")
            for i, a in enumerate(actions, start=1)]


def _run(tmp_path, jobs, **opts):
    options = BatchOptions(function=FUNCTION, **{"nprocs": 2, "timeout_s": 20, **opts})
    return {o.key: o for o in BatchRunner(jobs, tmp_path / "out", options).run()}


def test_faults_are_isolated_and_classified(tmp_path):
    jobs = _jobs(tmp_path, ["ok", "raise", "sigkill", "segfault", "ok"])
    out = _run(tmp_path, jobs)
    assert [out[k].status for k in sorted(out)] == ["SUCCESS", "FAILED", "FAILED", "FAILED", "SUCCESS"]
    assert out["sub-02"].category == "invalid input" and "bval count 64" in out["sub-02"].reason
    assert out["sub-03"].category == "killed" and "SIGKILL" in out["sub-03"].reason
    assert out["sub-04"].category == "crashed" and "SIGSEGV" in out["sub-04"].reason
    for key in ("sub-01", "sub-05"):
        paths = job_paths(tmp_path / "out", key)
        done = read_done(paths)
        assert done["config_hash"] == "h1"
        assert [o["path"] for o in done["outputs"]] == [f"dwi/{key}_result.txt"]
        assert not paths.work.exists(), "promoted job keeps no _work"
    failed = job_paths(tmp_path / "out", "sub-02")
    assert not failed.done.exists() and failed.log.exists()
    assert json.loads((failed.logs / "last_attempt.json").read_text())["status"] == "FAILED"
    assert "Traceback" in failed.log.read_text(), "the log keeps the details"


def test_timeout_kills_the_job_and_others_finish(tmp_path):
    jobs = _jobs(tmp_path, ["sleep", "ok"], seconds=120)
    t0 = time.monotonic()
    out = _run(tmp_path, jobs, timeout_s=3)
    assert time.monotonic() - t0 < 60
    assert out["sub-01"].status == "TIMEOUT" and "limit" in out["sub-01"].reason
    assert out["sub-02"].status == "SUCCESS"


def test_rerun_skips_done_and_reruns_changed_config(tmp_path):
    jobs = _jobs(tmp_path, ["ok", "ok"])
    _run(tmp_path, jobs)
    changed = [jobs[0], Job(jobs[1].key, jobs[1].payload, "h2")]
    out = _run(tmp_path, changed)
    assert out["sub-01"].status == "SKIPPED" and out["sub-02"].status == "SUCCESS"
    executed = (tmp_path / "executions.txt").read_text().split()
    # the first run's two jobs run side by side (either may log first); the rerun runs sub-02 only
    assert sorted(executed[:2]) == ["sub-01", "sub-02"] and executed[2:] == ["sub-02"]
    out = _run(tmp_path, changed, force=True)
    assert {o.status for o in out.values()} == {"SUCCESS"}


def test_invalid_job_is_reported_without_running(tmp_path):
    jobs = [Job("sub-01", {"name": "sub-01"}, "h", invalid="/raw/sub-01.nii.gz: file does not exist")]
    out = _run(tmp_path, jobs)
    assert out["sub-01"].status == "FAILED" and out["sub-01"].category == "invalid input"
    assert not (tmp_path / "executions.txt").exists()


def _batch_in_process(tmp_path, jobs):
    _run(tmp_path, jobs)


def test_two_batches_at_once_process_each_job_once(tmp_path):
    jobs = _jobs(tmp_path, ["slow"] * 4, seconds=1.0)
    procs = [multiprocessing.get_context("fork").Process(target=_batch_in_process, args=(tmp_path, jobs))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    executed = (tmp_path / "executions.txt").read_text().split()
    assert sorted(executed) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    for job in jobs:
        assert read_done(job_paths(tmp_path / "out", job.key))["status"] == "SUCCESS"
