"""Run jobs in parallel, each in its own process group, with timeouts and locks.

Why one process per job instead of one big Nipype MultiProc graph: Nipype's
MultiProc pool stalls when one of its workers is killed (the OOM killer does exactly
that), and a hung subject would block the whole batch. Here each job is a child
process in a new session; the orchestrator only polls, so a crash, a SIGKILL or a
hang of one job can never stop the others, and a timeout kills the job's whole
process group (Nipype's own workers included). Inside a job, Nipype runs the
subject's graph with Linear or MultiProc (when a job is given several cores).

Every job inherits the read end of one "life pipe" whose write end only this process
holds: the job's watchdog (:mod:`.worker`) ends the job's process group when it reads
end of file, so a batch killed with -9 leaves no worker behind. Keys are checked before
any path is built from them (:func:`checked_jobs`), a failure to write one job's
bookkeeping fails that job only, and Ctrl-C ends the running jobs as INTERRUPTED.
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
from .jobs import Job, is_safe_key
from .state import (
    JobPaths, damaged_outputs, is_done, job_paths, promote, read_done, read_progress, try_lock, write_json_atomic,
)
from .worker import NO_RESULT, WATCHDOG_FD_ENV

LOGGER = logging.getLogger(__name__)

SUCCESS, FAILED, TIMEOUT, SKIPPED, INTERRUPTED = "SUCCESS", "FAILED", "TIMEOUT", "SKIPPED", "INTERRUPTED"
#: Error categories the engine itself gives.
INVALID, OUTPUT_ERROR = "invalid input", "output error"


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
class RunningJob:
    """A running job as the progress display sees it: ``stage`` is what the job last wrote
    to its progress file (any string; empty before it wrote one)."""

    key: str
    index: int
    elapsed_s: float
    stage: str = ""


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
    verify: bool = False                # check every output's SHA-256 before skipping a done job (else size)
    progress_s: float = 1.0             # seconds between progress snapshots (on_progress)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process is left in process group ``pgid``."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the job's process group (Nipype's pool workers included), then SIGKILL what is left.

    Waits until no live process is left in the group, not only for the job's own
    process, so that a rerun never meets leftovers of this attempt.
    """
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            proc.poll()
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()   # reap the job's own process
            if not _group_alive(proc.pid):
                return
            time.sleep(0.05)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the orchestrator dies.

    An extra to the worker's watchdog (:mod:`.worker`), which ends the job's whole
    process group, Nipype's pool workers included, when the orchestrator's life pipe
    closes. Without either, a killed batch would leave its jobs running unsupervised,
    and a rerun could process the same subject twice at once.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the watchdog still ends the job
        pass


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _note(log: Path, level: str, text: str) -> None:
    """Append one engine line to a job's log; a log that cannot be written is only reported here."""
    try:
        with open(log, "a") as fh:
            fh.write(f"{_stamp()} {level} csttool.batch: {text}\n")
    except OSError as exc:
        LOGGER.warning("could not write to %s: %s", log, exc)


def checked_jobs(jobs: list[Job]) -> list[Job]:
    """Jobs whose key is unsafe as a folder name or repeats an earlier one become invalid.

    Such a job is renamed ``entry#N`` (N: its position), a name no folder is ever made
    from, so that a rejected key never becomes a path; its reason keeps what was wrong.
    """
    first: dict[str, int] = {}
    out = []
    for index, job in enumerate(jobs, start=1):
        problem = None
        if not is_safe_key(job.key):
            problem = f"{job.key!r} is not a safe folder name (letters, digits, '-' and '_' only)"
        elif job.key in first:
            problem = f"{job.key} is a duplicate of entry {first[job.key]}"
        else:
            first[job.key] = index
        if problem:
            out.append(Job(f"entry#{index}", {}, "", invalid=job.invalid or problem))
        else:
            out.append(job)
    return out


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

    def __init__(self, jobs: list[Job], out_dir: Path, options: BatchOptions, on_finish=None, on_progress=None):
        self.jobs = checked_jobs(list(jobs))
        self.out_dir = Path(out_dir).absolute()
        self.options = options
        self.on_finish = on_finish or (lambda outcome, total: None)
        self.on_progress = on_progress   # called with ([RunningJob, ...], total) every progress_s
        self._last_progress = float("-inf")
        self.outcomes: dict[int, Outcome] = {}
        self.interrupted = False
        self._life_pipe: tuple[int, int] | None = None

    # ------------------------------------------------------------------ public
    def run(self) -> list[Outcome]:
        """Run every job; returns their outcomes in job order.

        On KeyboardInterrupt (Ctrl-C, SIGINT) the running jobs are stopped and recorded
        INTERRUPTED, jobs not started yet are INTERRUPTED with "not started", and
        ``self.interrupted`` is set; the outcomes are returned all the same.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        pending = deque(enumerate(self.jobs, start=1))
        waiting: deque = deque()      # locked by another batch: retry later
        running: list[_Running] = []
        # the workers hold the read end: when this process dies, however, they see EOF
        self._life_pipe = os.pipe()
        try:
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
                self._report_progress(running)
                if running:
                    time.sleep(self.options.poll_s)
        except KeyboardInterrupt:
            self.interrupted = True
            previous = _ignore_sigint()
            try:
                for run in running:
                    self._interrupt(run)
            finally:
                _restore_sigint(previous)
        finally:
            for fd in self._life_pipe:
                os.close(fd)
            self._life_pipe = None
        for index, job in enumerate(self.jobs, start=1):
            if index not in self.outcomes:
                self.outcomes[index] = Outcome(job.key, INTERRUPTED, index, "interrupted",
                                               "not started: the batch was interrupted")
        return [self.outcomes[i] for i in range(1, len(self.jobs) + 1)]

    # ------------------------------------------------------------------ progress (live display)
    def _report_progress(self, running: list[_Running]) -> None:
        """Hand ``on_progress`` the running jobs and the stage each last wrote (throttled)."""
        now = time.monotonic()
        if self.on_progress is None or now - self._last_progress < self.options.progress_s:
            return
        self._last_progress = now
        self.on_progress([RunningJob(r.job.key, r.index, now - r.started, read_progress(r.paths))
                          for r in running], len(self.jobs))

    # ------------------------------------------------------------------ steps
    def _finish(self, outcome: Outcome, record: bool = True) -> None:
        """Keep the outcome, record it in the job's ``logs/last_attempt.json`` (if ``record``), report it."""
        self.outcomes[outcome.index] = outcome
        if record and outcome.status != SKIPPED:
            paths = job_paths(self.out_dir, outcome.key)
            try:
                paths.logs.mkdir(parents=True, exist_ok=True)
                write_json_atomic(paths.logs / "last_attempt.json", {
                    "status": outcome.status, "category": outcome.category, "reason": outcome.reason,
                    "duration_s": round(outcome.duration_s, 3), "version": __version__, "finished": _stamp(),
                })
            except OSError as exc:
                LOGGER.warning("%s: could not record the attempt in %s: %s", outcome.key, paths.logs, exc)
        self.on_finish(outcome, len(self.jobs))

    def _done_and_intact(self, job: Job, paths: JobPaths) -> tuple[bool, str | None]:
        """(skip it, why it runs again): done with this config and its outputs as recorded."""
        if self.options.force or not is_done(paths, job.config_hash):
            return False, None
        problem = damaged_outputs(paths, full=self.options.verify)
        if problem:
            return False, f"done before, but {problem}: running it again"
        return True, None

    def _start(self, index: int, job: Job):
        if job.invalid:   # nothing is written for it: its key may not even be a safe path
            self._finish(Outcome(job.key, FAILED, index, INVALID, job.invalid), record=False)
            return None
        paths = job_paths(self.out_dir, job.key)
        log = str(paths.log)
        done, _ = self._done_and_intact(job, paths)
        if done:
            self._finish(Outcome(job.key, SKIPPED, index, reason="already done with this config", log=log,
                                 result=(read_done(paths) or {}).get("result", {})))
            return None
        lock = None
        try:
            lock = try_lock(paths)
            if lock is None:
                return "locked"
            done, why = self._done_and_intact(job, paths)
            if done:   # finished by another batch meanwhile
                lock.release()
                self._finish(Outcome(job.key, SKIPPED, index, reason="done by another batch", log=log))
                return None
            if self._adopt(index, job, paths):   # finished before, but its batch died before promoting it
                lock.release()
                return None
            if why:
                LOGGER.warning("%s: %s", job.key, why)
            return self._launch(index, job, paths, lock, why)
        except OSError as exc:   # a full, read-only or forbidden OUT: this job fails, the batch goes on
            if lock is not None:
                lock.release()
            shutil.rmtree(paths.stage, ignore_errors=True)
            self._finish(Outcome(job.key, FAILED, index, OUTPUT_ERROR, f"could not prepare {paths.root}: {exc}",
                                 log=log))
            return None

    def _adopt(self, index: int, job: Job, paths: JobPaths) -> bool:
        """Promote an attempt that finished but was never promoted (its batch was killed in between).

        Only when the attempt's job file is this very job (function, payload, config hash),
        its result says SUCCESS, and its promotion never began (no ``replaced-*`` folder in
        ``_work``: a half-done promotion is not trusted, the job runs again). With ``force``
        the job always runs again. True when adopted (the outcome is recorded).
        """
        if self.options.force:
            return False
        try:
            ran = json.loads(paths.jobfile.read_text())
            result = json.loads(paths.result.read_text())
        except (OSError, ValueError):
            return False
        same = (ran.get("function"), ran.get("payload"), ran.get("config_hash")) == \
            (self.options.function, job.payload, job.config_hash)
        if not same or result.get("status") != SUCCESS or not paths.stage.is_dir() \
                or any(paths.work.glob("replaced-*")):
            return False
        outcome = Outcome(job.key, SUCCESS, index, duration_s=float(result.get("duration_s") or 0.0),
                          log=str(paths.log), result=_result_value(result))
        try:
            self._promote(job, paths, outcome)
        except OSError as exc:
            LOGGER.warning("%s: could not promote its finished attempt (%s): running it again", job.key, exc)
            return False
        _note(paths.log, "INFO", "the batch that ran this attempt ended before promoting it: promoted now")
        self._finish(outcome)
        return True

    def _launch(self, index: int, job: Job, paths: JobPaths, lock, note: str | None = None) -> _Running:
        shutil.rmtree(paths.stage, ignore_errors=True)
        paths.result.unlink(missing_ok=True)
        for folder in (paths.stage, paths.nipype, paths.logs, paths.crash):
            folder.mkdir(parents=True, exist_ok=True)
        cache = Path(self.options.work_root) / job.key if self.options.work_root else paths.nipype
        cache.mkdir(parents=True, exist_ok=True)
        paths.progress.unlink(missing_ok=True)
        context = {"work_dir": str(cache), "stage_dir": str(paths.stage), "crash_dir": str(paths.crash),
                   "progress_file": str(paths.progress),
                   "n_procs": max(1, self.options.nprocs // max(1, min(self.options.nprocs, len(self.jobs)))),
                   **self.options.context}
        threads = str(self.options.threads_per_job or context["n_procs"])
        write_json_atomic(paths.jobfile, {
            "key": job.key, "function": self.options.function, "payload": job.payload,
            "config_hash": job.config_hash, "context": context,
            "log_file": str(paths.log), "result_file": str(paths.result),
        })
        if note:
            _note(paths.log, "WARNING", note)
        log_fh = open(paths.log, "a")
        read_end = self._life_pipe[0]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LOGNAME": _login_name(), WATCHDOG_FD_ENV: str(read_end),
               "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "csttool_nipype.batch.worker", str(paths.jobfile)],
                stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(read_end,),
                cwd=str(paths.work), env=env, start_new_session=True, preexec_fn=_die_with_parent,
            )
        except BaseException:
            log_fh.close()
            raise
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
                _note(run.paths.log, "ERROR", f"killed after {_format_minutes(elapsed)}: exceeded the {limit} "
                                              "time limit (--timeout-minutes)")
            else:
                _kill_group(run.proc, grace_s=0.5)   # stray grandchildren of a finished job
                outcome = self._evaluate(run, code, elapsed)
        finally:
            run.log_fh.close()
        if outcome.status == SUCCESS:
            try:
                self._promote(run.job, run.paths, outcome)
            except OSError as exc:   # the previous outputs (if any) are back in place
                outcome = Outcome(run.job.key, FAILED, run.index, OUTPUT_ERROR,
                                  f"promotion failed, previous outputs kept: {exc}", elapsed, str(run.paths.log))
                _note(run.paths.log, "ERROR", outcome.reason)
        run.lock.release()
        self._finish(outcome)
        return True

    def _interrupt(self, run: _Running) -> None:
        """Stop a running job because the batch is interrupted, and record it INTERRUPTED."""
        elapsed = time.monotonic() - run.started
        try:
            _kill_group(run.proc, grace_s=2.0)
        finally:
            run.log_fh.close()
        reason = "the batch was interrupted (Ctrl-C) while this subject ran"
        _note(run.paths.log, "ERROR", f"interrupted after {_format_minutes(elapsed)}: {reason}")
        run.lock.release()
        self._finish(Outcome(run.job.key, INTERRUPTED, run.index, "interrupted", reason, elapsed, str(run.paths.log)))

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
        if result is None and code == NO_RESULT:
            return Outcome(run.job.key, FAILED, run.index, OUTPUT_ERROR,
                           f"could not write {run.paths.result} (disk full or read-only?)", elapsed, log)
        if result is None:
            return Outcome(run.job.key, FAILED, run.index, "crashed",
                           f"worker exited with code {code} without a result", elapsed, log)
        if result.get("status") == SUCCESS and code == 0:
            return Outcome(run.job.key, SUCCESS, run.index, duration_s=elapsed, log=log, result=_result_value(result))
        return Outcome(run.job.key, FAILED, run.index, result.get("category", "pipeline error"),
                       result.get("reason", f"exit code {code}"), elapsed, log)

    def _promote(self, job: Job, paths: JobPaths, outcome: Outcome) -> None:
        promote(paths, paths.stage, {
            "status": SUCCESS, "key": job.key, "version": __version__, "config_hash": job.config_hash,
            "duration_s": round(outcome.duration_s, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "result": outcome.result,
        })
        paths.result.unlink(missing_ok=True)   # promoted: never an attempt for :meth:`_adopt` again
        if not self.options.keep_work:
            shutil.rmtree(paths.work, ignore_errors=True)


def _result_value(result: dict) -> dict:
    """The job function's return value from a worker's result record, with its peak memory."""
    value = dict(result.get("result") or {})
    value.setdefault("peak_rss_mb", result.get("peak_rss_mb"))
    return value


def _ignore_sigint():
    """Ignore further Ctrl-C while the running jobs are stopped (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


def _restore_sigint(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
