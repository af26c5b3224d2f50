"""The defense interface, defined in the core (``dfl.defense``) so that participants never import plugins."""

from __future__ import annotations

from dfl.defense import DefenseContext, QueryDefense, defended_query

__all__ = ["DefenseContext", "QueryDefense", "defended_query"]
