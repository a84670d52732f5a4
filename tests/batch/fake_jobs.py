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
    if action == "sleep":
        time.sleep(payload.get("seconds", 60))
    if action == "slow":
        time.sleep(payload.get("seconds", 1.0))
    out = Path(stage_dir) / "dwi"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{payload['name']}_result.txt").write_text(f"{payload.get('value', 1)}\n")
    return {"value": payload.get("value", 1), "n_procs": n_procs}
