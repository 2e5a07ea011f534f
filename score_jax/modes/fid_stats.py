"""``--mode=fid_stats``: caches the real data's feature statistics for FID, KID and
precision-recall (``<workdir>/fid_stats/``; ``jobs/features.py`` documents the files)."""

from __future__ import annotations

import os

from absl import logging

from score_jax import experiment
from score_jax.jobs import features
from score_jax.jobs import writers


def run(config: experiment.ConfigDict, workdir: str) -> writers.Output:
  """Real-data feature statistics of the training and held-out splits (``jobs.features``).

  Computed once per extractor and split; later calls (and ``evaluate``) reuse the files.

  Returns:
    The folder ``<workdir>/fid_stats`` and {split: path of its FeatureStats npz} as its metrics.
  """
  opts = experiment.eval_options(config)
  data = experiment.build_image_data(config, "--mode=fid_stats", workdir)
  extractor = features.get_extractor(opts, workdir, data)
  paths = {}
  for split in dict.fromkeys((data.train.info.split, data.eval_split)):
    real = features.real_features(workdir, data, split, extractor, opts)
    paths[split] = features.stats_paths(workdir, extractor.name, split)[0]
    logging.info("%s: %d images, %d-d %s features.", paths[split], real.stats.num_samples,
                 real.stats.mu.shape[0], extractor.name)
  return writers.Output(folder=os.path.dirname(paths[data.train.info.split]), metrics=paths)

