"""The machine description line every benchmark table starts with."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def load_average() -> str:
    """1/5/15-minute load averages, e.g. ``"0.7/1.2/2.0"`` (``"n/a"`` where unsupported)."""
    return "/".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def machine_line() -> str:
    """CPUs (and how many this process may use), CPU model, load, library versions, thread env, time."""
    import dipy
    import numpy
    import scipy

    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ}
    return (
        f"machine: {os.cpu_count()} CPUs ({usable} usable), {model}; load average {load_average()} at start; "
        f"Python {platform.python_version()}, numpy {numpy.__version__}, scipy {scipy.__version__}, "
        f"dipy {dipy.__version__}; {platform.system()} {platform.release()}; thread env {threads or 'unset'}; "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='minutes')}"
    )


def warm_array_cache() -> str:
    """Prepare the MNI template and atlas maps in the on-disk cache (what the first run on a
    machine does) so every measured subject sees the steady state; describe it for the table."""
    import time

    from csttool_nipype import array_cache
    from csttool_nipype.config import PipelineConfig
    from csttool_nipype.science import rois, templates

    start = time.perf_counter()
    templates.load_template(PipelineConfig().template_resolution_mm)
    rois._prepared_maps()
    return (f"template/atlas cache {array_cache.cache_dir()} warm ({time.perf_counter() - start:.1f} s to "
            "check or prepare here; a cold cache adds ~6 s to a machine's first subject)")


def publish(table: str, name: str) -> None:
    """Print a benchmark table and save it as ``benchmarks/results/<name>``."""
    import sys

    sys.stdout.write(table + "\n")
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / name).write_text(table + "\n")
