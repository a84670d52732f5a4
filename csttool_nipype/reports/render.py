"""Jinja2 rendering shared by the reports: autoescaping on for every template."""

from __future__ import annotations

import logging
import math
import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

TEMPLATES = Path(__file__).with_name("templates")


@lru_cache(maxsize=1)
def environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = format_number
    env.filters["href"] = href
    return env


def render(template: str, path: Path, **context) -> Path:
    """Render ``template`` into ``path`` (written atomically) and return ``path``."""
    html = environment().get_template(template).render(**context)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path


def read_json(path) -> dict:
    """A JSON object from ``path``; ``{}`` when it is missing, unreadable or not an object."""
    import json

    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def to_float(value) -> float:
    """``value`` as a float; NaN for empty or non-numeric cells."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def format_number(value, digits: int = 3) -> str:
    """Compact display of a number (``–`` when missing); integers stay integers."""
    x = to_float(value)
    if not math.isfinite(x):
        return "–"
    if x == int(x) and abs(x) >= 1:
        return f"{int(x)}"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.0f}"


def href(relative_path) -> str:
    """A relative file path as a URL path (percent-encoded, slashes kept)."""
    return quote(str(relative_path).replace(os.sep, "/"), safe="/")


def figure_entry(title: str, caption: str, draw, logger: logging.Logger | None = None) -> dict:
    """``{"title", "caption", "uri", "error"}`` for a template; ``draw()`` returns the image URI.

    A figure that fails is logged and shown as "not drawn: <reason>": one figure must
    not sink a report.
    """
    try:
        return {"title": title, "caption": caption, "uri": draw(), "error": ""}
    except Exception as exc:  # noqa: BLE001 - see the docstring
        (logger or logging.getLogger(__name__)).warning("figure %r not drawn: %s: %s", title,
                                                        type(exc).__name__, exc)
        return {"title": title, "caption": caption, "uri": "", "error": f"not drawn: {type(exc).__name__}: {exc}"}

