"""Data: the dataset model, loaders, preprocessing, splits and the synthetic generator."""

from mgrec.data.dataset import Dataset, FeatureTable, SocialGraph, to_csr
from mgrec.data.registry import load_dataset
from mgrec.data.vocab import Vocabulary

__all__ = ["Dataset", "FeatureTable", "SocialGraph", "Vocabulary", "load_dataset", "to_csr"]
