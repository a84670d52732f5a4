"""BIDS conventions of csttool-nipype: finding DWI runs in a raw dataset, describing the derivatives.

Discovery indexes the dataset with pybids (``BIDSLayout``), so it follows pybids' layout
rules: ``derivatives/``, ``code/``, ``sourcedata/``, ``models/``, ``stimuli/`` and dot files
are not indexed, nor are the patterns of the dataset's ``.bidsignore``; the b-values,
b-vectors and JSON sidecars of a run are found by the BIDS inheritance principle (the
nearest applicable file, from the run's folder up to the dataset root; JSON sidecars of
every level merged, the nearer one winning). The files found go into each subject's
:class:`~csttool_nipype.subjects.SubjectSpec` explicitly, so a plan (``--dry-run``)
and the run read the same files.

The index can be kept in a folder (``--bids-database-dir``, as in the NiPreps tools) and is
reused while the dataset's top-level entries, its ``.bidsignore`` and the indexer settings
are unchanged.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
from collections import defaultdict
from pathlib import Path

from .derivatives import OUTPUTS
from .errors import InputError
from .reports.methods import METHODS_FILE
from .subjects import SubjectSpec

LOGGER = logging.getLogger(__name__)

#: Extensions of a DWI series.
DWI_EXTENSIONS = (".nii.gz", ".nii")
#: Sidecar kinds of a DWI series: ``SubjectSpec.inputs`` key -> extensions, preferred first
#: (``.bvals``/``.bvecs``: dcm2niix-style names the importer also reads).
SIDECAR_EXTENSIONS = {"bval": (".bval", ".bvals"), "bvec": (".bvec", ".bvecs"), "json": (".json",)}
#: Datatype folders discovery never needs; not indexing them keeps large datasets fast.
UNUSED_DATATYPES = ("anat", "func", "fmap", "perf", "beh", "eeg", "ieeg", "meg", "pet", "micr", "nirs", "motion",
                    "mrs")
#: pybids indexer settings. No validation (BIDS-like trees without ``dataset_description.json``
#: work; the BIDS App checks the description itself) and no metadata indexing (sidecars are
#: found from the file names, below): either would make indexing, most of the planning time,
#: slower (``benchmarks/results/batch_planning.txt``).
INDEXER_SETTINGS = {"validate": False, "index_metadata": False}
#: pybids' database file inside a ``--bids-database-dir`` and our record of what it indexes.
DATABASE_FILE, DATABASE_RECORD = "layout_index.sqlite", "csttool_index.json"
_NON_ENTITIES = ("suffix", "extension")


def bidsignore_patterns(bids_dir) -> list[re.Pattern]:
    """The ``.bidsignore`` of ``bids_dir`` as regular expressions on pybids' ``/relative/path`` strings.

    Lines follow the gitignore syntax the BIDS validator reads: ``#`` comments, ``*``
    and ``?`` within one path component, ``**`` across components, a leading or inner
    ``/`` anchors at the dataset root, a trailing ``/`` names a folder (and everything
    below it). Negated lines (``!``) are not supported and are skipped with a warning.
    """
    path = Path(bids_dir) / ".bidsignore"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not readable ({exc})") from None
    patterns = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            LOGGER.warning("%s: negated pattern %r is not supported; ignored", path, line)
            continue
        patterns.append(_gitignore_regex(line))
    return patterns


def _gitignore_regex(pattern: str) -> re.Pattern:
    anchored = "/" in pattern.rstrip("/")
    body, out, i = pattern.strip("/"), [], 0
    while i < len(body):
        if body.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif body.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(body[i], re.escape(body[i])))
            i += 1
    return re.compile(("^/" if anchored else "(?:^|/)") + "".join(out) + "(?:/|$)")


def _indexer(bids_dir: Path, subjects=None):
    """pybids indexer: pybids' default exclusions, unused datatypes, ``.bidsignore``, unselected subjects."""
    from bids import BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    ignore = [*DEFAULT_LOCATIONS_TO_IGNORE, *bidsignore_patterns(bids_dir),
              re.compile(r"^/sub-[^/]+/(?:ses-[^/]+/)?(?:%s)(?:/|$)" % "|".join(UNUSED_DATATYPES))]
    if subjects:
        ignore.append(re.compile(r"^/sub-(?!(?:%s)(?:/|$))" % "|".join(re.escape(s) for s in subjects)))
    return BIDSLayoutIndexer(ignore=ignore, **INDEXER_SETTINGS)


def _database_record(bids_dir: Path, database_dir: Path) -> dict:
    """What an index depends on: the dataset root, its top-level entries (a subject added or
    removed), its ``.bidsignore``, pybids' version and our indexer settings."""
    import bids

    entries = sorted(name for name in os.listdir(bids_dir)
                     if not name.startswith(".") and bids_dir / name != database_dir)
    try:
        ignore = (bids_dir / ".bidsignore").read_bytes()
    except OSError:
        ignore = b""
    digest = hashlib.sha256("\n".join(entries).encode() + b"\0" + ignore).hexdigest()
    return {"root": str(bids_dir), "pybids": bids.__version__, "indexer": {**INDEXER_SETTINGS,
            "unused_datatypes": list(UNUSED_DATATYPES)}, "dataset": digest}


def load_layout(bids_dir, database_dir=None, subjects=None):
    """A pybids ``BIDSLayout`` of ``bids_dir`` (see the module docstring for what is indexed).

    Parameters
    ----------
    bids_dir : path-like
        Dataset root.
    database_dir : path-like, optional
        Folder that keeps the index (pybids' ``database_path``): reused when it indexes this
        dataset as it is now, rebuilt when the dataset's top-level entries, ``.bidsignore``,
        pybids' version or the indexer settings changed (files changed inside a subject's
        folder are not noticed: delete the folder then). A folder holding another dataset's
        index, or an index csttool did not write, is refused.
    subjects : list of str, optional
        Labels (without ``sub-``) to index; only without ``database_dir`` (a kept index
        holds every subject).
    """
    from bids import BIDSLayout

    bids_dir = Path(bids_dir).absolute()
    if database_dir is None:
        return BIDSLayout(bids_dir, validate=False, indexer=_indexer(bids_dir, subjects))
    database_dir = Path(database_dir).absolute()
    record = _database_record(bids_dir, database_dir)
    if (database_dir / DATABASE_FILE).exists():
        try:
            saved = json.loads((database_dir / DATABASE_RECORD).read_text())
        except (OSError, ValueError):
            raise InputError(database_dir, "holds a pybids index that csttool did not write; "
                                           "give an empty or new folder") from None
        if saved.get("root") != record["root"]:
            raise InputError(database_dir, f"holds the index of {saved.get('root')}, not of {bids_dir}; "
                                           "give each dataset a folder of its own")
        if saved == record:
            try:
                return BIDSLayout(bids_dir, validate=False, database_path=database_dir)
            except Exception as exc:  # noqa: BLE001 - sqlite/sqlalchemy errors of a damaged file
                raise InputError(database_dir / DATABASE_FILE, f"not a readable pybids index ({exc}); "
                                                               "delete the folder to rebuild it") from None
        LOGGER.info("%s: the dataset or the indexer settings changed; indexing again", database_dir)
    return _build_database(bids_dir, database_dir, record)


def _build_database(bids_dir: Path, database_dir: Path, record: dict):
    """Index in memory, save into a private folder, then move the file in (concurrent runs
    never see half an index); returns the in-memory layout."""
    from bids import BIDSLayout

    layout = BIDSLayout(bids_dir, validate=False, indexer=_indexer(bids_dir))
    build = database_dir / f".build-{socket.gethostname()}-{os.getpid()}"   # a cluster shares the folder
    try:
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        layout.save(build, replace_connection=False)
        os.replace(build / DATABASE_FILE, database_dir / DATABASE_FILE)
        _write_atomic(database_dir / DATABASE_RECORD, json.dumps(record, indent=2) + "\n")
    except (OSError, sqlite3.Error) as exc:   # unwritable, full
        reason = getattr(exc, "strerror", None) or exc
        raise InputError(database_dir, f"cannot write the BIDS index there ({reason})") from None
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return layout


def discover_bids(bids_dir, participant_label=None, session_label=None, include=None, exclude=None,
                  bids_filters: dict | None = None, database_dir=None) -> list[SubjectSpec]:
    """Every (subject, session) with a DWI run in a BIDS or BIDS-like folder, with its sidecars.

    Parameters
    ----------
    bids_dir : path-like
        Dataset root (a ``dataset_description.json`` is not required).
    participant_label, session_label : list of str, optional
        Labels with or without ``sub-``/``ses-``.
    include, exclude : list of str, optional
        Shell globs on ``sub-<label>``.
    bids_filters : dict, optional
        pybids entity names (``acquisition``, ``run``, ...) to a value or list of values
        (``None``: entity absent) for the DWI query, as in a NiPreps ``--bids-filter-file``.
    database_dir : path-like, optional
        Keep and reuse the index there (:func:`load_layout`).

    Returns
    -------
    list of SubjectSpec
        ``inputs``: ``nifti``, ``bval``, ``bvec`` and, when any applies, ``json`` (one path,
        or a list from the dataset root down when several levels apply; merged in that
        order). A run without b-values or b-vectors, or with two equally specific ones,
        is returned with ``error`` set. Several DWI runs of one subject/session: the first
        in sorted path order is used, and a warning names it.
    """
    bids_dir = Path(bids_dir).absolute()
    if not bids_dir.is_dir():
        raise InputError(bids_dir, "BIDS folder not found")
    labels = [str(p).removeprefix("sub-") for p in participant_label or []]
    layout = load_layout(bids_dir, database_dir, None if database_dir else labels)
    query = {"suffix": "dwi", "datatype": "dwi", "extension": list(DWI_EXTENSIONS), **(bids_filters or {})}
    if labels:
        query["subject"] = labels
    if session_label:
        query["session"] = [str(s).removeprefix("ses-") for s in session_label]
    query = _checked_query(layout, query)
    runs = sorted(layout.get(return_type="filename", **query)) if query is not None else []
    files = _dwi_files(layout)
    chosen: dict[str, list[str]] = {}
    for path in runs:
        entities = files.get(path, {})
        if not entities.get("subject"):
            continue
        subject = f"sub-{entities['subject']}"
        if include and not any(fnmatch.fnmatchcase(subject, g) for g in include):
            continue
        if exclude and any(fnmatch.fnmatchcase(subject, g) for g in exclude):
            continue
        key = subject + (f"/ses-{entities['session']}" if entities.get("session") else "")
        chosen.setdefault(key, []).append(path)
    sidecars = _by_folder(files)
    specs = []
    for key, paths in chosen.items():
        if len(paths) > 1:
            LOGGER.warning("%s: %d DWI runs (%s); using %s, the first in sorted order (choose another with "
                           '--bids-filter-file, e.g. {"dwi": {"run": 2}})', key, len(paths),
                           ", ".join(Path(p).name for p in paths), Path(paths[0]).name)
        subject, _, session = key.partition("/")
        spec = SubjectSpec(subject, session or None, inputs={"nifti": paths[0]})
        _add_sidecars(spec, files[paths[0]], sidecars, bids_dir)
        specs.append(spec)
    return specs


def _checked_query(layout, query: dict) -> dict | None:
    """``query`` for ``layout.get``, or None when no file can match it.

    Each key must be a pybids entity and each value a label, a number, None (entity
    absent) or a list of those: anything else is an :class:`InputError`. An entity no file
    of this dataset has matches nothing (pybids would refuse it), or everything for None.
    """
    from bids.layout.models import Tag

    known = {name for config in layout.config.values() for name in config.entities}
    present = {name for (name,) in layout.session.query(Tag.entity_name).filter(Tag.is_metadata.is_(False)).distinct()}
    out = {}
    for name, want in query.items():
        wants = want if isinstance(want, (list, tuple)) else [want]
        if name not in known:
            raise InputError(None, f"BIDS filter: unknown entity {name!r} (pybids' entities: {', '.join(sorted(known))})")
        if not all(w is None or isinstance(w, (str, int, float)) for w in wants):
            raise InputError(None, f"BIDS filter: {name}: {want!r} is not a label, a number, null or a list of those")
        if name in present:
            out[name] = want
        elif None not in wants:
            return None
    return out


def _dwi_files(layout) -> dict[str, dict[str, str]]:
    """Path -> entities (label strings, as indexed) of every indexed file with the ``dwi`` suffix.

    One query for the whole dataset (``BIDSFile.entities`` costs a query per file).
    """
    from bids.layout.models import Tag

    session = layout.session
    dwi = session.query(Tag.file_path).filter(Tag.entity_name == "suffix", Tag._value == "dwi")
    files: dict[str, dict[str, str]] = defaultdict(dict)
    rows = (session.query(Tag.file_path, Tag.entity_name, Tag._value)
            .filter(Tag.file_path.in_(dwi.scalar_subquery()), Tag.is_metadata.is_(False)))
    for path, name, value in rows:
        files[path][name] = value
    return files


def _by_folder(files: dict) -> dict:
    """(folder, sidecar kind) -> [(path, entities without suffix/extension)]."""
    kinds = {ext: kind for kind, exts in SIDECAR_EXTENSIONS.items() for ext in exts}
    out = defaultdict(list)
    for path, entities in files.items():
        kind = kinds.get(entities.get("extension"))
        if kind:
            out[(os.path.dirname(path), kind)].append((path, _entities(entities)))
    return out


def _entities(entities: dict) -> dict:
    return {k: v for k, v in entities.items() if k not in _NON_ENTITIES}


def _applicable(candidates, entities: dict) -> list[tuple[str, dict]]:
    """Candidates whose entities are a subset of the run's, with the same values (the BIDS rule)."""
    return [(p, e) for p, e in candidates if all(entities.get(k) == v for k, v in e.items())]


def _add_sidecars(spec: SubjectSpec, run_entities: dict, sidecars: dict, root: Path) -> None:
    """Fill ``spec.inputs`` with the run's inherited bval, bvec and JSON files (or set ``spec.error``)."""
    nifti = spec.inputs["nifti"]
    entities = _entities(run_entities)
    folders, folder = [], Path(nifti).parent
    while True:   # the run's folder up to the dataset root
        folders.append(str(folder))
        if folder == root or folder == folder.parent:
            break
        folder = folder.parent
    for kind, exts in SIDECAR_EXTENSIONS.items():
        found = []   # one file per level, nearest level first
        for level in folders:
            matches = _applicable(sidecars.get((level, kind), ()), entities)
            if not matches:
                continue
            most = max(len(e) for _, e in matches)
            best = [p for p, e in matches if len(e) == most]
            best.sort(key=lambda p: next(i for i, ext in enumerate(exts) if p.endswith(ext)))
            if len(best) > 1 and best[0].endswith(exts[0]) == best[1].endswith(exts[0]):
                spec.error = f"{nifti}: ambiguous {kind} files {Path(best[0]).name} and {Path(best[1]).name} " \
                             f"in {level} both apply (BIDS inheritance allows one per level)"
                return
            found.append(best[0])
            if kind != "json":
                break
        if kind == "json":
            if found:
                spec.inputs["json"] = found[0] if len(found) == 1 else found[::-1]
        elif not found:
            spec.error = (f"{nifti}: no {kind} file ({exts[0]}) next to it or in a parent folder "
                          "(BIDS inheritance)")
            return
        else:
            spec.inputs[kind] = found[0]
    missing = [p for p in _paths(spec.inputs) if not os.path.isfile(p)]
    if missing:   # a kept index that no longer matches the files
        spec.error = f"{missing[0]}: indexed but no longer there (delete the --bids-database-dir folder to re-index)"


def _paths(inputs: dict) -> list[str]:
    out = []
    for value in inputs.values():
        out.extend(value if isinstance(value, list) else [value])
    return out


def merged_sidecar(paths, destination) -> str:
    """Merge JSON sidecars (dataset root first, nearest last: later keys win) into ``destination``.

    Writes only when the content changes, so a resumed run keeps its Nipype cache.
    Returns ``destination`` as a string.
    """
    merged = {}
    for path in paths:
        try:
            content = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(path, "does not exist") from None
        except (OSError, ValueError) as exc:
            raise InputError(path, f"not a valid JSON sidecar ({exc})") from None
        if not isinstance(content, dict):
            raise InputError(path, "JSON sidecar must hold an object ({...})")
        merged.update(content)
    destination = Path(destination)
    text = json.dumps(merged, indent=2, sort_keys=True) + "\n"
    if not destination.is_file() or destination.read_text() != text:
        destination.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(destination, text)
    return str(destination)


#: Code location recorded in ``GeneratedBy``.
CODE_URL = "https://github.com/csttool/csttool-nipype"

#: What a BIDS validator should ignore in the derivatives folder: the batch engine's
#: bookkeeping (locks, done markers, logs, work folders), the cohort tables and reports
#: (``batch_*``, ``*_report.html``) and the workflow graphs.
BIDSIGNORE = [
    "batch_*", ".csttool.lock", "_work/", "**/_work/", "**/.lock", "**/_done.json", "**/logs/",
    f"**/{OUTPUTS['report'].pattern}", "**/figures/workflow_*",
    f"**/{OUTPUTS['registration'].folder}/{OUTPUTS['registration'].suffix}/", METHODS_FILE,
]


def write_dataset_description(output_dir, source_dir=None) -> Path:
    """Make ``output_dir`` a BIDS-derivatives dataset: ``dataset_description.json`` and ``.bidsignore``.

    The description (``DatasetType: derivative``, ``GeneratedBy`` name/version/code URL,
    and ``SourceDatasets`` when ``source_dir`` is given) is written once, atomically, so
    several participant-level runs may start into the same folder at the same moment.
    ``.bidsignore`` gets every :data:`BIDSIGNORE` pattern it lacks.
    """
    from . import __version__

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "dataset_description.json"
    if not path.exists():
        description = {
            "Name": "csttool-nipype derivatives",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "csttool-nipype", "Version": __version__, "CodeURL": CODE_URL}],
        }
        if source_dir is not None:
            description["SourceDatasets"] = [{"URL": Path(source_dir).absolute().as_uri()}]
        _write_atomic(path, json.dumps(description, indent=2) + "\n", exclusive=True)
    ignore = out / ".bidsignore"
    try:
        present = ignore.read_text().splitlines()
    except OSError:
        present = []
    missing = [p for p in BIDSIGNORE if p not in present]
    if missing:
        header = [] if present else ["# csttool-nipype bookkeeping and non-BIDS files"]
        _write_atomic(ignore, "\n".join([*present, *header, *missing]) + "\n")
    return path


def _write_atomic(path, text: str, exclusive: bool = False) -> None:
    """Write ``text`` to ``path`` via a temporary file; ``exclusive``: keep an existing file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    if exclusive:
        try:
            os.link(tmp, path)   # fails if another process made it first
        except FileExistsError:
            pass
        except OSError:          # a filesystem without hard links: last writer wins, still whole
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        os.replace(tmp, path)
