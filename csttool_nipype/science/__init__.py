"""The science: plain functions on arrays and paths, no Nipype.

Conventions used throughout
---------------------------
* World coordinates are scanner RAS+ millimetres (NIfTI convention).
* Pipeline images are reoriented at import to the closest canonical RAS+ voxel
  order (a permutation/flip only, no resampling), as QSIPrep does with LPS.
* ``.bvec`` files on disk follow the FSL/dcm2niix convention (see
  :mod:`csttool_nipype.science.gradients`); arrays handed to dipy hold b-vectors
  in the image's voxel axes.
* b-values are in s/mm^2, diffusivities in mm^2/s.
"""
