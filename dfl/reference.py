"""Deprecated: moved to dfl.adversary.reference (kept for one release)."""

from dfl.deprecation import moved

__getattr__ = moved(__name__, "dfl.adversary.reference")
