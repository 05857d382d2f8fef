"""A mutable trie keyed by the label sequence of a name.

Every node holds at most one entry; a path name (``foo:bar:``) and a named
entry with the same labels (``foo:bar``) share a node, the later insertion
replacing the earlier one.  Each entry remembers the name it was stored
under.  Lookups only look at the labels, as upstream does.

Children are always visited in ascending bytewise label order, except in
:meth:`Trie.listing`, which reproduces the order of upstream info replies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from .names import ROOT, Name

V = TypeVar("V")


def _label_key(label: str) -> bytes:
    return label.encode("utf-8", "surrogateescape")


class _Node(Generic[V]):
    __slots__ = ("entry", "children")

    def __init__(self) -> None:
        self.entry: tuple[Name, V] | None = None
        self.children: dict[str, _Node[V]] = {}

    def sorted_children(self, reverse: bool = False) -> list[tuple[str, "_Node[V]"]]:
        return sorted(self.children.items(), key=lambda kv: _label_key(kv[0]), reverse=reverse)

    def preorder(self, reverse: bool = False) -> Iterator[tuple[Name, V]]:
        if self.entry is not None:
            yield self.entry
        for _, child in self.sorted_children(reverse):
            yield from child.preorder(reverse)

    def copy(self) -> "_Node[V]":
        node: _Node[V] = _Node()
        node.entry = self.entry
        node.children = {k: c.copy() for k, c in self.children.items()}
        return node


class Trie(Generic[V]):
    """Name-keyed storage for policies, unikernels and block devices."""

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._size = 0

    # -- single entries --------------------------------------------------------
    def _find(self, labels: tuple[str, ...]) -> _Node[V] | None:
        node = self._root
        for label in labels:
            child = node.children.get(label)
            if child is None:
                return None
            node = child
        return node

    def get(self, name: Name) -> V | None:
        node = self._find(name.labels())
        if node is None or node.entry is None:
            return None
        return node.entry[1]

    def insert(self, name: Name, value: V) -> V | None:
        """Store ``value`` under ``name``; return the value it replaced."""
        node = self._root
        for label in name.labels():
            node = node.children.setdefault(label, _Node())
        old = node.entry
        node.entry = (name, value)
        if old is None:
            self._size += 1
            return None
        return old[1]

    def remove(self, name: Name) -> V | None:
        """Drop the entry at ``name`` (pruning empty nodes); return it."""
        labels = name.labels()
        trail: list[_Node[V]] = [self._root]
        for label in labels:
            child = trail[-1].children.get(label)
            if child is None:
                return None
            trail.append(child)
        old = trail[-1].entry
        if old is None:
            return None
        trail[-1].entry = None
        self._size -= 1
        for depth in range(len(labels), 0, -1):
            node = trail[depth]
            if node.entry is not None or node.children:
                break
            del trail[depth - 1].children[labels[depth - 1]]
        return old[1]

    def __len__(self) -> int:
        return self._size

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, Name):
            return False
        node = self._find(name.labels())
        return node is not None and node.entry is not None

    # -- traversals ------------------------------------------------------------
    def items(self) -> list[tuple[Name, V]]:
        """All entries: pre-order, children ascending (the state-file order)."""
        return list(self._root.preorder())

    def collect(self, name: Name) -> list[tuple[Name, V]]:
        """Entries on the way from the root down to ``name``'s node, root first.

        Upstream's ``Vmm_trie.collect`` returns the same entries deepest first.
        """
        out: list[tuple[Name, V]] = []
        node: _Node[V] | None = self._root
        labels = name.labels()
        i = 0
        while node is not None:
            if node.entry is not None:
                out.append(node.entry)
            if i == len(labels):
                break
            node = node.children.get(labels[i])
            i += 1
        return out

    def under(self, path: tuple[str, ...]) -> list[tuple[Name, V]]:
        """Entries in the subtree of ``path`` with absolute names, pre-order ascending.

        A named entry whose labels equal ``path`` (e.g. ``:foo`` for path
        ``foo``) lives on the path's node and is included, as upstream does.
        """
        node = self._find(tuple(path))
        return [] if node is None else list(node.preorder())

    def postorder_under(self, path: tuple[str, ...]) -> list[tuple[Name, V]]:
        """The subtree of ``path`` in upstream's fold order (children ascending first)."""
        return list(reversed(self._listing_nodes(tuple(path))))

    def _listing_nodes(self, path: tuple[str, ...]) -> list[tuple[Name, V]]:
        node = self._find(path)
        return [] if node is None else list(node.preorder(reverse=True))

    def listing(self, path: tuple[str, ...]) -> list[tuple[Name, V]]:
        """Upstream's listing of the subtree of ``path`` for info replies.

        Names are relative to ``path``; the entry on the path's node itself
        is reported as the root name ``:`` (upstream does so whether that
        entry is a path entry or a named one).  Order: upstream folds
        post-order with children ascending and prepends each entry, which
        gives pre-order with children in descending label order.
        """
        path = tuple(path)
        out: list[tuple[Name, V]] = []
        for name, value in self._listing_nodes(path):
            rel = ROOT if name.labels() == path else name.drop_prefix(path)
            out.append((rel, value))
        return out

    def copy(self) -> "Trie[V]":
        """A structural copy; the stored values themselves are shared."""
        t: Trie[V] = Trie()
        t._root = self._root.copy()
        t._size = self._size
        return t

    def __repr__(self) -> str:
        return f"Trie({[(str(n), v) for n, v in self.items()]!r})"
