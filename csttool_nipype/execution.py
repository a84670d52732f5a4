"""Run a Nipype workflow with safe settings and turn node crashes into one-line reasons.

Knows nothing about diffusion: it sets where Nipype may write (work and crash
folders, never the current directory), picks the plugin (Linear, MultiProc, or
SLURM/SLURMGraph on a cluster), and, when a node fails, reads the crash files to
report the root cause in one line.

On SLURM the status of a node always comes from the pipeline's own files (Nipype's
result and crash files), never from the scheduler's accounting: a node whose Python
code raised still ends as a COMPLETED job in ``sacct``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

from .config import ExecutionConfig
from .errors import CsttoolError

LOGGER = logging.getLogger(__name__)

SLURM_PLUGINS = ("SLURM", "SLURMGraph")
PLUGINS = ("Linear", "MultiProc", *SLURM_PLUGINS)

#: Seconds between scheduling passes of the MultiProc plugin.
MULTIPROC_POLL_S = 0.05
#: Smallest memory request of a SLURM job: a Python process with Nipype and NumPy loaded,
#: before the node's own data (the per-node estimates count the data only).
MIN_JOB_MEM_GB = 1.0


class WorkflowFailed(CsttoolError):
    """A node of the workflow failed; the message is the root cause in one line."""

    def __init__(self, reason: str, crash_files: list[Path], category: str = "pipeline error"):
        self.reason = reason
        self.category = category
        self.crash_files = crash_files
        super().__init__(reason)


def configure_workflow(workflow, work_dir: Path, crash_dir: Path, stop_on_first_crash: bool = True,
                       resource_monitor: bool = False) -> None:
    """Point the workflow's caches and crash files at ``work_dir``/``crash_dir``.

    ``resource_monitor`` switches on Nipype's resource monitor (process-wide: node
    processes forked from this one inherit it); each node's result then has
    ``runtime.mem_peak_gb``.
    """
    work_dir = Path(work_dir).absolute()
    crash_dir = Path(crash_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    crash_dir.mkdir(parents=True, exist_ok=True)
    workflow.base_dir = str(work_dir)
    workflow.config["execution"].update({
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": stop_on_first_crash,
        "remove_unnecessary_outputs": False,
        # Nipype's default: a file input is hashed by size and mtime. "content" md5-read
        # ~240 node inputs per subject (3 s of a 60 s phantom subject) for nothing: every
        # file a node sees is an input (changed => new mtime) or written by an upstream node.
        "hash_method": "timestamp",
        "check_version": False,
    })
    workflow.config["monitoring"] = {"enabled": resource_monitor}
    if resource_monitor:
        from nipype import config as nipype_config

        nipype_config.enable_resource_monitor()   # needs psutil (a dependency)
        nipype_config.set("execution", "resource_monitor_frequency", "0.5")
        workflow.config["execution"]["resource_monitor_frequency"] = 0.5
    ensure_logname()


def ensure_logname() -> str:
    """Set ``LOGNAME`` when it is missing (Nipype's SLURM plugin names jobs with it)."""
    if not os.environ.get("LOGNAME"):
        try:
            import pwd

            name = pwd.getpwuid(os.getuid()).pw_name
        except (ImportError, KeyError):
            name = ""
        os.environ["LOGNAME"] = os.environ.get("USER") or name or "csttool"
    return os.environ["LOGNAME"]


def set_nipype_log_level(level: str) -> None:
    """Apply ``level`` to Nipype's workflow, interface and utils loggers."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    for key in ("workflow_level", "interface_level", "utils_level"):
        nipype_config.set("logging", key, level)
    nipype_logging.update_logging(nipype_config)


def run_workflow(workflow, work_dir: Path, crash_dir: Path, execution: ExecutionConfig | None = None,
                 stop_on_first_crash: bool = True, status_callback=None):
    """Run ``workflow``; raise :class:`WorkflowFailed` with a one-line reason on failure.

    ``execution.plugin`` is ``Linear``, ``MultiProc``, ``SLURM`` or ``SLURMGraph``. On
    SLURM every node becomes a job with ``--cpus-per-task``/``--mem`` from the node's
    own estimates (the ones MultiProc schedules with) unless the user's ``sbatch_args``
    set them; with SLURMGraph the whole graph is submitted at once and this call waits
    for its jobs. ``status_callback(node, status)`` is Nipype's: called with ``start``,
    ``end`` or ``exception`` as nodes run (not with SLURMGraph, which submits the whole
    graph at once). Returns the executed graph Nipype gives back.
    """
    execution = execution or ExecutionConfig()
    if execution.plugin not in PLUGINS:
        raise CsttoolError(f"unknown Nipype plugin {execution.plugin!r}; use one of {', '.join(PLUGINS)}")
    configure_workflow(workflow, work_dir, crash_dir, stop_on_first_crash, execution.resource_monitor)
    set_nipype_log_level(execution.nipype_log_level)
    plugin_args = dict(execution.plugin_args)
    if status_callback is not None and execution.plugin != "SLURMGraph":
        plugin_args["status_callback"] = status_callback
    if execution.plugin == "MultiProc":
        plugin_args.setdefault("n_procs", execution.nprocs)
        if execution.mem_gb:
            plugin_args.setdefault("memory_gb", execution.mem_gb)
        plugin_args.setdefault("raise_insufficient", False)
        # Nipype's scheduler sleeps poll_sleep_duration (default 2 s) between passes: with a
        # chain of ~40 nodes that is ~20 s per subject of idle cores. Local workers are cheap
        # to poll; SLURM keeps the default (every pass runs squeue).
        workflow.config["execution"]["poll_sleep_duration"] = MULTIPROC_POLL_S
    if execution.plugin in SLURM_PLUGINS:
        request_slurm_resources(workflow, plugin_args.get("sbatch_args", ""), execution.mem_gb)
    before = set(Path(crash_dir).glob("crash-*"))
    try:
        if execution.plugin == "SLURM":
            runner = _slurm_plugin(plugin_args)
            with _cancel_jobs_on_sigterm(lambda: runner.job_ids):
                try:
                    return workflow.run(plugin=runner)
                except Exception:
                    # Nipype gives up at the first crash (stop_on_first_crash) or after the
                    # rest; either way, jobs still queued or running would be orphans
                    cancel_slurm_jobs(list(runner._pending))
                    raise
        if execution.plugin == "SLURMGraph":
            return _run_slurm_graph(workflow, plugin_args, Path(crash_dir), before)
        with _frozen_heap():
            return workflow.run(plugin=execution.plugin, plugin_args=plugin_args)
    except WorkflowFailed:
        raise
    except Exception as exc:  # Nipype raises RuntimeError("Workflow did not execute cleanly...")
        crash_files = sorted(set(Path(crash_dir).glob("crash-*")) - before)
        reason, category = (crash_reason(crash_files, work_dir)
                            or (f"{type(exc).__name__}: {' '.join(str(exc).split())}", "pipeline error"))
        raise WorkflowFailed(reason, crash_files, category) from exc


@contextlib.contextmanager
def _frozen_heap():
    """Exempt the objects alive now (imported modules, the workflow) from garbage collection.

    Nipype's MultiProc scheduler runs a full ``gc.collect()`` before every submission pass
    and after every node it runs itself; with dipy, scipy and matplotlib imported (before
    the workers fork) one pass walked ~150 000 objects, 0.14-0.19 s each time: ~6 s of a
    40 s subject spent in the scheduler while cores waited. ``gc.freeze`` moves the current
    objects to a generation collections skip (they live for the whole run anyway), so the
    passes only look at what the run creates; ``gc.unfreeze`` afterwards.
    """
    import gc

    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# ---------------------------------------------------------------------------------- SLURM
def request_slurm_resources(workflow, sbatch_args: str = "", mem_cap_gb: float | None = None) -> None:
    """Give every node a ``--cpus-per-task``/``--mem`` request from its own estimates.

    The estimates are the node's ``n_procs`` and ``mem_gb`` (what MultiProc schedules
    with), the memory at least :data:`MIN_JOB_MEM_GB` and at most ``mem_cap_gb``. A
    request the user already makes in ``sbatch_args`` is left to the user, and so is a
    node that has its own ``sbatch_args``.
    """
    user = f" {sbatch_args} "
    set_mem = not re.search(r"\s--mem(-per-cpu|-per-gpu)?[=\s]", user)
    set_cpus = not re.search(r"\s(-c\s*\d|--cpus-per-task[=\s])", user)
    for node in workflow._get_all_nodes():
        if "sbatch_args" in (node.plugin_args or {}):
            continue
        extra = []
        if set_cpus:
            extra.append(f"--cpus-per-task={max(1, int(node.n_procs or 1))}")
        if set_mem:
            gb = max(MIN_JOB_MEM_GB, float(node.mem_gb or 0.0))
            if mem_cap_gb:
                gb = min(gb, float(mem_cap_gb))
            extra.append(f"--mem={math.ceil(gb * 1024)}M")
        if extra:
            # Nipype appends a node's sbatch_args to the global ones without a space
            node.plugin_args = {**(node.plugin_args or {}), "sbatch_args": " " + " ".join(extra)}


def _slurm_plugin(plugin_args: dict):
    """Nipype's SLURM plugin, logging every job id it submits (for the subject's log)."""
    from nipype.pipeline.plugins.slurm import SLURMPlugin as NipypeSLURMPlugin

    class SLURMPlugin(NipypeSLURMPlugin):  # the class name must end in "Plugin" for Nipype
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.job_ids: list[int] = []

        def _submit_batchtask(self, scriptfile, node):
            taskid = super()._submit_batchtask(scriptfile, node)
            self.job_ids.append(taskid)
            LOGGER.info("SLURM job %d submitted for node %s", taskid, node.fullname)
            return taskid

        def _get_result(self, taskid):
            # Nipype 1.11 gives a job that ended without a result file (killed by the
            # scheduler or the kernel) a str traceback, on which its crash report fails
            # with a TypeError; a list of lines is what it expects.
            out = super()._get_result(taskid)
            if out and isinstance(out.get("traceback"), str):
                out["traceback"] = out["traceback"].splitlines(keepends=True)
            return out

    return SLURMPlugin(plugin_args=plugin_args)


def cancel_slurm_jobs(job_ids) -> None:
    """``scancel`` the given jobs (finished ones are ignored by SLURM)."""
    ids = [str(j) for j in job_ids]
    if ids:
        LOGGER.warning("cancelling SLURM job(s) %s", ", ".join(ids))
        subprocess.run(["scancel", *ids], capture_output=True, check=False)


@contextlib.contextmanager
def _cancel_jobs_on_sigterm(job_ids):
    """While running, turn SIGTERM (a batch timeout) into ``scancel`` of our jobs and an exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        cancel_slurm_jobs(job_ids())
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _queued_jobs(token: str) -> dict[str, tuple[str, str]]:
    """Jobs of ours still known to ``squeue``: id -> (state, reason), ours = comment ``token``."""
    for attempt in range(5):
        proc = subprocess.run(["squeue", "-h", "--me", "-o", "%i|%k|%T|%r"],
                              capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            jobs = {}
            for line in proc.stdout.splitlines():
                parts = line.split("|", 3)
                if len(parts) == 4 and parts[1] == token:
                    jobs[parts[0]] = (parts[2], parts[3])
            return jobs
        LOGGER.warning("squeue failed (%s); retrying", proc.stderr.strip())
        time.sleep(2.0 * (attempt + 1))
    raise CsttoolError(f"squeue keeps failing: {proc.stderr.strip()}")


def _run_slurm_graph(workflow, plugin_args: dict, crash_dir: Path, before: set):
    """Submit the whole graph with SLURMGraph, wait for its jobs, check every node's result."""
    token = f"csttool-{uuid.uuid4().hex[:12]}"
    args = dict(plugin_args)
    args["sbatch_args"] = f"{args.get('sbatch_args', '')} --comment={token}".strip()
    seen: set[str] = set()
    with _cancel_jobs_on_sigterm(lambda: seen):
        graph = workflow.run(plugin="SLURMGraph", plugin_args=args)
        poll_s = float(plugin_args.get("poll_sleep_duration", 2.0))
        while True:
            queued = _queued_jobs(token)
            new = sorted(set(queued) - seen, key=int)
            if new:
                LOGGER.info("SLURM job(s) %s in the queue for workflow %s", ", ".join(new), workflow.name)
                seen.update(new)
            stuck = [j for j, (state, reason) in queued.items()
                     if state == "PENDING" and "DependencyNeverSatisfied" in reason]
            if stuck:  # a job they depend on failed: they can never start
                cancel_slurm_jobs(stuck)
            if not queued:
                break
            time.sleep(poll_s)
    crash_files = sorted(set(crash_dir.glob("crash-*")) - before)
    if crash_files:
        raise RuntimeError(f"{len(crash_files)} node(s) of {workflow.name} crashed")
    for node in graph.nodes():
        if not list(Path(node.output_dir()).glob("result_*.pklz")):
            detail = _graph_job_message(node)
            raise WorkflowFailed(f"{node.name}: its SLURM job ended without a result"
                                 + (f" ({detail})" if detail else ""), [], _category(detail))
    return graph


def _graph_job_message(node) -> str:
    """Last error line a SLURMGraph job of ``node`` left in its ``.e``/``.o`` files."""
    base = Path(node.base_dir or ".")
    pattern = f"batchscript_*{node._id}.sh.[eo]"
    for path in sorted(base.rglob(pattern), key=lambda p: p.stat().st_mtime, reverse=True):
        message = _last_error_line(path)
        if message:
            return message
    return ""


def _last_error_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if re.search(r"error|cancelled|killed|oom|memory|time limit", line, re.I):
            return line
    return ""


def _category(message: str) -> str:
    if re.search(r"out.of.memory|oom", message, re.I):
        return "out of memory"
    if re.search(r"time limit", message, re.I):
        return "timeout"
    return "pipeline error"


# ---------------------------------------------------------------------------------- crashes
_EXC_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Failed|Exit))\s*:\s*(.+)$")
_NO_RESULT = re.compile(r"Job id \((\d+)\) finished or terminated, but results file does not exist")


def crash_reason(crash_files: list[Path], work_dir: Path | None = None) -> tuple[str, str] | None:
    """(reason, category) from the last exception line of the first readable crash file.

    The reason reads ``node: ExceptionType: message``; for this package's own
    ``InputError`` the message is already ``path: problem`` and is returned as it is,
    with the category ``invalid input``. ``MemoryError`` is categorised ``out of memory``.
    A SLURM job that ended without a result (killed by the scheduler or the system) is
    reported with its job id and the scheduler's last error line from ``slurm-<id>.out``
    under ``work_dir``.
    """
    for crash in crash_files:
        try:
            text = Path(crash).read_text(errors="replace")
        except OSError:
            continue
        node = re.search(r"^Node:\s*(\S+)", text, re.M)
        where = node.group(1).split(".")[-1] if node else "workflow"
        lost = _NO_RESULT.search(text)
        if lost:
            job = lost.group(1)
            detail = ""
            if work_dir is not None:
                for out in Path(work_dir).rglob(f"slurm-{job}.out"):
                    detail = _last_error_line(out)
                    break
            return (f"{where}: SLURM job {job} ended without a result" + (f" ({detail})" if detail else ""),
                    _category(detail))
        last = None
        for line in text.splitlines():
            match = _EXC_LINE.match(line.strip())
            if match:
                last = match
        if last is None:
            continue
        kind, message = last.group(1), last.group(2).strip()
        if kind == "InputError":
            return message, "invalid input"
        category = "out of memory" if kind == "MemoryError" else "pipeline error"
        return f"{where}: {kind}: {message}", category
    return None


# ---------------------------------------------------------------------------------- graphs
def write_graphs(workflow, folder: Path, styles=("colored", "flat")) -> list[Path]:
    """Draw ``workflow`` into ``folder`` as ``workflow_<style>.{dot,png,svg}``.

    Without Graphviz's ``dot`` only the ``.dot`` files are written, and a warning says
    how to install Graphviz. Returns the files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    formats = ("png", "svg") if shutil.which("dot") else ("dot",)
    for style in styles:
        for fmt in formats:
            workflow.write_graph(dotfilename=str(folder / f"workflow_{style}.dot"), graph2use=style,
                                 format=fmt, simple_form=True)
    if formats == ("dot",):
        LOGGER.warning("Graphviz 'dot' not found: wrote the workflow graph as .dot files in %s only; for PNG/SVG "
                       "install Graphviz ('apt-get install graphviz', 'conda install graphviz' or "
                       "'brew install graphviz') and rerun with --write-graph, or run "
                       "'dot -Tsvg -O %s/workflow_colored.dot'", folder, folder)
    return sorted(p for p in folder.iterdir() if p.name.startswith("workflow_"))


# ---------------------------------------------------------------------------------- node records
def node_runtimes(graph) -> dict:
    """``runtime`` of every executed (or cached) node of an executed Nipype graph, by full name.

    Each node's result file is read once here (Nipype's ``node.result`` reads it on every
    access); nodes without a stored result are left out.
    """
    out = {}
    for node in graph.nodes():
        try:
            out[node.fullname] = node.result.runtime
        except Exception:  # noqa: BLE001 - a node without a stored result has no runtime
            continue
    return out


def node_peak_memory(runtimes: dict) -> dict[str, float]:
    """Peak memory (GB) of every node whose runtime has one (see :class:`~csttool_nipype.interfaces.base.StageInterface`)."""
    out = {}
    for name, runtime in runtimes.items():
        value = getattr(runtime, "mem_peak_gb", None)
        if value is not None:
            out[name] = float(value)
    return out


def node_intervals(runtimes: dict) -> list[tuple[float, float]]:
    """(start, end) in POSIX seconds of every node with recorded times."""
    from datetime import datetime

    out = []
    for runtime in runtimes.values():
        try:
            out.append((datetime.fromisoformat(runtime.startTime).timestamp(),
                        datetime.fromisoformat(runtime.endTime).timestamp()))
        except (AttributeError, TypeError, ValueError):  # a cached node has no times
            continue
    return out


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Seconds during which at least one interval is open (the union's length).

    The part of a subject's wall time spent inside nodes; the rest is process start,
    the workflow's construction, Nipype's engine between nodes and the report.
    """
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def node_durations(runtimes: dict) -> dict[str, float]:
    """Wall time (s) of every node in ``runtimes`` (cached nodes: 0)."""
    return {name: float(getattr(runtime, "duration", 0.0) or 0.0) for name, runtime in runtimes.items()}
