"""The defense interface, defined in the core (``dfl.query``) so that participants never import plugins."""

from __future__ import annotations

from dfl.query import DefenseContext, QueryDefense, defended_query

__all__ = ["DefenseContext", "QueryDefense", "defended_query"]
