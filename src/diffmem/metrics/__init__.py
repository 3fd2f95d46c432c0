"""Metrics: exact nearest neighbours and the memorization ratio."""

from diffmem.metrics.memorization import MemorizationResult, bootstrap_ci, is_memorized, memorization
from diffmem.metrics.neighbors import Neighbors, knn

__all__ = ["knn", "Neighbors", "memorization", "MemorizationResult", "is_memorized", "bootstrap_ci"]
