"""The batch engine: scheduling, isolation, state and promotion.

It knows nothing about diffusion. A batch is a list of :class:`~.jobs.Job` objects
(a folder key, a JSON payload, a config hash) and the dotted name of a function that
processes one payload; the engine runs each job in its own process group, enforces
timeouts, keeps per-job locks, logs and done markers, and promotes outputs atomically.
"""
