"""Deprecated: moved to dfl.studies.tables (kept for one release)."""

from dfl.deprecation import moved

__getattr__ = moved(__name__, "dfl.studies.tables")
