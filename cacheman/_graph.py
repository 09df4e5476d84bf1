"""Dependency edges between caches, by name: cycle check, topological order, export."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .errors import DependencyCycleError

__all__ = ["DependencyGraph"]


class DependencyGraph:
    """A directed acyclic graph of cache names; an edge ``parent -> child`` means
    *child is derived from parent*, so resetting the parent resets the child.

    Names need not belong to registered caches: an edge may be declared before
    either end exists.  Insertion order is kept so every traversal is
    deterministic.

    >>> graph = DependencyGraph()
    >>> graph.add_edge("root", "mid"); graph.add_edge("mid", "leaf")
    >>> graph.downstream("root")
    ['mid', 'leaf']
    """

    def __init__(self) -> None:
        # dicts used as ordered sets: child/parent name -> None
        self._children: dict[str, dict[str, None]] = {}
        self._parents: dict[str, dict[str, None]] = {}

    def add_edge(self, parent: str, child: str) -> None:
        """Record that ``child`` is derived from ``parent``.

        Raises :class:`~cacheman.errors.DependencyCycleError` (a ``ValueError``)
        naming the cycle if ``parent`` is already derived from ``child``.
        """
        path = self._path(child, parent)
        if path is not None:
            cycle = " -> ".join([parent, *path])
            raise DependencyCycleError(
                f"cannot make {child!r} depend on {parent!r}: it would close the cycle {cycle}"
            )
        self._children.setdefault(parent, {})[child] = None
        self._parents.setdefault(child, {})[parent] = None

    def remove_node(self, name: str) -> None:
        """Forget ``name`` and every edge that touches it."""
        for child in self._children.pop(name, {}):
            self._parents[child].pop(name, None)
        for parent in self._parents.pop(name, {}):
            self._children[parent].pop(name, None)

    def clear(self) -> None:
        """Forget every edge."""
        self._children.clear()
        self._parents.clear()

    def children(self, name: str) -> list[str]:
        """Names directly derived from ``name``."""
        return list(self._children.get(name, ()))

    def parents(self, name: str) -> list[str]:
        """Names that ``name`` is directly derived from."""
        return list(self._parents.get(name, ()))

    def edges(self) -> Iterator[tuple[str, str]]:
        """Yield every ``(parent, child)`` edge in insertion order."""
        for parent, children in self._children.items():
            for child in children:
                yield parent, child

    def nodes(self) -> list[str]:
        """Every name that appears in an edge."""
        seen = dict.fromkeys(self._children)
        seen.update(dict.fromkeys(self._parents))
        return list(seen)

    def downstream(self, name: str) -> list[str]:
        """Every name derived from ``name``, transitively, parents before children.

        ``name`` itself is not included.  Each name appears once, even where
        several paths (a diamond) lead to it.
        """
        return self.topological([name])[1:] if name in self._children else []

    def topological(self, roots: Iterable[str]) -> list[str]:
        """``roots`` and everything downstream of them, each once, parents first."""
        reachable: dict[str, None] = {}
        stack = list(roots)[::-1]
        while stack:
            node = stack.pop()
            if node not in reachable:
                reachable[node] = None
                stack.extend(reversed(self.children(node)))
        # Kahn's algorithm over the reachable part only: a node is emitted once
        # all of its reachable parents have been, which is what "parents first" means.
        pending = {node: sum(p in reachable for p in self.parents(node)) for node in reachable}
        ready = [node for node in reachable if pending[node] == 0]
        order: list[str] = []
        while ready:
            node = ready.pop(0)
            order.append(node)
            for child in self.children(node):
                pending[child] -= 1
                if pending[child] == 0:
                    ready.append(child)
        return order

    def _path(self, start: str, goal: str) -> list[str] | None:
        """A path of names from ``start`` to ``goal`` following edges, or ``None``."""
        came_from: dict[str, str | None] = {start: None}
        queue = [start]
        while queue:
            node = queue.pop(0)
            if node == goal:
                path = [node]
                while (previous := came_from[path[-1]]) is not None:
                    path.append(previous)
                return path[::-1]
            for child in self.children(node):
                if child not in came_from:
                    came_from[child] = node
                    queue.append(child)
        return None

    def to_dot(self, name: str = "caches") -> str:
        """The graph in Graphviz DOT, arrows pointing from a cache to what is derived from it."""
        lines = [f'digraph "{name}" {{', "    rankdir=LR;"]
        lines += [f"    {_quote(node)};" for node in self.nodes()]
        lines += [f"    {_quote(parent)} -> {_quote(child)};" for parent, child in self.edges()]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart (renders on GitHub and in many doc tools)."""
        ids = {node: f"n{index}" for index, node in enumerate(self.nodes())}
        lines = ["flowchart LR"]
        lines += [f'    {ids[node]}["{_mermaid_label(node)}"]' for node in ids]
        lines += [f"    {ids[parent]} --> {ids[child]}" for parent, child in self.edges()]
        return "\n".join(lines) + "\n"


def _quote(node: str) -> str:
    return '"' + node.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mermaid_label(node: str) -> str:
    return node.replace('"', "#quot;")
