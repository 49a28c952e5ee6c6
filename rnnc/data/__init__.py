"""Built-in datasets, batching and metrics for training recurrent networks.

Everything is pure numpy, deterministic given a seed, and needs no downloads::

    from rnnc.data import build_dataset, iterate_batches

    ds = build_dataset("embedded_reber", {"n": 1000}, seed=0)
    for batch in iterate_batches(ds.train, 32, np.random.default_rng(0)):
        ...  # batch.x (B, T) int32, batch.y (B, T) int32, batch.lengths (B,)

Bad options or files raise :class:`rnnc.errors.DataError`.
"""

from rnnc.data.batching import (
    Batch,
    iterate_batches,
    num_batches,
    num_stream_windows,
    reaching_stream_windows,
    stream_windows,
)
from rnnc.data.core import TASKS, Dataset, Split
from rnnc.data.datasets import (
    build_dataset,
    check_options,
    dataset_description,
    dataset_names,
    dataset_options,
    dataset_required_options,
)
from rnnc.data.metrics import evaluate_outputs


__all__ = [
    "TASKS",
    "Batch",
    "Dataset",
    "Split",
    "build_dataset",
    "check_options",
    "dataset_description",
    "dataset_names",
    "dataset_options",
    "dataset_required_options",
    "evaluate_outputs",
    "iterate_batches",
    "num_batches",
    "num_stream_windows",
    "reaching_stream_windows",
    "stream_windows",
]
