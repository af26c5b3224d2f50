"""Loads the built-in plugin packages and third-party plugins from entry points.

The only place where ``dfl`` names ``topologies``, ``defenses`` and ``attacks``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

_BUILTIN = ("dfl.data", "dfl.models", "topologies", "defenses", "attacks")
_GROUPS = ("dfl_sim.topologies", "dfl_sim.defenses", "dfl_sim.attacks")
_loaded = False


def load_plugins() -> None:
    """Import every built-in plugin module and entry-point plugin once (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN:
        importlib.import_module(mod)
    for group in _GROUPS:
        for ep in entry_points(group=group):
            ep.load()
