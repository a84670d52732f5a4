"""Which pipeline stage a node of the subject workflow belongs to, by its name (no Nipype needed)."""

from __future__ import annotations

from ..config import STAGES

#: Pipeline stage (:data:`~csttool_nipype.config.STAGES`) of a Nipype node, by the node or
#: stage workflow its full name contains (first match); the derivatives workflow is "outputs",
#: the subject workflow's own input node (the source file's name) "import".
NODE_STAGES = (("dwi_import", "import"), ("dwi_preproc_wf", "preprocess"), ("tensor_wf", "tensor"),
               ("registration_wf", "register"), ("tracking_wf", "track"), ("cst_metrics", "metrics"),
               ("cst_wf", "cst"), ("derivatives_wf", "outputs"), ("inputnode", "import"))
#: The stages in pipeline order, the writing of the outputs last.
STAGE_ORDER = (*STAGES, "outputs")


def stage_of_node(fullname: str) -> str:
    """``single_subject_01_wf.dwi_preproc_wf.denoise`` → ``preprocess`` (``""`` if none matches)."""
    parts = fullname.split(".")
    return next((stage for key, stage in NODE_STAGES if key in parts), "")
