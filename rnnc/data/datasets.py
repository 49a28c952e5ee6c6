"""The dataset registry: names, default options and :func:`build_dataset`."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnc.data.core import Dataset, Options
from rnnc.data.files import CSV_DEFAULTS, NPZ_DEFAULTS, build_csv, build_npz
from rnnc.data.reber import (
    EMBEDDED_REBER_DEFAULTS,
    REBER_DEFAULTS,
    build_embedded_reber,
    build_reber,
)
from rnnc.data.synthetic import (
    ADDING_DEFAULTS,
    COPY_DEFAULTS,
    SINE_DEFAULTS,
    SINE_GENERATION_DEFAULTS,
    TEMPORAL_ORDER_DEFAULTS,
    build_adding,
    build_copy,
    build_sine,
    build_sine_generation,
    build_temporal_order,
)
from rnnc.data.text import TEXT_DEFAULTS, build_text
from rnnc.errors import DataError, did_you_mean, unknown


@dataclass(frozen=True)
class _Entry:
    build: Callable[[Options, int], Dataset]
    defaults: dict
    description: str
    required: tuple[str, ...] = ()


_REGISTRY: dict[str, _Entry] = {
    "reber": _Entry(build_reber, REBER_DEFAULTS,
                    "next-symbol prediction on Reber grammar strings"),
    "embedded_reber": _Entry(build_embedded_reber, EMBEDDED_REBER_DEFAULTS,
                             "next-symbol prediction on embedded Reber strings (long lag)"),
    "adding": _Entry(build_adding, ADDING_DEFAULTS,
                     "the adding problem: sum of the two marked values (regression)"),
    "copy": _Entry(build_copy, COPY_DEFAULTS,
                   "copy task: reproduce K symbols after a delay"),
    "temporal_order": _Entry(build_temporal_order, TEMPORAL_ORDER_DEFAULTS,
                             "classify the order of 2 or 3 relevant symbols among distractors"),
    "sine": _Entry(build_sine, SINE_DEFAULTS,
                   "noisy sine waves, predict the clean next value (regression)"),
    "sine_generation": _Entry(build_sine_generation, SINE_GENERATION_DEFAULTS,
                              "one-to-many: unroll a sine wave from its frequency, given "
                              "at the first step only (regression)"),
    "text": _Entry(build_text, TEXT_DEFAULTS,
                   "character-level language modelling on a UTF-8 text file", ("path",)),
    "npz": _Entry(build_npz, NPZ_DEFAULTS,
                  "your own arrays x, y[, lengths] from an .npz file", ("path",)),
    "csv": _Entry(build_csv, CSV_DEFAULTS,
                  "windows of a numeric CSV time series (regression)", ("path", "targets")),
}


def _entry(name: str) -> _Entry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise unknown("dataset", str(name), dataset_names(), cls=DataError)
    return _REGISTRY[name]


def dataset_names() -> list[str]:
    """The built-in dataset names, in registry order."""
    return list(_REGISTRY)


def dataset_options(name: str) -> dict[str, object]:
    """Option name -> default value for dataset ``name`` (a fresh copy).

    A default of ``None`` means "not set": for the options listed by
    :func:`dataset_required_options` it must be given.
    """
    return copy.deepcopy(_entry(name).defaults)


def dataset_required_options(name: str) -> list[str]:
    """The options dataset ``name`` cannot do without (e.g. ``path``)."""
    return list(_entry(name).required)


def dataset_description(name: str) -> str:
    """A one-line description of dataset ``name``."""
    return _entry(name).description


def check_options(name: str, options: Mapping | None) -> dict[str, object]:
    """The options merged over the defaults; DataError for unknown keys (did-you-mean)."""
    entry = _entry(name)
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise DataError(f"the options of dataset '{name}' must be a mapping of names to values, "
                        f"got {type(options).__name__}",
                        hint=f"e.g. {{n: 1000}}; see dataset_options('{name}')")
    for key in options:
        if key not in entry.defaults:
            raise DataError(f"unknown option '{key}' for dataset '{name}'",
                            hint=did_you_mean(str(key), entry.defaults)).at_option(key)
    merged = copy.deepcopy(entry.defaults)
    merged.update(options)
    return merged


def build_dataset(name: str, options: Mapping | None, seed: int,
                  base_dir: str | Path = ".") -> Dataset:
    """Build dataset ``name`` with ``options`` (over its defaults).

    The result depends only on the name, options, file contents and ``seed``.
    Relative file paths are resolved against ``base_dir`` (the spec file's folder).
    ``info`` records the seed, the merged options and the split sizes.
    """
    merged = check_options(name, options)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(f"the data seed must be a non-negative integer, got {seed!r}",
                        hint="e.g. seed: 0")
    opts = Options(name, merged, Path(base_dir), _REGISTRY[name].defaults)
    dataset = _REGISTRY[name].build(opts, int(seed))
    dataset.info = {
        "seed": int(seed),
        "options": merged,
        "split_sizes": {k: len(s) for k, s in dataset.splits.items()},
        **dataset.info,
    }
    return dataset
