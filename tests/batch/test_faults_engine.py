"""Fault matrix, engine rows: each test injects the real fault (a signal, a read-only or full
filesystem, a deleted output, hostile keys) into real child processes; the job functions are
the small misbehaving ones of ``fake_jobs`` (no diffusion here, see ``test_faults_batch.py``)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from csttool_nipype.batch.jobs import Job
from csttool_nipype.batch.runner import BatchOptions, BatchRunner
from csttool_nipype.batch.state import job_paths, read_done

from waiting import default_sigint, wait_until

FUNCTION = "tests.batch.fake_jobs:behave"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _job(key, action="ok", **extra):
    return Job(key, {"name": key, "action": action, **extra}, "h1")


def _run(out, jobs, function=FUNCTION, **opts):
    return BatchRunner(jobs, out, BatchOptions(function=function, **{"nprocs": 2, "timeout_s": 30, **opts})).run()


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False




def _driver(out: Path, key: str, function: str, payload: dict, keys: tuple = ()) -> subprocess.Popen:
    """An orchestrator in its own process (as `csttool batch` is), running job ``key`` (and
    ``keys``, with the same payload) one at a time."""
    code = textwrap.dedent(f"""
        import sys
        from csttool_nipype.batch.jobs import Job
        from csttool_nipype.batch.runner import BatchOptions, BatchRunner
        runner = BatchRunner([Job(k, {{**{payload!r}, "name": k}}, "h1") for k in {(key, *keys)!r}], {str(out)!r},
                             BatchOptions(function={function!r}, nprocs=1, timeout_s=300))
        for outcome in runner.run():
            print(outcome.status, outcome.reason)
        sys.exit(130 if runner.interrupted else 0)
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_sigint)


def _pool_pids(out, tmp_path, key):
    pids_file = tmp_path / "pids.txt"
    proc = _driver(out, key, "tests.batch.fake_jobs:pool", {"pids": str(pids_file)})
    wait_until(lambda: pids_file.exists() and pids_file.read_text().endswith("\n"), 60, "the pool workers")
    pids = [int(p) for p in pids_file.read_text().split()]
    log = job_paths(out, key).log.read_text()
    pids.append(int(log.split("watchdog pid ")[1].split()[0]))
    assert len(pids) == 4 and all(_alive(p) for p in pids)
    return proc, pids


def test_orchestrator_sigkill_ends_the_pool_workers_and_a_rerun_runs_clean(tmp_path):
    """Row "orchestrator SIGKILL" (#19 item 1): kill -9 of the batch while a job runs a process
    pool; the job, its pool workers and its watchdog all end, and an immediate rerun succeeds."""
    out = tmp_path / "out"
    proc, pids = _pool_pids(out, tmp_path, "sub-01")
    proc.kill()
    proc.communicate(timeout=30)
    wait_until(lambda: not any(_alive(p) for p in pids), 10, "every process of the job to end")
    outcome, = _run(out, [_job("sub-01")])
    assert outcome.status == "SUCCESS"


def test_an_attempt_finished_but_not_promoted_is_promoted_by_the_rerun_not_run_again(tmp_path):
    """Row "orchestrator SIGKILL" between a job's end and its promotion: the job's worker wrote
    its result, the batch died before promoting it. The rerun promotes that attempt (the job
    function is not called again) when it is the same job with the same config; a changed
    config runs it again."""
    out, counter = tmp_path / "out", tmp_path / "calls.txt"
    proc = _driver(out, "sub-01", FUNCTION, {"action": "stop_batch", "counter": str(counter)})
    result = job_paths(out, "sub-01").result
    wait_until(lambda: result.exists(), 60, "the job's result while its batch is stopped")
    proc.kill()                                   # SIGKILL reaches a stopped process too
    proc.communicate(timeout=30)
    assert not job_paths(out, "sub-01").done.exists(), "nothing was promoted before the kill"
    calls_before = counter.read_text().splitlines()

    adopted, = _run(out, [_job("sub-01", "stop_batch", counter=str(counter))])
    assert adopted.status == "SUCCESS" and adopted.result["value"] == 1
    assert counter.read_text().splitlines() == calls_before, "the job function did not run again"
    assert (out / "sub-01" / "dwi" / "sub-01_result.txt").read_text() == "1\n"
    assert read_done(job_paths(out, "sub-01"))["config_hash"] == "h1"
    assert "ended before promoting it: promoted now" in job_paths(out, "sub-01").log.read_text()
    skipped, = _run(out, [_job("sub-01", "stop_batch", counter=str(counter))])
    assert skipped.status == "SKIPPED"

    proc = _driver(out, "sub-02", FUNCTION, {"action": "stop_batch", "counter": str(counter)})
    wait_until(lambda: job_paths(out, "sub-02").result.exists(), 60, "sub-02's result")
    proc.kill()
    proc.communicate(timeout=30)
    changed = Job("sub-02", {"name": "sub-02", "action": "ok", "counter": str(counter)}, "h2")
    rerun, = _run(out, [changed])
    assert rerun.status == "SUCCESS"
    assert counter.read_text().splitlines().count("sub-02") == 2, "another config: the job ran again"


def test_ctrl_c_marks_the_running_job_interrupted_in_its_log_and_record(tmp_path):
    """Row "orchestrator SIGINT" (#19 item 7), engine side: the job's processes end, its log says
    so, ``last_attempt.json`` says INTERRUPTED (the tables: ``test_faults_batch.py``)."""
    out = tmp_path / "out"
    proc, pids = _pool_pids(out, tmp_path, "sub-01")
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stdout.startswith("INTERRUPTED"), stdout
    assert not any(_alive(p) for p in pids)
    paths = job_paths(out, "sub-01")
    assert "interrupted after" in paths.log.read_text()
    assert json.loads((paths.logs / "last_attempt.json").read_text())["status"] == "INTERRUPTED"
    assert not paths.done.exists()


def test_timeout_is_written_in_the_subject_log(tmp_path):
    """Row "hanging stage": the job is killed at its limit and its log says why."""
    outcome, = _run(tmp_path / "out", [_job("sub-01", "sleep", seconds=120)], timeout_s=2)
    assert outcome.status == "TIMEOUT"
    assert "exceeded the 2s time limit (--timeout-minutes)" in job_paths(tmp_path / "out", "sub-01").log.read_text()


def test_unsafe_and_duplicate_keys_create_no_file_anywhere(tmp_path):
    """Row "unsafe ids" and "duplicate id" (#19 items 2, 3), engine side."""
    out = tmp_path / "a" / "out"
    keys = ["sub-../../../evil2", "sub-../evil", "sub-a/b/c", "sub-ü with space", "sub-<img src=x>",
            "sub-01", "sub-01"]
    outcomes = _run(out, [_job(k) for k in keys])
    assert [o.key for o in outcomes] == [f"entry#{i}" for i in range(1, 6)] + ["sub-01", "entry#7"]
    assert [o.status for o in outcomes] == ["FAILED"] * 5 + ["SUCCESS", "FAILED"]
    assert all(o.category == "invalid input" for o in outcomes if o.status == "FAILED")
    assert "duplicate of entry 6" in outcomes[6].reason and "not a safe folder name" in outcomes[0].reason
    assert sorted(p.name for p in out.iterdir()) == ["sub-01"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "sub-01" not in str(p)) == [
        "a", "a/out"], "nothing outside OUT/sub-01"
    assert "invalid" not in job_paths(out, "sub-01").log.read_text(), "the duplicate never touched sub-01's log"


def test_deleted_or_edited_output_is_found_and_the_subject_rerun(tmp_path):
    """Row "deleted/edited outputs" (#19 item 4): size is checked on every rerun, SHA-256 with verify."""
    out = tmp_path / "out"
    _run(out, [_job("sub-01", value=1)])
    output = out / "sub-01" / "dwi" / "sub-01_result.txt"
    output.write_text("7\n")                      # same size, other content
    outcome, = _run(out, [_job("sub-01", value=1)])
    assert outcome.status == "SKIPPED", "a same-size edit needs --verify"
    outcome, = _run(out, [_job("sub-01", value=1)], verify=True)
    assert outcome.status == "SUCCESS" and output.read_text() == "1\n"
    log = job_paths(out, "sub-01").log.read_text()
    assert "done before, but dwi/sub-01_result.txt changed (SHA-256 differs from _done.json)" in log
    output.unlink()
    outcome, = _run(out, [_job("sub-01", value=1)])
    assert outcome.status == "SUCCESS" and output.read_text() == "1\n"
    log = job_paths(out, "sub-01").log.read_text()
    assert "done before, but dwi/sub-01_result.txt is missing: running it again" in log


def test_a_damaged_output_is_computed_again_with_keep_work(tmp_path):
    """With ``keep_work`` the promoted attempt's work folder stays: its result is not taken for a
    finished attempt to promote again (that would mark the damaged output done)."""
    out, counter = tmp_path / "out", tmp_path / "calls.txt"
    _run(out, [_job("sub-01", value=1, counter=str(counter))], keep_work=True)
    output = out / "sub-01" / "dwi" / "sub-01_result.txt"
    output.write_text("7\n")
    outcome, = _run(out, [_job("sub-01", value=1, counter=str(counter))], keep_work=True, verify=True)
    assert outcome.status == "SUCCESS" and output.read_text() == "1\n"
    assert counter.read_text().splitlines() == ["sub-01", "sub-01"], "the job ran again"


def test_stale_lock_of_a_dead_process_does_not_block(tmp_path):
    """Row "stale lock": a process that held a job's lock was SIGKILLed; the lock file stays, the lock does not."""
    out = tmp_path / "out"
    lock = job_paths(out, "sub-01").lock
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", f"from filelock import FileLock; l = FileLock({str(lock)!r}); "
                               "l.acquire(); print('held', flush=True); import time; time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert lock.exists()
    t0 = time.monotonic()
    outcome, = _run(out, [_job("sub-01")])
    assert outcome.status == "SUCCESS" and time.monotonic() - t0 < 30


# ----------------------------------------------------------------- filesystems (root: mounts)
def _mount_tmpfs(where: Path, *options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to mount a small or read-only tmpfs "
                                                    "(as root, chmod -w does not stop writes)")


@needs_root
def test_read_only_job_folder_fails_that_job_only(tmp_path):
    """Row "bookkeeping failure" (#19 item 6, EROFS): sub-02's folder is a read-only mount;
    sub-02 fails with the reason, the others succeed, nothing is left half-written."""
    out = tmp_path / "out"
    ro = out / "sub-02"
    _mount_tmpfs(ro, "ro", "size=1m")
    try:
        outcomes = {o.key: o for o in _run(out, [_job(f"sub-0{i}") for i in (1, 2, 3)])}
    finally:
        _umount(ro)
    assert outcomes["sub-01"].status == outcomes["sub-03"].status == "SUCCESS"
    assert outcomes["sub-02"].status == "FAILED" and outcomes["sub-02"].category == "output error"
    assert "Read-only file system" in outcomes["sub-02"].reason
    assert not list(out.rglob("*.tmp*"))


@needs_root
def test_disk_full_while_promoting_keeps_the_previous_outputs(tmp_path):
    """Row "disk full while promoting" (#19 item 6): a --force rerun on a full disk fails at
    ``_done.json``; the previous outputs and marker are back, no temporary file is left,
    and a rerun once there is room succeeds."""
    out = tmp_path / "out"
    _mount_tmpfs(out, "size=4m")
    try:
        _run(out, [_job("sub-01", value=1)])
        paths = job_paths(out, "sub-01")
        before = paths.done.read_text()
        outcome, = _run(out, [_job("sub-01", "fill")], function="tests.batch.fake_jobs:fill", force=True,
                        keep_work=True)
        assert outcome.status == "FAILED" and outcome.category == "output error", outcome
        assert "promotion failed, previous outputs kept" in outcome.reason and "No space left" in outcome.reason
        assert paths.done.read_text() == before
        assert (paths.root / "dwi" / "sub-01_result.txt").read_text() == "1\n"
        assert not (paths.root / "dwi" / "filler.bin").exists()
        assert not [p for p in out.rglob("*") if ".tmp" in p.name]
        (paths.stage / "dwi" / "filler.bin").unlink()     # room again
        outcome, = _run(out, [_job("sub-01", value=3)], force=True)
        assert outcome.status == "SUCCESS" and (paths.root / "dwi" / "sub-01_result.txt").read_text() == "3\n"
        assert read_done(paths)["outputs"][0]["path"] == "dwi/sub-01_result.txt"
    finally:
        _umount(out)
