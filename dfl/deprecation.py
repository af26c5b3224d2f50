"""Names that moved keep working for one release, with a ``DeprecationWarning`` naming their new home.

An old module becomes a few lines::

    from dfl.deprecation import moved
    __getattr__ = moved(__name__, "dfl.federation.participant")

Its names are looked up in the new modules (in the order given) on first use, so the old module imports
nothing at load time and adds no arrow to the import graph.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

RELEASE = "0.3"  # the release in which the old names go


def moved(old: str, *new: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` that finds ``old``'s names in the modules ``new`` and warns once per use."""
    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for target in new:
            module = importlib.import_module(target)
            if hasattr(module, name):
                warnings.warn(f"{old}.{name} moved to {target}.{name}; import it from there ({old} goes in "
                              f"release {RELEASE})", DeprecationWarning, stacklevel=2)
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to {', '.join(new)})")

    return __getattr__
