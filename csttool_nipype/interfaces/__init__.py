"""Thin Nipype interfaces: each calls one function of :mod:`csttool_nipype.science`.

Every interface takes a ``pipeline_version`` input. Nipype's cache hashes inputs, not
code, so bumping the package version invalidates cached results of older code.
"""
