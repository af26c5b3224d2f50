"""What the conformance tests of every registry (tests/dfl, tests/topologies, tests/defenses,
tests/attacks) share: the rows ``dfl-sim list`` prints, and the check of an entry's default params."""

from __future__ import annotations

import contextlib
import io
import re
from typing import Any

import pytest

from dfl.errors import ConfigError

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def list_rows(family: str) -> dict[str, list[str]]:
    """Rows of ``dfl-sim list FAMILY`` by name, ``name -> [name, parameters, description]`` (run in-process
    on a terminal wide enough that no cell wraps)."""
    from dfl.cli import main

    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
        mp.setenv("COLUMNS", "1000")
        assert main(["list", family]) == 0
    rows = {}
    for line in ANSI.sub("", buf.getvalue()).splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 5 and cells[1]:
            rows[cells[1]] = cells[1:4]
    return rows


def defaults_fail(entry: Any) -> bool:
    """Whether ``entry``'s params need a value that has no default."""
    try:
        entry.parse_params({})
    except ConfigError:
        return True
    return False


def check_defaults(registry: Any, required: dict[str, dict[str, Any]], name: str) -> None:
    """``name``'s params validate empty, or -- listed in ``required`` -- really need the listed values."""
    entry = registry.get(name)
    if name in required:
        with pytest.raises(ConfigError):
            entry.parse_params({})  # listed as needing params: it must really need them
        entry.parse_params(required[name])
    else:
        entry.parse_params({})


def check_listed(rows: dict[str, list[str]], family: str, entry: Any) -> None:
    """``entry`` has a one-line description and ``dfl-sim list FAMILY`` shows it in its row."""
    assert entry.summary, f"{family} {entry.name!r} needs a one-line description (its docstring's first line)"
    assert entry.name in rows, f"{entry.name!r} is not a row of `dfl-sim list {family}`: {sorted(rows)}"
    assert rows[entry.name][2] == entry.summary
