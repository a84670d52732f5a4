"""Run a Nipype workflow with safe settings and turn node crashes into one-line reasons.

Knows nothing about diffusion: it sets where Nipype may write (work and crash
folders, never the current directory), picks the plugin, and, when a node fails,
reads the crash files to report the root cause in one line.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .config import ExecutionConfig
from .errors import CsttoolError

LOGGER = logging.getLogger(__name__)


class WorkflowFailed(CsttoolError):
    """A node of the workflow failed; the message is the root cause in one line."""

    def __init__(self, reason: str, crash_files: list[Path], category: str = "pipeline error"):
        self.reason = reason
        self.category = category
        self.crash_files = crash_files
        super().__init__(reason)


def configure_workflow(workflow, work_dir: Path, crash_dir: Path, stop_on_first_crash: bool = True) -> None:
    """Point the workflow's caches and crash files at ``work_dir``/``crash_dir``."""
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
        "hash_method": "content",
        "check_version": False,
    })
    workflow.config["monitoring"] = {"enabled": False}
    # Nipype's SLURM plugin (and getpass) need LOGNAME; containers often lack it.
    os.environ.setdefault("LOGNAME", os.environ.get("USER", "csttool"))


def set_nipype_log_level(level: str) -> None:
    """Apply ``level`` to Nipype's workflow, interface and utils loggers."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    for key in ("workflow_level", "interface_level", "utils_level"):
        nipype_config.set("logging", key, level)
    nipype_logging.update_logging(nipype_config)


def run_workflow(workflow, work_dir: Path, crash_dir: Path, execution: ExecutionConfig | None = None):
    """Run ``workflow``; raise :class:`WorkflowFailed` with a one-line reason on failure.

    Returns the executed graph Nipype gives back.
    """
    execution = execution or ExecutionConfig()
    configure_workflow(workflow, work_dir, crash_dir)
    set_nipype_log_level(execution.nipype_log_level)
    plugin_args = dict(execution.plugin_args)
    if execution.plugin == "MultiProc":
        plugin_args.setdefault("n_procs", execution.nprocs)
        if execution.mem_gb:
            plugin_args.setdefault("memory_gb", execution.mem_gb)
        plugin_args.setdefault("raise_insufficient", False)
    before = set(Path(crash_dir).glob("crash-*"))
    try:
        return workflow.run(plugin=execution.plugin, plugin_args=plugin_args)
    except Exception as exc:  # Nipype raises RuntimeError("Workflow did not execute cleanly...")
        crash_files = sorted(set(Path(crash_dir).glob("crash-*")) - before)
        reason, category = crash_reason(crash_files) or (f"{type(exc).__name__}: {exc}", "pipeline error")
        raise WorkflowFailed(reason, crash_files, category) from exc


_EXC_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Failed|Exit))\s*:\s*(.+)$")


def crash_reason(crash_files: list[Path]) -> tuple[str, str] | None:
    """(reason, category) from the last exception line of the first readable crash file.

    The reason reads ``node: ExceptionType: message``; for this package's own
    ``InputError`` the message is already ``path: problem`` and is returned as it is,
    with the category ``invalid input``. ``MemoryError`` is categorised ``out of memory``.
    """
    for crash in crash_files:
        try:
            text = Path(crash).read_text(errors="replace")
        except OSError:
            continue
        node = re.search(r"^Node:\s*(\S+)", text, re.M)
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
        where = node.group(1).split(".")[-1] if node else "workflow"
        category = "out of memory" if kind == "MemoryError" else "pipeline error"
        return f"{where}: {kind}: {message}", category
    return None
