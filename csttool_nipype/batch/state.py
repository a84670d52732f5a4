"""Per-job state on disk: layout, lock, done marker, atomic promotion.

Layout of one job ``OUT/<key>/``::

    .lock            held (flock) while a batch processes the job
    _work/nipype/    the job's Nipype cache, kept across attempts (resume from cached nodes)
    _work/stage/     outputs of the current attempt, before promotion
    _work/progress   what the running job is doing now (one line, any text; for the live display)
    logs/<key>.log   every attempt's log lines; logs/crash/ Nipype crash reports (text)
    <promoted outputs>
    _done.json       written last, atomically: version, config hash, timings, outputs + SHA-256
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

DONE = "_done.json"
WORK = "_work"


@dataclass(frozen=True)
class JobPaths:
    """Where one job's files live; ``key`` may be ``sub-01`` or ``sub-01/ses-02``."""

    root: Path
    key: str

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def work(self) -> Path:
        return self.root / WORK

    @property
    def nipype(self) -> Path:
        return self.work / "nipype"

    @property
    def stage(self) -> Path:
        return self.work / "stage"

    @property
    def result(self) -> Path:
        return self.work / "result.json"

    @property
    def progress(self) -> Path:
        return self.work / "progress"

    @property
    def jobfile(self) -> Path:
        return self.work / "job.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def log(self) -> Path:
        return self.logs / f"{self.key.replace('/', '_')}.log"

    @property
    def crash(self) -> Path:
        return self.logs / "crash"

    @property
    def done(self) -> Path:
        return self.root / DONE


def job_paths(out_dir: Path, key: str) -> JobPaths:
    return JobPaths(Path(out_dir) / key, key)


def try_lock(paths: JobPaths) -> FileLock | None:
    """Take the job's lock without waiting; None if another batch holds it.

    The lock is an ``flock`` on ``.lock``: the operating system releases it when the
    holding process dies, so a killed batch never leaves a stale lock.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(paths.lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def dataset_lock(out_dir: Path, timeout_s: float = -1) -> FileLock:
    """Lock on the whole output folder, for files every batch writing into it shares.

    Hold it (``with dataset_lock(out):``) only briefly: batches writing into one folder
    at once (SLURM array jobs) wait for each other here (by default for as long as it
    takes; the lock dies with its holder).
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return FileLock(str(Path(out_dir) / ".csttool.lock"), timeout=timeout_s)


def read_done(paths: JobPaths) -> dict | None:
    try:
        return json.loads(paths.done.read_text())
    except (OSError, ValueError):
        return None


def is_done(paths: JobPaths, config_hash: str) -> bool:
    done = read_done(paths)
    return bool(done) and done.get("config_hash") == config_hash and done.get("status") == "SUCCESS"


def write_progress(path, text: str) -> None:
    """Replace a job's progress file with ``text`` (one line; atomic, so readers never see half)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(" ".join(str(text).split()) + "\n")
    os.replace(tmp, path)


def read_progress(paths: JobPaths) -> str:
    """The running job's last progress line, or ``""``."""
    try:
        return paths.progress.read_text().strip()
    except OSError:
        return ""


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON through a temporary file and one ``rename``; the temporary file never outlives a failure."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def promote(paths: JobPaths, source: Path, record: dict) -> dict:
    """Move every entry of ``source`` into the job folder and write ``_done.json``, all or nothing.

    Each entry moves with one ``rename`` (atomic on one filesystem); a replaced entry
    and the old done marker are first renamed aside. When anything fails (a full or
    read-only disk while writing the marker, say), every move is undone: the previous
    outputs and their done marker are back, the new ones back in ``source``, and the
    error is raised. Returns the done record written (``record`` plus the outputs).
    """
    trash = paths.work / f"replaced-{time.time_ns()}"
    moved: list[tuple[Path, Path]] = []     # (from, to), in order
    try:
        trash.mkdir(parents=True, exist_ok=True)
        if paths.done.exists():
            os.replace(paths.done, trash / DONE)
            moved.append((paths.done, trash / DONE))
        for entry in sorted(Path(source).iterdir()):
            target = paths.root / entry.name
            if entry.name in (WORK, "logs", DONE, ".lock"):
                raise ValueError(f"refusing to promote reserved name {entry.name!r}")
            if target.exists() or target.is_symlink():
                os.replace(target, trash / entry.name)
                moved.append((target, trash / entry.name))
            os.replace(entry, target)
            moved.append((entry, target))
        done = write_done(paths, record)
    except BaseException:
        for src, dst in reversed(moved):
            try:
                os.replace(dst, src)
            except OSError:   # best effort: the error below is what the user sees
                pass
        shutil.rmtree(trash, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)
    return done


def list_outputs(paths: JobPaths) -> list[Path]:
    """Promoted files of a job (excluding engine bookkeeping), relative, sorted."""
    skip = {WORK, "logs", DONE, ".lock"}
    files = []
    for entry in paths.root.iterdir():
        if entry.name in skip:
            continue
        files += [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
    return sorted(p.relative_to(paths.root) for p in files)


def write_done(paths: JobPaths, record: dict) -> dict:
    """Write ``_done.json`` last, with the size and SHA-256 of every promoted output."""
    outputs = [{"path": str(rel), "sha256": sha256(paths.root / rel), "bytes": (paths.root / rel).stat().st_size}
               for rel in list_outputs(paths)]
    record = {**record, "outputs": outputs}
    write_json_atomic(paths.done, record)
    return record


def damaged_outputs(paths: JobPaths, full: bool = False) -> str | None:
    """Why a done job's outputs no longer match its ``_done.json``, or None when they do.

    Checks that every listed output exists with its recorded size; with ``full``
    also its SHA-256 (reads every byte). Returns the first problem, e.g.
    ``dwi/x.nii.gz is missing``.
    """
    done = read_done(paths) or {}
    for item in done.get("outputs", []):
        rel = str(item.get("path", ""))
        target = paths.root / rel
        if not rel or ".." in Path(rel).parts or not target.is_file():
            return f"{rel} is missing"
        if "bytes" in item and target.stat().st_size != item["bytes"]:
            return f"{rel} changed size ({target.stat().st_size} bytes, {item['bytes']} when done)"
        if full and item.get("sha256") and sha256(target) != item["sha256"]:
            return f"{rel} changed (SHA-256 differs from _done.json)"
    return None
