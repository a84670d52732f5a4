"""The child process that runs one job: ``python -m csttool_nipype.batch.worker JOBFILE``.

It sends every log line (its own, the job's, Nipype's) to the job's log file, calls
the job function, and writes ``result.json`` with the status, an error category and a
one-line reason. The orchestrator decides what the exit status means; a child that
dies without writing a result (killed, segfault) is diagnosed from its exit signal.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from csttool_nipype.peak_memory import process_peak_mb


def load_function(dotted: str):
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def categorize(exc: BaseException) -> str:
    """Error category of an exception: its ``category`` attribute, else ``internal error``."""
    return getattr(exc, "category", None) or "internal error"


def _setup_logging(log_file: Path) -> None:
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.propagate = False


def main(jobfile: str) -> int:
    job = json.loads(Path(jobfile).read_text())
    log_file = Path(job["log_file"])
    result_file = Path(job["result_file"])
    _setup_logging(log_file)
    log = logging.getLogger("csttool.batch.worker")
    log.info("=== %s: attempt started (pid %d, config %s) ===", job["key"], os.getpid(), job["config_hash"])
    started = time.time()
    try:
        function = load_function(job["function"])
        value = function(job["payload"], **job["context"])
        record = {"status": "SUCCESS", "result": value}
    except BaseException as exc:  # noqa: BLE001 - everything becomes a reported failure
        log.error("%s", "".join(traceback.format_exception(exc)).rstrip())
        reason = " ".join(str(exc).split()) or type(exc).__name__
        record = {"status": "FAILED", "category": categorize(exc), "reason": reason}
    record["duration_s"] = time.time() - started
    record["peak_rss_mb"] = round(process_peak_mb(), 1)   # this job's process and its finished children
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, result_file)
    log.info("=== %s: attempt ended: %s ===", job["key"], record["status"])
    return 0 if record["status"] == "SUCCESS" else 1


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown.

    Called once the result file is written: with DIPY, Nipype and matplotlib loaded the
    normal clean-up of modules and objects takes ~0.8 s per job and does nothing the
    orchestrator needs. Logs and standard streams are flushed first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main(sys.argv[1]))
