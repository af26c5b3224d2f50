"""``torus``: a rows x cols grid whose edges wrap around (periodic boundaries); every node has degree 4."""

from __future__ import annotations

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfl.registries import TOPOLOGIES
from topologies._graph import nodes_error
from topologies.grid import grid_shape, lattice


class TorusParams(BaseModel):
    """``rows`` and optionally ``cols`` (default ``nodes / rows``); ``rows * cols`` must equal ``nodes``."""

    model_config = ConfigDict(extra="forbid")
    rows: int = Field(gt=0, description="number of rows (at least 3)")
    cols: int | None = Field(None, gt=0, description="number of columns (at least 3); default nodes / rows")


@TOPOLOGIES.register("torus", params=TorusParams)
def build(n: int, params: TorusParams, rng: np.random.Generator) -> nx.Graph:
    """A 2-D torus: node ``r * cols + c`` links to ``((r +- 1) mod rows, c)`` and ``(r, (c +- 1) mod cols)``.

    4-regular, so neighbourhood_mean mixes with a doubly stochastic W; needs rows, cols >= 3 (with 2 the
    wrap-around edge coincides with the inner one).
    """
    rows, cols = grid_shape("torus", n, params.rows, params.cols)
    if rows < 3 or cols < 3:
        raise nodes_error(
            f"torus needs at least 3 rows and 3 columns, got rows x cols = {rows} x {cols} (nodes={n});"
            " use grid for a thinner lattice, or ring for a single row"
        )
    return lattice(rows, cols, periodic=True)
