"""Deprecated: moved to dfl.metrics.membership (kept for one release)."""

from dfl.deprecation import moved

__getattr__ = moved(__name__, "dfl.metrics.membership")
