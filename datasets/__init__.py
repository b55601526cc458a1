"""Dataset loaders: PneumoniaMNIST and the other single-label 2D MedMNIST data sets (via medmnist),
and a synthetic ground-truth generator.

A new data set is one module here (imported below) or a plug-in package registering through the
``bench.datasets`` entry-point group; its loader's keyword options are its config options.

Note: this top-level package is called ``datasets`` by the product layout and shadows Hugging
Face ``datasets`` if both are installed in one environment; use a dedicated virtual environment.
"""

from datasets.base import (  # noqa: F401
    DATASETS,
    SPLITS,
    ImageSplit,
    check_splits,
    dataset_options,
    load_split,
    register_dataset,
)
from datasets import pneumoniamnist as _pneumoniamnist, synthetic as _synthetic  # noqa: F401  (registration)
from datasets import medmnist2d as _medmnist2d  # noqa: F401  (registration)
from datasets import marked as _marked  # noqa: F401  (registration)
