"""Run jobs in parallel, each in its own process group, with timeouts and locks.

Why one process per job instead of one big Nipype MultiProc graph: Nipype's
MultiProc pool stalls when one of its workers is killed (the OOM killer does exactly
that), and a hung subject would block the whole batch. Here each job is a child
process in a new session; the orchestrator only polls, so a crash, a SIGKILL or a
hang of one job can never stop the others, and a timeout kills the job's whole
process group (Nipype's own workers included). Inside a job, Nipype runs the
subject's graph with Linear or MultiProc (when a job is given several cores).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from .jobs import Job
from .state import JobPaths, is_done, job_paths, promote, read_done, try_lock, write_done, write_json_atomic

LOGGER = logging.getLogger(__name__)

SUCCESS, FAILED, TIMEOUT, SKIPPED = "SUCCESS", "FAILED", "TIMEOUT", "SKIPPED"


@dataclass
class Outcome:
    """How one job ended in this batch."""

    key: str
    status: str
    index: int = 0
    category: str = ""
    reason: str = ""
    duration_s: float = 0.0
    log: str = ""
    result: dict = field(default_factory=dict)


@dataclass
class _Running:
    job: Job
    index: int
    paths: JobPaths
    lock: object
    proc: subprocess.Popen
    started: float
    log_fh: object


@dataclass(frozen=True)
class BatchOptions:
    """Execution options of a batch (none of them changes results)."""

    function: str                       # "module:function" run in the child for each job
    nprocs: int = 1                     # jobs at once
    timeout_s: float = 120 * 60.0
    force: bool = False
    keep_work: bool = False
    poll_s: float = 0.2
    context: dict = field(default_factory=dict)   # extra keyword arguments for the job function
    work_root: str | None = None        # the jobs' caches go to work_root/<key> (kept) instead of OUT/<key>/_work
    threads_per_job: int | None = None  # OMP/BLAS threads of a job (default: its share of nprocs)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the job's process group, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the orchestrator dies.

    Without this a killed batch would leave its jobs running unsupervised, and a
    rerun (whose lock the dead batch no longer holds) could process the same
    subject twice at once.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the lock still prevents double work by live batches
        pass


def _login_name() -> str:
    """``LOGNAME`` for the job (cluster plugins need it; containers often lack it)."""
    if os.environ.get("LOGNAME"):
        return os.environ["LOGNAME"]
    try:
        import pwd

        return os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "csttool"


def _format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f}m" if seconds >= 60 else f"{seconds:.0f}s"


class BatchRunner:
    """Schedule ``jobs`` over ``nprocs`` child processes; see module docstring."""

    def __init__(self, jobs: list[Job], out_dir: Path, options: BatchOptions, on_finish=None):
        self.jobs = list(jobs)
        self.out_dir = Path(out_dir).absolute()
        self.options = options
        self.on_finish = on_finish or (lambda outcome, total: None)
        self.outcomes: dict[str, Outcome] = {}

    # ------------------------------------------------------------------ public
    def run(self) -> list[Outcome]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        pending = deque(enumerate(self.jobs, start=1))
        waiting: deque = deque()      # locked by another batch: retry later
        running: list[_Running] = []
        while pending or waiting or running:
            while pending and len(running) < self.options.nprocs:
                index, job = pending.popleft()
                started = self._start(index, job)
                if started == "locked":
                    waiting.append((index, job))
                elif started is not None:
                    running.append(started)
            for run in list(running):
                if self._check(run):
                    running.remove(run)
            if not pending and waiting and len(running) < self.options.nprocs:
                pending.extend(waiting)
                waiting.clear()
                if not running:
                    time.sleep(1.0)   # the other batch still holds them
            if running:
                time.sleep(self.options.poll_s)
        return [self.outcomes[job.key] for job in self.jobs]

    # ------------------------------------------------------------------ steps
    def _finish(self, outcome: Outcome) -> None:
        self.outcomes[outcome.key] = outcome
        if outcome.status != SKIPPED:
            paths = job_paths(self.out_dir, outcome.key)
            paths.logs.mkdir(parents=True, exist_ok=True)
            write_json_atomic(paths.logs / "last_attempt.json", {
                "status": outcome.status, "category": outcome.category, "reason": outcome.reason,
                "duration_s": round(outcome.duration_s, 3), "version": __version__,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            })
        self.on_finish(outcome, len(self.jobs))

    def _start(self, index: int, job: Job):
        paths = job_paths(self.out_dir, job.key)
        log = str(paths.log)
        if job.invalid:
            paths.logs.mkdir(parents=True, exist_ok=True)
            with open(paths.log, "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR invalid input: {job.invalid}\n")
            self._finish(Outcome(job.key, FAILED, index, "invalid input", job.invalid, log=log))
            return None
        if not self.options.force and is_done(paths, job.config_hash):
            self._finish(Outcome(job.key, SKIPPED, index, reason="already done with this config", log=log,
                                 result=(read_done(paths) or {}).get("result", {})))
            return None
        lock = try_lock(paths)
        if lock is None:
            return "locked"
        if not self.options.force and is_done(paths, job.config_hash):   # finished by another batch meanwhile
            lock.release()
            self._finish(Outcome(job.key, SKIPPED, index, reason="done by another batch", log=log))
            return None
        if self.options.force and paths.done.exists():
            # a forced rerun must not be resumed from a stale cache of the same config
            paths.done.unlink()
        return self._launch(index, job, paths, lock)

    def _launch(self, index: int, job: Job, paths: JobPaths, lock) -> _Running:
        shutil.rmtree(paths.stage, ignore_errors=True)
        paths.result.unlink(missing_ok=True)
        for folder in (paths.stage, paths.nipype, paths.logs, paths.crash):
            folder.mkdir(parents=True, exist_ok=True)
        cache = Path(self.options.work_root) / job.key if self.options.work_root else paths.nipype
        cache.mkdir(parents=True, exist_ok=True)
        context = {"work_dir": str(cache), "stage_dir": str(paths.stage), "crash_dir": str(paths.crash),
                   "n_procs": max(1, self.options.nprocs // max(1, min(self.options.nprocs, len(self.jobs)))),
                   **self.options.context}
        threads = str(self.options.threads_per_job or context["n_procs"])
        write_json_atomic(paths.jobfile, {
            "key": job.key, "function": self.options.function, "payload": job.payload,
            "config_hash": job.config_hash, "context": context,
            "log_file": str(paths.log), "result_file": str(paths.result),
        })
        log_fh = open(paths.log, "a")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOGNAME": _login_name(),
               "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        proc = subprocess.Popen(
            [sys.executable, "-m", "csttool_nipype.batch.worker", str(paths.jobfile)],
            stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(paths.work), env=env, start_new_session=True, preexec_fn=_die_with_parent,
        )
        LOGGER.debug("started %s (pid %d)", job.key, proc.pid)
        return _Running(job, index, paths, lock, proc, time.monotonic(), log_fh)

    def _check(self, run: _Running) -> bool:
        """Poll one running job; finish it if it ended or timed out. True when finished."""
        elapsed = time.monotonic() - run.started
        code = run.proc.poll()
        if code is None and elapsed <= self.options.timeout_s:
            return False
        try:
            if code is None:
                _kill_group(run.proc)
                limit = _format_minutes(self.options.timeout_s)
                outcome = Outcome(run.job.key, TIMEOUT, run.index, "timeout",
                                  f"exceeded {limit} limit", elapsed, str(run.paths.log))
            else:
                _kill_group(run.proc, grace_s=0.5)   # stray grandchildren of a finished job
                outcome = self._evaluate(run, code, elapsed)
        finally:
            run.log_fh.close()
        if outcome.status == SUCCESS:
            try:
                self._promote(run, outcome)
            except OSError as exc:
                outcome = Outcome(run.job.key, FAILED, run.index, "promotion failed", str(exc), elapsed,
                                  str(run.paths.log))
        run.lock.release()
        self._finish(outcome)
        return True

    def _evaluate(self, run: _Running, code: int, elapsed: float) -> Outcome:
        log = str(run.paths.log)
        try:
            result = json.loads(run.paths.result.read_text())
        except (OSError, ValueError):
            result = None
        if code < 0:
            sig = _signal_name(code)
            hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if code == -signal.SIGKILL else ""
            category = "killed" if code in (-signal.SIGKILL, -signal.SIGTERM) else "crashed"
            return Outcome(run.job.key, FAILED, run.index, category, f"killed by {sig}{hint}", elapsed, log)
        if result is None:
            return Outcome(run.job.key, FAILED, run.index, "crashed",
                           f"worker exited with code {code} without a result", elapsed, log)
        if result.get("status") == SUCCESS and code == 0:
            value = dict(result.get("result") or {})
            value.setdefault("peak_rss_mb", result.get("peak_rss_mb"))
            return Outcome(run.job.key, SUCCESS, run.index, duration_s=elapsed, log=log, result=value)
        return Outcome(run.job.key, FAILED, run.index, result.get("category", "pipeline error"),
                       result.get("reason", f"exit code {code}"), elapsed, log)

    def _promote(self, run: _Running, outcome: Outcome) -> None:
        promote(run.paths, run.paths.stage)
        write_done(run.paths, {
            "status": SUCCESS, "key": run.job.key, "version": __version__, "config_hash": run.job.config_hash,
            "duration_s": round(outcome.duration_s, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "result": outcome.result,
        })
        if not self.options.keep_work:
            shutil.rmtree(run.paths.work, ignore_errors=True)
