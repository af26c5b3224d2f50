"""``from_file``: the graph read from an edge-list file or a GraphML file."""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfl.registries import TOPOLOGIES
from topologies._graph import nodes_error, param_error, relabel

CONNECT_HINT = "add edges to the file that join the components"
# A document type declaration (and so any entity) in XML: refused before the parser sees the file.
DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class FromFileParams(BaseModel):
    """``path``: an edge list (``u v`` per line) or a ``.graphml`` file."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="edge list or .graphml file; relative to the working directory")


def read_edge_list(text: str) -> nx.Graph:
    """Parse an edge list: one ``u v`` per line (whitespace or comma separated); ``#`` starts a comment.

    Tokens after the second (weights, attributes) are ignored; a line with one token declares an
    isolated node.
    """
    graph = nx.Graph()
    for line in text.splitlines():
        tokens = [t for t in re.split(r"[\s,]+", line.split("#", 1)[0].strip()) if t]
        if len(tokens) == 1:
            graph.add_node(tokens[0])
        elif len(tokens) >= 2:
            graph.add_edge(tokens[0], tokens[1])
    return graph


def label_order(labels: list[Hashable]) -> list[Hashable]:
    """Labels in sorted order: numerically if all are integers, else naturally (``n2`` before ``n10``)."""
    if all(re.fullmatch(r"[+-]?[0-9]+", str(x)) for x in labels):
        return sorted(labels, key=lambda x: int(str(x)))

    def natural(x: Hashable) -> tuple[tuple[int, int | str], ...]:
        parts = re.split(r"([0-9]+)", str(x))
        return tuple((0, int(part)) if part[0] in "0123456789" else (1, part) for part in parts if part)

    return sorted(labels, key=natural)


def read_graph(path: str) -> nx.Graph:
    """Read ``path`` as GraphML (``.graphml``) or as an edge list, or raise a ``ConfigError`` naming it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise param_error("path", f"file {path!r} does not exist (resolved to {str(file.resolve())!r}); check the path")
    if file.suffix.lower() == ".graphml" and DTD.search(file.read_bytes()):
        raise param_error("path", f"{path!r} declares a DOCTYPE or entities; GraphML needs neither, and they can "
                                  "read other files or expand without bound: remove the declarations")
    try:
        if file.suffix.lower() == ".graphml":
            graph = nx.Graph(nx.read_graphml(file, node_type=str))
        else:
            graph = read_edge_list(file.read_text())
    except Exception as exc:  # a user's file: any parse error becomes a config error
        kind = "GraphML" if file.suffix.lower() == ".graphml" else "an edge list"
        raise param_error("path", f"cannot read {path!r} as {kind}: {exc}; fix the file") from None
    return graph


@TOPOLOGIES.register("from_file", params=FromFileParams)
def build(n: int, params: FromFileParams, rng: np.random.Generator) -> nx.Graph:
    """The graph in ``path``, its node labels mapped to ``0..n-1`` in sorted order (see ``label_order``).

    Directed GraphML is read as undirected; parallel edges merge and self loops are dropped. The file
    must hold exactly ``nodes`` nodes.
    """
    graph = read_graph(params.path)
    count = graph.number_of_nodes()
    if count != n:
        raise nodes_error(
            f"the graph in {params.path!r} has {count} nodes, got nodes={n}; set nodes: {count} or use another file"
        )
    return relabel(graph, label_order(list(graph.nodes)))
