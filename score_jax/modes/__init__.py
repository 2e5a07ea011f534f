"""One file per ``--mode``, each ``run(config, workdir) -> jobs.writers.Output`` (the folder it
wrote and its metrics), each built the same way: options and components from
``score_jax.experiment`` → parameters (``jobs.params``) → a ``Control`` (``jobs.control``) →
draw (``jobs.sampler``) → write (``jobs.writers``).  No mode imports another mode; what two
modes share lives in ``score_jax/jobs/``.  A new mode is one file here and one row in
``main.py``'s ``MODES``.
"""
