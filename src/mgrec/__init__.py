"""mgrec: a multi-granularity recommender system."""

__version__ = "0.1.0"

from mgrec.data import Dataset, FeatureTable, SocialGraph, Vocabulary, load_dataset  # noqa: E402
from mgrec.errors import ConfigError, DataError, MgrecError  # noqa: E402

__all__ = [
    "__version__",
    "Dataset",
    "FeatureTable",
    "SocialGraph",
    "Vocabulary",
    "load_dataset",
    "MgrecError",
    "DataError",
    "ConfigError",
]
