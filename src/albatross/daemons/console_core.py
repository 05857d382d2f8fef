"""albatross-console without I/O: line splitting, ring buffers, subscribers.

* :class:`LineSplitter` turns the bytes read from a unikernel's fifo into
  lines, with upstream's 512-byte limit and drop mode (behaviour.md §3.4).
* :class:`Ring` keeps the last 1024 (timestamp, line) entries; its history
  queries are bounded (v2.7.2 fix, and negative counts give nothing).
* :class:`ConsoleState` is the daemon's state: per path the number of
  consoles to keep and, per label, the subscribers, the active flag and the
  ring (behaviour.md §3.2-§3.6).  Subscribers are opaque values compared by
  identity; the methods return the subscribers the caller must close.

Decisions (recorded in the report and the tests):

* subscriber limit: upstream drops the oldest subscriber only when
  ``len(subscribers) - 1 >= max``, so ``max + 1`` subscribers may be
  connected at once.  Reproduced (:data:`SUBSCRIBER_SLACK`).
* ``count <= 0`` yields no history (upstream loops forever on a negative
  count with a full ring).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..core import Ptime
from ..policy.names import Name

RING_SIZE = 1024
LINE_LIMIT = 512
TRUNCATED = b" [truncated]"
#: upstream's off-by-one: max_subscribers + 1 subscribers can be connected
SUBSCRIBER_SLACK = 1

S = TypeVar("S")
Entry = tuple[Ptime, bytes]


# ------------------------------------------------------------------ lines

class LineSplitter:
    """Upstream's console line splitter; feed it at most 512 bytes at a time.

    The pending partial line (``slack``) stays below 512 bytes as long as
    every piece fed is at most 512 bytes, and nothing is kept in drop mode,
    so the memory used is bounded whatever a unikernel prints.
    """

    __slots__ = ("slack", "dropping", "limit")

    def __init__(self, limit: int = LINE_LIMIT):
        self.limit = limit
        self.slack = b""
        self.dropping = False

    def feed(self, data: bytes) -> list[bytes]:
        """The complete non-empty lines this piece finishes."""
        if self.dropping:
            idx = data.find(b"\n")
            if idx < 0:
                return []
            self.dropping = False
            parts = data[idx:].split(b"\n")
            lines, self.slack = parts[:-1], parts[-1]
        else:
            parts = (self.slack + data).split(b"\n")
            if len(parts) == 1:
                fragment = parts[0]
                if len(fragment) >= self.limit:
                    lines = [fragment[:self.limit] + TRUNCATED]
                    self.dropping = True
                    self.slack = b""
                else:
                    lines = []
                    self.slack = fragment
            else:
                lines, self.slack = parts[:-1], parts[-1]
        return [line for line in lines if line]

    def feed_chunked(self, data: bytes) -> list[bytes]:
        """Feed a larger read in ``limit``-sized pieces, like upstream's reads."""
        out: list[bytes] = []
        for off in range(0, len(data), self.limit):
            out.extend(self.feed(data[off:off + self.limit]))
        return out


# ------------------------------------------------------------------- ring

class Ring:
    """A ring buffer of the last ``size`` (timestamp, line) entries."""

    __slots__ = ("_data", "_write", "size")

    def __init__(self, size: int = RING_SIZE):
        self.size = size
        self._data: list[Entry | None] = [None] * size
        self._write = 0

    def write(self, entry: Entry) -> None:
        self._data[self._write] = entry
        self._write = (self._write + 1) % self.size

    def __len__(self) -> int:
        if self._data[self._write] is not None:
            return self.size
        return self._write

    def _newest_first(self):
        idx = self._write
        for _ in range(self.size):
            idx = (idx - 1) % self.size
            entry = self._data[idx]
            if entry is None:
                return
            yield entry

    def read_last(self, n: int) -> list[Entry]:
        """The last min(n, size) entries, oldest first; nothing for n <= 0."""
        if n <= 0:
            return []
        out: list[Entry] = []
        for entry in self._newest_first():
            if len(out) >= n:
                break
            out.append(entry)
        out.reverse()
        return out

    def read_history(self, since: Ptime) -> list[Entry]:
        """All entries with a timestamp >= since, oldest first (never wraps)."""
        out: list[Entry] = []
        for entry in self._newest_first():
            if entry[0] < since:
                break
            out.append(entry)
        out.reverse()
        return out


# ------------------------------------------------------------------ state

@dataclass(eq=False)
class Console(Generic[S]):
    subscribers: list[tuple[int, S]] = field(default_factory=list)  # (version, sub), newest first
    active: bool = False
    ring: Ring | None = None


@dataclass(eq=False)
class PathEntry(Generic[S]):
    n: int
    consoles: dict[str, Console[S]] = field(default_factory=dict)


@dataclass(frozen=True)
class Subscribed(Generic[S]):
    """The outcome of a subscription: reply string, history, whom to close."""

    reply: str
    history: list[Entry]
    to_close: list[S]


def _label_key(label: str) -> bytes:
    return label.encode("utf-8", "surrogateescape")


class ConsoleState(Generic[S]):
    def __init__(self, max_subscribers: int = 5, log: Callable[[str], None] | None = None):
        if max_subscribers < 1:
            raise ValueError("max subscribers must be greater than or equal to 1")
        self.max_subscribers = max_subscribers
        self.paths: dict[tuple[str, ...], PathEntry[S]] = {}
        self.log = log or (lambda _msg: None)

    # -- lookups -------------------------------------------------------------
    def console(self, name: Name) -> Console[S] | None:
        entry = self.paths.get(name.path)
        return None if entry is None or name.label is None else entry.consoles.get(name.label)

    def ring_count(self) -> int:
        return sum(1 for e in self.paths.values() for c in e.consoles.values() if c.ring is not None)

    def _maybe_drop(self, name: Name, entry: PathEntry[S]) -> list[S]:
        """Drop one inactive console when the path holds more than ``n`` (so at most n+1 stay)."""
        if len(entry.consoles) <= entry.n:
            return []
        inactive = sorted((lbl for lbl, c in entry.consoles.items() if not c.active), key=_label_key)
        if not inactive:
            self.log(f"adding a ringbuffer to {name}, but found nothing inactive to drop")
            return []
        dropped = entry.consoles.pop(inactive[0])
        self.log(f"dropping {':'.join(name.path)}:{inactive[0]}")
        return [sub for _, sub in dropped.subscribers]

    # -- console add / fifo end ----------------------------------------------
    def add(self, name: Name, n: int) -> tuple[Ring, list[S]]:
        """A unikernel's console starts (its fifo is open): its ring and whom to close."""
        assert name.label is not None
        label = name.label
        entry = self.paths.get(name.path)
        if entry is None:
            ring = Ring()
            self.paths[name.path] = PathEntry(n, {label: Console([], True, ring)})
            return ring, []
        entry.n = n
        console = entry.consoles.get(label)
        if console is None:
            ring = Ring()
            entry.consoles[label] = Console([], True, ring)
            return ring, self._maybe_drop(name, entry)
        if console.ring is None:
            console.ring = Ring()
        console.active = True
        return console.ring, []

    def finished(self, name: Name) -> None:
        """The fifo of ``name`` reached EOF: keep ring and subscribers, inactive."""
        console = self.console(name)
        if console is not None:
            console.active = False

    # -- output ------------------------------------------------------------------
    def output(self, name: Name, ring: Ring, lines: list[bytes], now: Ptime) -> list[tuple[int, S]]:
        """Store lines in the ring; return the subscribers to send them to."""
        for line in lines:
            ring.write((now, line))
        console = self.console(name)
        return list(console.subscribers) if console is not None else []

    # -- subscribers -------------------------------------------------------------
    def subscribe(self, name: Name, version: int, sub: S,
                  since: Ptime | None = None, count: int | None = None) -> Subscribed[S]:
        assert name.label is not None
        label = name.label
        entry = self.paths.get(name.path)
        if entry is None:
            self.paths[name.path] = PathEntry(1, {label: Console([(version, sub)], False, None)})
            return Subscribed("waiting for VM", [], [])
        console = entry.consoles.get(label)
        if console is None:
            entry.consoles[label] = Console([(version, sub)], False, None)
            return Subscribed("waiting for VM", [], self._maybe_drop(name, entry))
        to_close: list[S] = []
        if len(console.subscribers) - SUBSCRIBER_SLACK >= self.max_subscribers:
            to_close.append(console.subscribers.pop()[1])
            self.log(f"dropping subscriber of {name}")
        console.subscribers.insert(0, (version, sub))
        if console.ring is None:
            return Subscribed("waiting for VM", [], to_close)
        if since is not None:
            history = console.ring.read_history(since)
        else:
            history = console.ring.read_last(count if count is not None else 0)
        return Subscribed("subscribed", history, to_close)

    def unsubscribe(self, name: Name, sub: S) -> None:
        entry = self.paths.get(name.path)
        if entry is None or name.label is None:
            return
        console = entry.consoles.get(name.label)
        if console is None:
            return
        console.subscribers = [(v, s) for v, s in console.subscribers if s is not sub]
        if not console.active and console.ring is None and not console.subscribers:
            del entry.consoles[name.label]
            if not entry.consoles:
                del self.paths[name.path]

    # -- listing -----------------------------------------------------------------
    def list_inactive(self, path: tuple[str, ...]) -> list[Name]:
        """Inactive consoles with a ring under ``path``, relative names, upstream order."""
        path = tuple(path)
        k = len(path)
        below = [p for p in self.paths if p[:k] == path]
        # upstream folds post-order (children ascending, then the node's labels
        # ascending) and prepends: the reverse of that visiting order
        below.sort(key=lambda p: tuple((0, _label_key(x)) for x in p) + ((1, b""),))
        visited: list[Name] = []
        for p in below:
            consoles = self.paths[p].consoles
            for label in sorted(consoles, key=_label_key):
                c = consoles[label]
                if not c.active and c.ring is not None:
                    visited.append(Name(p[k:], label))
        visited.reverse()
        return visited
