"""Data layer: image lists, image decoding, degradation transforms (and datasets/caches)."""
