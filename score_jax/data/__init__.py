"""Data: toy targets (``toy``), embedded image datasets (``embedded``), the image pipeline (``pipeline``).

``get_dataset(kind, name, ...)`` is ``pipeline.get_dataset``: one random-access, deterministic,
host-sharded batching interface over embedded, folder, tfds and tfrecords sources.
"""

from score_jax.data.embedded import DatasetInfo, IndexedDataset
from score_jax.data.pipeline import KINDS, get_dataset

__all__ = ["DatasetInfo", "IndexedDataset", "KINDS", "get_dataset"]
