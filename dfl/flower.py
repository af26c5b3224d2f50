"""Deprecated: moved to dfl.engines.flower, dfl.federation.flower_client (kept for one release)."""

from dfl.deprecation import moved

__getattr__ = moved(__name__, "dfl.engines.flower", "dfl.federation.flower_client")
