"""Deprecated: moved to dfl.attack (kept for one release)."""

from dfl.deprecation import moved

__getattr__ = moved(__name__, "dfl.attack")
