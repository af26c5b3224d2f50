"""``Registry[T]``: decorator registration of plugins with their ``Params`` models.

A spec in YAML is ``{name: <key>, params: {...}}``; the registry resolves the key to an entry, validates
``params`` against the entry's pydantic model and builds the object. Duplicate names raise; unknown
names raise with the sorted list of known ones.
"""

from __future__ import annotations

import inspect
import re
import reprlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from dfl.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class NoParams(BaseModel):
    """Params of a plugin that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered plugin: its key, the object, its params model and a one-line description."""

    name: str
    obj: T
    params: type[BaseModel]
    summary: str

    def parse_params(self, raw: dict[str, Any] | BaseModel | None, path: str = "params") -> BaseModel:
        """Validate raw params; errors carry ``path`` as their dotted prefix."""
        if isinstance(raw, self.params):
            return raw
        try:
            return self.params.model_validate(raw or {})
        except ValidationError as exc:
            raise ConfigError(pydantic_errors(exc, prefix=path)) from None


class Registry(Generic[T]):
    """A named family of plugins (datasets, models, topologies, ...)."""

    def __init__(self, family: str, plural: str | None = None) -> None:
        self.family = family
        self.plural = plural or family + "s"
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, params: type[BaseModel] = NoParams, summary: str | None = None
    ) -> Callable[[T], T]:
        """Decorator: ``@TOPOLOGIES.register("ring", params=RingParams)``."""
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is already registered by {self._entries[name].obj!r}")
            text = summary or _first_line(name, obj)
            self._entries[name] = Entry(name=name, obj=obj, params=params, summary=text)
            return obj

        return deco

    def get(self, name: str, path: str = "name") -> Entry[T]:
        """The entry for ``name``; unknown names raise with the list of known ones."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none registered)"
            raise UnknownNameError(
                [(path, f"unknown {self.family} {name!r}; known {self.plural}: {known}")]
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[k] for k in sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def _first_line(name: str, obj: object) -> str:
    """The first docstring line of a one-entry module named after the entry, else of the object itself."""
    module_name = getattr(obj, "__module__", "") or ""
    module = sys.modules.get(module_name)
    own_module = module_name.rsplit(".", 1)[-1] == name and not inspect.isclass(obj)
    for doc in ([inspect.getdoc(module)] if own_module and module else []) + [inspect.getdoc(obj)]:
        if doc and doc.strip():
            return re.sub(rf"^``{re.escape(name)}``:\s*", "", doc.strip().splitlines()[0])
    return ""


def pydantic_errors(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten a pydantic ``ValidationError`` into ``(dotted.path, message)`` pairs."""
    out = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        path = ".".join(([prefix] if prefix else []) + parts)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            msg = f"{msg} (got {short_repr(err['input'])})"
        out.append((path, msg))
    return out


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, never building more of it than that.

    ``reprlib`` stops at a few items per level, so a list of a billion values (a YAML alias bomb) costs
    no more to show than a short one.
    """
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 3, 6, 6, 6, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
