"""Simulations with known ground truth (as DIPY keeps them in ``dipy/sims``).

The digital diffusion MRI phantom, placed in MNI anatomy:

* :mod:`.model`: what is simulated: tissue compartments (diffusivities in mm^2/s) and
  the specification (:class:`~.model.PhantomSpec`, :class:`~.model.LesionSpec`) and
  result (:class:`~.model.Phantom`) of a simulation;
* :mod:`.anatomy`: the compartment maps and CST direction field on the 1 mm MNI grid;
* :mod:`.signal`: acquisition geometry, sampling of the model on a subject grid, the
  diffusion signal, Gibbs ringing, Rician noise and the ground-truth maps;
* :mod:`.phantom`: :func:`~.phantom.make_phantom` (one simulated subject) and
  :func:`~.phantom.on_truth_grid`;
* :mod:`.writer`: BIDS raw data plus ground-truth derivatives on disk.
"""
