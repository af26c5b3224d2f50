"""Deprecated: moved to dfl.adversary.gradients, dfl.metrics.images (kept for one release)."""

from dfl.deprecation import moved

__getattr__ = moved(__name__, "dfl.adversary.gradients", "dfl.metrics.images")
