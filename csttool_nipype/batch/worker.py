"""The child process that runs one job: ``python -m csttool_nipype.batch.worker JOBFILE``.

It sends every log line (its own, the job's, Nipype's) to the job's log file, calls
the job function, and writes ``result.json`` with the status, an error category and a
one-line reason. The orchestrator decides what the exit status means; a child that
dies without writing a result (killed, segfault) is diagnosed from its exit signal.

Before anything else it forks a watchdog: a tiny process in the job's process group
that blocks on the orchestrator's life pipe and SIGKILLs the whole group (this
process, Nipype's MultiProc pool workers, itself) when the pipe reaches end of file,
i.e. when the orchestrator is gone, killed with -9 included.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from csttool_nipype.peak_memory import process_peak_mb

#: Environment variable with the number of the file descriptor on which the worker
#: inherits the read end of the orchestrator's life pipe.
WATCHDOG_FD_ENV = "CSTTOOL_BATCH_WATCHDOG_FD"


def start_watchdog() -> int | None:
    """Fork the watchdog of this job's process group (see the module docstring); its pid.

    Does nothing (returns None) outside a batch, where ``WATCHDOG_FD_ENV`` is not set.
    Call it first, while the process has no threads.
    """
    value = os.environ.pop(WATCHDOG_FD_ENV, None)
    if not value:
        return None
    fd = int(value)
    pid = os.fork()
    if pid == 0:   # the watchdog
        try:
            while True:
                try:
                    if not os.read(fd, 64):
                        break           # end of file: no orchestrator holds the write end any more
                except InterruptedError:
                    continue
            os.killpg(os.getpgid(0), signal.SIGKILL)
        finally:
            os._exit(0)
    os.close(fd)   # Nipype's workers need not hold it
    return pid


#: Exit code of a worker that could not write its result file.
NO_RESULT = 3


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
    watchdog = start_watchdog()
    job = json.loads(Path(jobfile).read_text())
    log_file = Path(job["log_file"])
    result_file = Path(job["result_file"])
    _setup_logging(log_file)
    log = logging.getLogger("csttool.batch.worker")
    log.info("=== %s: attempt started (pid %d, config %s) ===", job["key"], os.getpid(), job["config_hash"])
    if watchdog:
        log.info("watchdog pid %d ends this job's processes if the batch dies", watchdog)
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
    try:
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, result_file)
    except OSError as exc:   # a full or read-only disk: the orchestrator reports the exit code
        tmp.unlink(missing_ok=True)
        log.error("could not write %s: %s", result_file, exc)
        return NO_RESULT
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
