"""Subject lists for a batch: :class:`SubjectSpec` and the JSON manifest.

A :class:`SubjectSpec` says where a subject's raw data is (its DWI files) and which options
apply to it; invalid entries are kept, with the reason, so they can be reported as FAILED
(invalid input) next to the subjects that ran. Subjects of a BIDS folder come from
:func:`csttool_nipype.bids.discover_bids`. The batch engine (:mod:`csttool_nipype.batch`)
never sees them: :func:`csttool_nipype.subject_job.make_jobs` turns them into its jobs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .batch.jobs import SAFE_KEY
from .derivatives import prefixed
from .errors import InputError

#: Keys a manifest subject entry may have.
SUBJECT_KEYS = {"id", "nifti", "dicom", "bval", "bvec", "json", "session", "series", "options"}
MANIFEST_KEYS = {"global_options", "subjects"}
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


@dataclass
class SubjectSpec:
    """One subject (and session) of a batch.

    Attributes
    ----------
    subject : str
        ``sub-<label>`` (the manifest's ``id``; ``sub-`` is added when missing).
    session : str or None
        ``ses-<label>`` or None.
    inputs : dict
        Raw data: ``nifti`` (+ ``bval``/``bvec``/``json``) or ``dicom`` (+ ``series``); absolute paths.
    options : dict
        Per-subject option overrides.
    error : str or None
        Why the entry cannot run (it is then reported FAILED, invalid input).
    """

    subject: str
    session: str | None = None
    inputs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def key(self) -> str:
        return self.subject if not self.session else f"{self.subject}/{self.session}"


def load_manifest(path) -> tuple[dict, list[SubjectSpec]]:
    """Read and validate a manifest; returns (global_options, subjects).

    Structural problems of the file itself (not JSON, no ``subjects`` list, unknown
    top-level keys) raise :class:`InputError`. Problems of one entry (unknown keys,
    duplicate or unsafe ids, missing files, neither/both of ``nifti`` and ``dicom``)
    are recorded in that entry's ``error`` and never stop the others.
    Relative paths are relative to the manifest's folder.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "manifest not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable JSON manifest ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("subjects"), list):
        raise InputError(path, 'manifest must be an object with a "subjects" list')
    unknown = sorted(set(doc) - MANIFEST_KEYS)
    if unknown:
        raise InputError(path, f"unknown top-level key(s) {', '.join(unknown)}; allowed: global_options, subjects")
    global_options = doc.get("global_options") or {}
    if not isinstance(global_options, dict):
        raise InputError(path, '"global_options" must be an object')
    base = path.parent.absolute()
    specs, seen = [], {}
    for i, entry in enumerate(doc["subjects"], start=1):
        specs.append(_manifest_entry(entry, i, base, seen))
    return global_options, specs


def _manifest_entry(entry, index: int, base: Path, seen: dict) -> SubjectSpec:
    where = f"subjects[{index}]"
    if not isinstance(entry, dict):
        return SubjectSpec(f"sub-entry{index}", error=f"{where}: must be an object")
    raw_id = str(entry.get("id", "")).strip()
    subject = prefixed(raw_id, "sub-") if raw_id else f"sub-entry{index}"
    session = prefixed(entry["session"], "ses-") if entry.get("session") not in (None, "") else None
    spec = SubjectSpec(subject, session, options=entry.get("options") or {})
    label = f"{where} ({raw_id or 'no id'})"

    def fail(problem):
        spec.error = f"{label}: {problem}"
        return spec

    if not raw_id:
        return fail('missing "id"')
    if not SAFE_KEY.match(subject) or (session and not SAFE_KEY.match(session)):
        spec.subject, spec.session = f"entry#{index}", None   # never a path: the engine builds none from it
        return fail("id/session must be letters, digits, '-' or '_' (a safe folder name)")
    if spec.key in seen:
        return fail(f"duplicate id {spec.key}: duplicate of entry {seen[spec.key]} (subjects[{seen[spec.key]}])")
    seen[spec.key] = index
    unknown = sorted(set(entry) - SUBJECT_KEYS)
    if unknown:
        return fail(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(SUBJECT_KEYS))}")
    if not isinstance(spec.options, dict):
        return fail('"options" must be an object')
    if ("nifti" in entry) == ("dicom" in entry):
        return fail('give exactly one of "nifti" or "dicom"')
    for key in ("nifti", "dicom", "bval", "bvec", "json"):
        if key in entry:
            p = Path(str(entry[key])).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.exists():
                return fail(f"{key} path {p} does not exist")
            spec.inputs[key] = str(p)
    if entry.get("series") is not None:
        spec.inputs["series"] = str(entry["series"])
    return spec
