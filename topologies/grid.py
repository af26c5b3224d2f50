"""``grid``: nodes on a rows x cols lattice, each linked to its up/down/left/right neighbours."""

from __future__ import annotations

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfl.registries import TOPOLOGIES
from topologies._graph import canonical, nodes_error


class GridParams(BaseModel):
    """``rows`` and optionally ``cols`` (default ``nodes / rows``); ``rows * cols`` must equal ``nodes``."""

    model_config = ConfigDict(extra="forbid")
    rows: int = Field(gt=0, description="number of rows")
    cols: int | None = Field(None, gt=0, description="number of columns; default nodes / rows")


def grid_shape(name: str, n: int, rows: int, cols: int | None) -> tuple[int, int]:
    """``(rows, cols)`` with ``rows * cols == n``, or a ``ConfigError`` at ``nodes`` saying what to change."""
    if cols is None:
        if n % rows:
            raise nodes_error(
                f"{name} with rows={rows} needs nodes divisible by {rows}, got nodes={n};"
                f" set nodes to a multiple of {rows} or change topology.params.rows"
            )
        return rows, n // rows
    if rows * cols != n:
        raise nodes_error(
            f"{name} of rows x cols = {rows} x {cols} has {rows * cols} nodes, got nodes={n};"
            f" set nodes: {rows * cols} or change topology.params.rows/cols"
        )
    return rows, cols


def lattice(rows: int, cols: int, periodic: bool) -> nx.Graph:
    """The rows x cols lattice with node ``(r, c)`` named ``r * cols + c``."""
    graph = nx.grid_2d_graph(rows, cols, periodic=periodic)
    return canonical(rows * cols, ((r1 * cols + c1, r2 * cols + c2) for (r1, c1), (r2, c2) in graph.edges()))


@TOPOLOGIES.register("grid", params=GridParams)
def build(n: int, params: GridParams, rng: np.random.Generator) -> nx.Graph:
    """A 2-D grid graph: node ``r * cols + c`` links to ``(r +- 1, c)`` and ``(r, c +- 1)`` inside the grid.

    Degrees are 4 inside, 3 on the border and 2 at the corners (rows = 1 is a path).
    """
    rows, cols = grid_shape("grid", n, params.rows, params.cols)
    return lattice(rows, cols, periodic=False)
