"""``--plugin`` and ``--plugin-args``: one definition for ``csttool batch`` and the BIDS-App."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import InputError
from ..execution import PLUGINS, SLURM_PLUGINS


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
