"""How a cohort runs, one definition for ``csttool batch`` and the BIDS-App: ``--plugin``,
``--plugin-args``, ``--nprocs`` and ``--subjects-at-once``.

``--nprocs`` is the CPUs the whole command may use, as in ``csttool run``: subjects run side by
side (``--subjects-at-once``, default as many as the CPUs allow) and share them. With a SLURM
plugin the nodes run as SLURM jobs with their own CPUs: ``--nprocs`` does not apply there, and
``--subjects-at-once`` is how many subjects this command drives at once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..config import available_cpus
from ..errors import InputError
from ..execution import PLUGINS, SLURM_PLUGINS
from .options import positive_int

#: Subjects driven at once with a SLURM plugin when --subjects-at-once is not given (each is a
#: light local process that submits its nodes as jobs and polls the queue).
SLURM_SUBJECTS_AT_ONCE = 8


def add_plugin_options(group) -> None:
    """Add ``--plugin {Linear,MultiProc,SLURM,SLURMGraph}`` and ``--plugin-args JSON|FILE`` to ``group``."""
    group.add_argument("--plugin", choices=PLUGINS, default=None,
                       help="Nipype plugin for each subject's workflow (default: Linear, or MultiProc when a "
                            "subject has several CPUs). SLURM/SLURMGraph submit every node as a job")
    group.add_argument("--plugin-args", "--plugin_args", dest="plugin_args", metavar="JSON|FILE",
                       help='plugin arguments as JSON or a JSON file, e.g. \'{"sbatch_args": "-p short '
                            '--time=2:00:00"}\' (a file may also hold {"plugin": ..., "plugin_args": {...}})')


def read_plugin_args(value: str | None) -> tuple[str | None, dict]:
    """(plugin or None, plugin_args) from a JSON text or a JSON file."""
    if not value:
        return None, {}
    path = Path(value)
    text = value
    if path.is_file():
        text = path.read_text()
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InputError(value if path.is_file() else "--plugin-args",
                         f"not a JSON object or a JSON file ({exc})") from None
    if not isinstance(obj, dict):
        raise InputError("--plugin-args", "must be a JSON object")
    if "plugin_args" in obj or "plugin" in obj:
        plugin = obj.get("plugin")
        if plugin is not None and plugin not in PLUGINS:
            raise InputError(value, f"plugin {plugin!r} is not one of {', '.join(PLUGINS)}")
        if not isinstance(obj.get("plugin_args") or {}, dict):
            raise InputError(value, "plugin_args must be a JSON object")
        return plugin, dict(obj.get("plugin_args") or {})
    return None, obj


def plugin_from_args(args) -> tuple[str | None, dict]:
    """The plugin (``--plugin``, else the one a ``--plugin-args`` file names) and its arguments.

    Raises :class:`~csttool_nipype.errors.InputError` for unreadable arguments and for a
    SLURM plugin without ``sbatch`` on PATH; sets ``LOGNAME`` for SLURM when it is missing.
    """
    from ..execution import ensure_logname

    file_plugin, plugin_args = read_plugin_args(args.plugin_args)
    plugin = args.plugin or file_plugin
    if plugin in SLURM_PLUGINS:
        if not shutil.which("sbatch"):
            raise InputError(None, f"--plugin {plugin} needs SLURM's sbatch on PATH")
        ensure_logname()
    return plugin, plugin_args


def add_cpu_options(group, *aliases: str) -> None:
    """Add ``--nprocs`` (and ``aliases``) and ``--subjects-at-once`` to ``group``."""
    group.add_argument("--nprocs", *aliases, dest="nprocs", type=positive_int, default=None, metavar="N",
                       help="CPUs for the whole command: the subjects running at once share them, a subject with "
                            "several runs its nodes with Nipype MultiProc and multithreaded steps (default: every CPU "
                            "this process may use). Not with a SLURM plugin, whose nodes are jobs with their own "
                            "CPUs")
    group.add_argument("--subjects-at-once", "--subjects_at_once", dest="subjects_at_once", type=positive_int,
                       default=None, metavar="K",
                       help="subjects processed side by side, each on --nprocs // K CPUs (default: as many as "
                            "--nprocs allows, at most one per subject; with a SLURM plugin: the subjects driven "
                            f"at once, default all selected, at most {SLURM_SUBJECTS_AT_ONCE})")


def cpus_from_args(args, plugin: str | None, n_subjects: int) -> tuple[int, int | None]:
    """(CPUs, subjects at once or None for the default) of a cohort, from ``--nprocs``/``--subjects-at-once``.

    Locally, ``--nprocs`` defaults to every CPU this process may use (as in ``csttool run``; at
    least one per subject at once), and fewer CPUs than subjects at once is a usage error. With a SLURM plugin ``--nprocs`` is a usage error (the nodes'
    CPUs are the jobs' own) and each subject's driver gets one CPU.

    Raises :class:`~csttool_nipype.errors.InputError` (exit code 2) for those usage errors.
    """
    at_once = args.subjects_at_once
    if plugin in SLURM_PLUGINS:
        if args.nprocs is not None:
            raise InputError(None, f"--nprocs counts this machine's CPUs and does not apply with --plugin {plugin}, "
                                   "where every node is a SLURM job with its own CPUs; --subjects-at-once K sets how "
                                   f"many subjects are driven at once (default: at most {SLURM_SUBJECTS_AT_ONCE})")
        at_once = at_once or max(1, min(n_subjects, SLURM_SUBJECTS_AT_ONCE))
        return at_once, at_once
    nprocs = args.nprocs or max(at_once or 1, available_cpus())
    if at_once and at_once > nprocs:
        raise InputError(None, f"--subjects-at-once {at_once} needs at least one CPU per subject: --nprocs {at_once} "
                               f"or more (it is {nprocs})")
    return nprocs, at_once
