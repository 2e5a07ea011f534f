"""The shared job library: what the modes of ``score_jax/modes/`` are made of, each once.

    params.py          the EMA parameters to sample from (checkpoint, EMA export, converted model)
    keys.py            the one derivation of sample keys (which key a job's samples draw from)
    control.py         ``Control``: score source, score transforms, constraint, traced auxiliaries
    sampler.py         ``make_sampler(setup, n, control)``: chunked, sharded, compiled once
    observations.py    inpainting / colorization problems and their ``Observation`` (the method)
    observation_metrics.py   how well their samples keep what is known; their metrics.json
    controllable.py    one inpainting / colorization run (``solve``), what both modes share
    masks.py           inpainting masks
    writers.py         grids and their layout, samples' npz / metrics JSON, TensorBoard, ``Output``
    features.py        FID features, cached real statistics, quality metrics, reference scores
    checkpoint_eval.py held-out loss, bits/dim and the samples of one checkpoint (--mode=eval)
    classifiers.py     fitting, saving and loading the in-domain and noise-conditional classifiers
    noise_bands.py     a noise-conditional classifier's accuracy per σ band
    train_step.py      the train step, gradient accumulation, the state's shardings
    train_loop.py      the training loop, batches ahead, preemption, progress and scalars
    peers.py           several processes: joining, a lost process reported in one line, an orderly end

Nothing here reads a config: modes hand these functions the records of ``score_jax.experiment``.
"""
