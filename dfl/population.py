"""Deprecated: moved to dfl.federation.population (kept for one release)."""

from dfl.deprecation import moved

__getattr__ = moved(__name__, "dfl.federation.population")
