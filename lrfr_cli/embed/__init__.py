"""Model loading and the cached embedding pass shared by every evaluation protocol."""

from .cache import EmbeddingCache
from .extract import Embeddings, EmbedStats, ImageSet, Variant, embed, forward, pending
from .loaded import LoadedModel
from .model import CHECKPOINT_CHOICES, resolve_model

__all__ = [
    "CHECKPOINT_CHOICES",
    "EmbedStats",
    "EmbeddingCache",
    "Embeddings",
    "ImageSet",
    "LoadedModel",
    "Variant",
    "embed",
    "forward",
    "pending",
    "resolve_model",
]
