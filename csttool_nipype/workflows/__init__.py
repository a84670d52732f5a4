"""Workflow builders (wiring only): ``init_<thing>_wf`` returns a Nipype ``Workflow``."""
