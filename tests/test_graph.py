"""The dependency graph on its own: order, cycles, export."""

from __future__ import annotations

import random

import pytest

from cacheman import CacheManError, DependencyCycleError
from cacheman._graph import DependencyGraph

DIAMOND = [("top", "left"), ("top", "right"), ("left", "bottom"), ("right", "bottom")]


def check(graph: DependencyGraph) -> None:
    """Assert every invariant: parent and child indexes mirror each other, no cycle."""
    edges = set(graph.edges())
    assert {(p, c) for c in graph.nodes() for p in graph.parents(c)} == edges
    for node in graph.nodes():
        assert node not in graph.downstream(node)
        order = graph.topological([node])
        assert len(order) == len(set(order))
        position = {name: index for index, name in enumerate(order)}
        for parent, child in edges:
            if parent in position and child in position:
                assert position[parent] < position[child]


def test_chain_of_three() -> None:
    graph = DependencyGraph()
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    assert graph.downstream("a") == ["b", "c"]
    assert graph.downstream("b") == ["c"]
    assert graph.downstream("c") == []
    check(graph)


def test_diamond_visits_each_node_once_after_all_its_parents() -> None:
    graph = DependencyGraph()
    for parent, child in DIAMOND:
        graph.add_edge(parent, child)
    order = graph.downstream("top")
    assert sorted(order) == ["bottom", "left", "right"]
    assert order[-1] == "bottom"
    check(graph)


def test_unknown_name_has_no_downstream() -> None:
    assert DependencyGraph().downstream("nothing") == []


@pytest.mark.parametrize(
    ("edges", "closing", "cycle"),
    [
        ([], ("a", "a"), "a -> a"),
        ([("a", "b")], ("b", "a"), "b -> a -> b"),
        ([("a", "b"), ("b", "c")], ("c", "a"), "c -> a -> b -> c"),
    ],
)
def test_cycle_refused_and_named(
    edges: list[tuple[str, str]], closing: tuple[str, str], cycle: str
) -> None:
    graph = DependencyGraph()
    for parent, child in edges:
        graph.add_edge(parent, child)
    with pytest.raises(DependencyCycleError, match=cycle) as raised:
        graph.add_edge(*closing)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, CacheManError)
    assert set(graph.edges()) == set(edges)  # the refused edge left no trace


def test_remove_node_forgets_its_edges() -> None:
    graph = DependencyGraph()
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    graph.remove_node("b")
    assert list(graph.edges()) == []
    assert graph.downstream("a") == []
    check(graph)


def test_exports_name_every_edge() -> None:
    graph = DependencyGraph()
    graph.add_edge("raw data", 'say "hi"')
    dot = graph.to_dot()
    assert dot.startswith('digraph "caches" {')
    assert '"raw data" -> "say \\"hi\\"";' in dot
    mermaid = graph.to_mermaid()
    assert mermaid.splitlines()[0] == "flowchart LR"
    assert 'n0["raw data"]' in mermaid
    assert 'n1["say #quot;hi#quot;"]' in mermaid
    assert "n0 --> n1" in mermaid


@pytest.mark.slow
def test_random_graphs_keep_invariants() -> None:
    random.seed(0)
    for _ in range(200):
        graph = DependencyGraph()
        names = [f"n{i}" for i in range(12)]
        for _ in range(30):
            parent, child = random.sample(names, 2)
            try:
                graph.add_edge(parent, child)
            except DependencyCycleError:
                assert parent in graph.downstream(child)
            if random.random() < 0.05:
                graph.remove_node(random.choice(names))
        check(graph)
