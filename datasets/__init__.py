"""Dataset loaders: PneumoniaMNIST (via medmnist) and a synthetic ground-truth generator.

Note: this top-level package is called ``datasets`` by the product layout and shadows Hugging
Face ``datasets`` if both are installed in one environment; use a dedicated virtual environment.
"""
from datasets.base import DATASETS, SPLITS, ImageSplit, load_split, register_dataset  # noqa: F401
from datasets import pneumoniamnist as _pneumoniamnist, synthetic as _synthetic  # noqa: F401  (registration)
