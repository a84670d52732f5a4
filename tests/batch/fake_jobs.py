"""Job functions that really misbehave, for the engine's fault tests (no diffusion here)."""

import ctypes
import os
import signal
import time
from pathlib import Path


def behave(payload, work_dir, stage_dir, crash_dir, n_procs, **_):
    """Do what ``payload['action']`` says; successful jobs write one output file."""
    action = payload.get("action", "ok")
    counter = Path(payload["counter"]) if "counter" in payload else None
    if counter:
        with open(counter, "a") as fh:
            fh.write(f"{payload['name']}\n")
    if action == "raise":
        from csttool_nipype.errors import InputError

        raise InputError(payload.get("path", "/raw/x.nii.gz"), "bval count 64 does not match 65 volumes")
    if action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "segfault":
        ctypes.string_at(0)
    if action == "stop_batch" and counter and counter.read_text().count(f"{payload['name']}\n") == 1:
        os.kill(os.getppid(), signal.SIGSTOP)   # first call: the orchestrator freezes before it can promote
    if action == "sleep":
        time.sleep(payload.get("seconds", 60))
    if action == "slow":
        time.sleep(payload.get("seconds", 1.0))
    out = Path(stage_dir) / "dwi"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{payload['name']}_result.txt").write_text(f"{payload.get('value', 1)}\n")
    return {"value": payload.get("value", 1), "n_procs": n_procs}


def _sleep_forever(_):
    time.sleep(600)


def pool(payload, work_dir, stage_dir, crash_dir, n_procs, **_):
    """Like Nipype's MultiProc: a forked process pool whose workers compute (here: sleep);
    their pids go to ``payload['pids']`` once they run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    executor = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork"))
    futures = [executor.submit(_sleep_forever, i) for i in range(2)]
    time.sleep(1.0)
    pids = [os.getpid(), *executor._processes]
    Path(payload["pids"]).write_text(" ".join(str(p) for p in pids) + "\n")
    for f in futures:
        f.result()


def fill(payload, work_dir, stage_dir, crash_dir, n_procs, **_):
    """Write this attempt's output, then a stage file that leaves one page free on the disk:
    enough for the worker's result file, not for the orchestrator's ``_done.json``."""
    out = Path(stage_dir) / "dwi"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{payload['name']}_result.txt").write_text("new\n")
    st = os.statvfs(stage_dir)
    free = st.f_bavail * st.f_frsize
    with open(out / "filler.bin", "wb") as fh:
        fh.write(b"\0" * max(0, free - st.f_frsize))
    return {"value": 2}


def stages(payload, work_dir, stage_dir, crash_dir, n_procs, progress_file=None, **_):
    """Write each of ``payload['stages']`` to the engine's progress file, ``payload['seconds']`` apart."""
    from csttool_nipype.batch.state import write_progress

    for stage in payload["stages"]:
        write_progress(progress_file, stage)
        time.sleep(payload.get("seconds", 1.0))
    return {"stages": len(payload["stages"])}
