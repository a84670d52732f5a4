"""JSON conversion of the values the pipeline records (NumPy scalars and arrays, paths)."""

from __future__ import annotations

from os import PathLike

import numpy as np


def jsonable(obj):
    """``obj`` with NumPy scalars and arrays turned into Python numbers and lists, paths into
    strings and mapping keys into strings, recursively (what ``json.dumps`` accepts)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PathLike):
        return str(obj)
    return obj
