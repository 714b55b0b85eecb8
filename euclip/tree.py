"""A rooted tree of named nodes: the class taxonomy that hierarchy metrics score against.

Built from ``parent child`` edges. Used for the synthetic dataset's taxonomy, for WordNet trees
over ImageNet-style class ids, and for trees loaded from an edges file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path


class Tree:
    """An immutable rooted tree.

    Args:
        edges: ``(parent, child)`` pairs. Every node but the root has exactly one parent.
        names: optional human-readable name per node (defaults to the node id).
    """

    def __init__(self, edges: Iterable[tuple[str, str]], names: dict[str, str] | None = None):
        self.parent: dict[str, str] = {}
        self.children: dict[str, list[str]] = {}
        for parent, child in edges:
            if child in self.parent and self.parent[child] != parent:
                raise ValueError(f"node {child!r} has two parents: {self.parent[child]!r} and {parent!r}")
            if child == parent:
                raise ValueError(f"node {child!r} is its own parent")
            if child not in self.parent:
                self.parent[child] = parent
                self.children.setdefault(parent, []).append(child)
            self.children.setdefault(child, [])
        roots = [n for n in self.children if n not in self.parent]
        if len(roots) != 1:
            raise ValueError(f"a tree needs exactly one root, found {len(roots)}: {sorted(roots)[:5]}")
        self.root: str = roots[0]
        reached = sum(1 for _ in self._walk(self.root))
        if reached != len(self.children):
            raise ValueError("the edges contain a cycle: not every node is reachable from the root")
        self.names: dict[str, str] = {n: n for n in self.children}
        if names:
            self.names.update({k: v for k, v in names.items() if k in self.children})

    def _walk(self, node: str) -> Iterator[str]:
        stack = [node]
        while stack:
            n = stack.pop()
            yield n
            stack.extend(reversed(self.children[n]))

    @classmethod
    def from_edges_file(cls, path: str | Path) -> "Tree":
        """Read a file of ``parent child`` lines (whitespace separated; ``#`` starts a comment)."""
        path = Path(path)
        edges = []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'parent child', got {line!r}")
            edges.append((fields[0], fields[1]))
        if not edges:
            raise ValueError(f"{path}: no edges found")
        return cls(edges)

    def edges(self) -> list[tuple[str, str]]:
        """All ``(parent, child)`` pairs in depth-first order."""
        return [(self.parent[n], n) for n in self._walk(self.root) if n != self.root]

    def to_edges_file(self, path: str | Path) -> None:
        Path(path).write_text("".join(f"{p} {c}\n" for p, c in self.edges()))

    @property
    def nodes(self) -> list[str]:
        return list(self._walk(self.root))

    @cached_property
    def leaves(self) -> list[str]:
        return [n for n in self._walk(self.root) if not self.children[n]]

    def __contains__(self, node: str) -> bool:
        return node in self.children

    def __len__(self) -> int:
        return len(self.children)

    def path_to_root(self, node: str) -> list[str]:
        """``[node, parent, ..., root]``."""
        if node not in self.children:
            raise KeyError(f"{node!r} is not a node of this tree")
        path = [node]
        while path[-1] != self.root:
            path.append(self.parent[path[-1]])
        return path

    def ancestors(self, node: str, include_self: bool = False) -> list[str]:
        """Ancestors from the parent up to the root (and ``node`` first if ``include_self``)."""
        path = self.path_to_root(node)
        return path if include_self else path[1:]

    def depth(self, node: str) -> int:
        """Edges between ``node`` and the root (the root has depth 0)."""
        return len(self.path_to_root(node)) - 1

    def lca(self, a: str, b: str) -> str:
        """Lowest common ancestor of two nodes (a node is its own ancestor here)."""
        on_a = set(self.path_to_root(a))
        for n in self.path_to_root(b):
            if n in on_a:
                return n
        raise AssertionError("unreachable: every node reaches the root")

    def distance(self, a: str, b: str) -> int:
        """Number of edges on the path between two nodes."""
        return self.depth(a) + self.depth(b) - 2 * self.depth(self.lca(a, b))

    def subtree(self, keep: Iterable[str]) -> "Tree":
        """The smallest tree that holds ``keep`` and their ancestors, with single-child chains kept."""
        wanted: set[str] = set()
        for n in keep:
            wanted.update(self.path_to_root(n))
        return Tree([(self.parent[n], n) for n in self._walk(self.root) if n in wanted and n != self.root],
                    names=self.names)
