"""Give a file its BIDS-derivative name and JSON sidecar before a DataSink copies it out."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, Str, TraitedSpec, isdefined, traits

from .base import write_json


def bids_derivative_name(subject: str, suffix: str, extension: str, session: str | None = None, **entities) -> str:
    """Build ``sub-X[_ses-Y]_key-value..._suffix.ext`` with entities in the given order.

    ``subject``/``session`` may be given with or without their ``sub-``/``ses-`` prefix.
    Entities whose value is None or empty are left out.
    """
    sub = subject if subject.startswith("sub-") else f"sub-{subject}"
    parts = [sub]
    if session:
        parts.append(session if session.startswith("ses-") else f"ses-{session}")
    parts += [f"{key}-{value}" for key, value in entities.items() if value]
    return "_".join(parts) + f"_{suffix}{extension}"


def _extension(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".tsv.gz"):
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def _copy(src: str, dst: Path) -> None:
    """Copy ``src`` to ``dst``, gzip-compressing an uncompressed ``.nii`` into ``.nii.gz``.

    Level 1, nibabel's default: about 4x faster than level 6 for ~20 % larger files.
    """
    if dst.name.endswith(".nii.gz") and not str(src).endswith(".gz"):
        with open(src, "rb") as fin, gzip.GzipFile(dst, "wb", compresslevel=1, mtime=0) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    else:
        shutil.copyfile(src, dst)


class _DerivativeNameInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    subject = Str(mandatory=True)
    session = Str()
    entities = traits.List(traits.Tuple(Str, Str), desc="ordered (key, value) pairs, e.g. [('space','dwi')]")
    suffix = Str(mandatory=True)
    sidecar = traits.Dict(desc="JSON sidecar content (Description, Units, ...); none written if empty")
    sidecar_file = File(exists=True, desc="JSON file merged into the sidecar (keys of `sidecar` win)")
    source_files = traits.List(Str, desc="paths recorded as Sources in the sidecar")


class _DerivativeNameOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    out_sidecar = File(desc="JSON sidecar next to out_file")


class DerivativeName(SimpleInterface):
    """Copy ``in_file`` to its BIDS-derivative file name (and write its sidecar)."""

    input_spec = _DerivativeNameInputSpec
    output_spec = _DerivativeNameOutputSpec

    def _run_interface(self, runtime):
        session = self.inputs.session if isdefined(self.inputs.session) else None
        entities = dict(self.inputs.entities) if isdefined(self.inputs.entities) else {}
        extension = _extension(self.inputs.in_file)
        if extension == ".nii":   # an uncompressed intermediate: published compressed
            extension = ".nii.gz"
        name = bids_derivative_name(self.inputs.subject, self.inputs.suffix, extension, session=session, **entities)
        out = Path(runtime.cwd) / name
        _copy(self.inputs.in_file, out)
        self._results["out_file"] = str(out)
        meta = {}
        if isdefined(self.inputs.sidecar_file):
            meta.update(json.loads(Path(self.inputs.sidecar_file).read_text()))
        if isdefined(self.inputs.sidecar):
            meta.update(self.inputs.sidecar)
        if meta:
            if isdefined(self.inputs.source_files) and self.inputs.source_files:
                meta.setdefault("Sources", list(self.inputs.source_files))
            stem = name[: -len(_extension(name))]
            self._results["out_sidecar"] = write_json(meta, Path(runtime.cwd) / f"{stem}.json")
        return runtime
