"""Names of unikernels, block devices and administrative paths.

A name is a pair (path, label): the path is a tuple of labels (the
administrative domain), the label is the object inside it, or None for a
path-only name.  The string form joins the path with ':' and appends ':'
and the label, so the root path is ':' and a unikernel at the root is
':hello'.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..errors import NameError_

_LABEL_RE = re.compile(r"[A-Za-z0-9.][A-Za-z0-9.\-]{0,62}\Z")
LABEL_ERROR = "invalid label (only [a-zA-Z0-9-.] allowed, 1 to 63 chars)"


def is_label(s: str) -> bool:
    return bool(_LABEL_RE.match(s)) and s.isascii()


def label_of_string(s: str) -> str:
    """Validate a label and return it lower-cased."""
    if not is_label(s):
        raise NameError_(LABEL_ERROR)
    return s.lower()


def path_of_string(s: str) -> tuple[str, ...]:
    """Parse a path string ('a:b', ':a:b', '' for the root)."""
    if s == "":
        return ()
    parts = s.split(":")
    if parts[0] == "":
        parts = parts[1:]
    try:
        return tuple(label_of_string(p) for p in parts)
    except NameError_ as e:
        raise NameError_("invalid path: " + e.message) from None


def path_to_string(path: tuple[str, ...]) -> str:
    return ":".join(path)


@dataclass(frozen=True, order=True, slots=True)
class Name:
    path: tuple[str, ...] = ()
    label: str | None = None

    # -- construction -------------------------------------------------------
    @classmethod
    def of_string(cls, s: str) -> "Name":
        if s == "":
            raise NameError_("empty name")
        if s.endswith(":"):
            return cls(path_of_string(s[:-1]), None)
        parts = s.split(":")
        if parts[0] == "":
            parts = parts[1:]
        if not parts:
            raise NameError_("invalid name")
        try:
            labels = [label_of_string(p) for p in parts]
        except NameError_:
            raise NameError_("invalid name") from None
        return cls(tuple(labels[:-1]), labels[-1])

    @classmethod
    def of_path(cls, path: tuple[str, ...]) -> "Name":
        return cls(tuple(path), None)

    @classmethod
    def make(cls, path: tuple[str, ...], label: str) -> "Name":
        return cls(tuple(path), label_of_string(label))

    @classmethod
    def of_labels(cls, labels: list[str] | tuple[str, ...]) -> "Name":
        """The named entry whose trie key is ``labels`` (last one = label)."""
        if not labels:
            return ROOT
        return cls(tuple(labels[:-1]), labels[-1])

    # -- printing -------------------------------------------------------------
    def __str__(self) -> str:
        return self.to_string()

    def to_string(self) -> str:
        return ":".join(self.path) + ":" + (self.label or "")

    def pretty(self) -> str:
        """Human form used in logs and client output."""
        return f"[unikernel: {self.to_string()}]"

    # -- accessors ------------------------------------------------------------
    @property
    def is_root(self) -> bool:
        return not self.path and self.label is None

    @property
    def is_path(self) -> bool:
        return self.label is None

    def labels(self) -> tuple[str, ...]:
        """The trie key: the path labels followed by the label, if any."""
        return self.path + ((self.label,) if self.label is not None else ())

    def drop_path(self) -> "Name":
        return Name((), self.label)

    def drop_label(self) -> "Name":
        return Name(self.path, None)

    def drop_prefix(self, prefix: tuple[str, ...]) -> "Name":
        """The name relative to ``prefix`` (which must be a prefix of its path)."""
        n = len(prefix)
        if self.path[:n] != tuple(prefix):
            raise NameError_(f"{self} is not below {path_to_string(prefix)}:")
        return Name(self.path[n:], self.label)

    def image_file(self) -> str:
        return self.to_string() + ".img"

    def fifo_file(self) -> str:
        return self.to_string()

    def block_name(self, device: str) -> "Name":
        """The block device ``device`` in this unikernel's path (not validated)."""
        return Name(self.path, device)

    def mac(self, netname: str) -> bytes:
        """Deterministic MAC: 00:80:41 and 3 bytes of MD5(netname ++ name)."""
        digest = hashlib.md5((netname + self.to_string()).encode("utf-8", "surrogateescape")).digest()
        return b"\x00\x80\x41" + digest[:3]


ROOT = Name((), None)


def mac_to_string(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def mac_of_string(s: str) -> bytes:
    parts = s.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise NameError_(f"invalid MAC address {s!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise NameError_(f"invalid MAC address {s!r}") from None
