"""Bounded zlib: inflating with a hard cap on the output, and checked levels.

Every compressed blob the daemons and the client receive (unikernel images,
block data, dumps) is inflated here, in pieces, so that a small "zlib bomb"
can never make the process allocate more than ``cap`` bytes (plus one piece
of :data:`PIECE` bytes).  Levels given on the wire are checked before zlib
sees them, so a bad level is a clear error, not an exception.
"""

from __future__ import annotations

import zlib
from typing import Callable

from ..errors import AlbatrossError

#: default maximum size of an uncompressed unikernel image (``--max-image-size``)
DEFAULT_MAX_IMAGE = 512 * 1024 * 1024
#: bytes produced per decompression step
PIECE = 1 << 20


class InflateError(AlbatrossError):
    """Compressed data is invalid, truncated, or inflates beyond its cap."""


def _mib(n: int) -> str:
    return f"{n} bytes" if n % (1024 * 1024) else f"{n // (1024 * 1024)} MiB"


class BoundedInflater:
    """A streaming inflater that refuses to produce more than ``cap`` bytes in total.

    ``feed`` returns the output for one compressed chunk; ``sink`` (optional)
    receives each piece instead (then ``feed`` returns ``b""``), so memory
    stays at one piece whatever the chunk inflates to.
    """

    def __init__(self, cap: int, what: str = "data"):
        self.cap = cap
        self.what = what
        self.produced = 0
        self._d = zlib.decompressobj()

    @property
    def eof(self) -> bool:
        return self._d.eof

    def _take(self, out: bytes) -> None:
        self.produced += len(out)
        if self.produced > self.cap:
            raise InflateError(f"{self.what} exceeds the maximum of {_mib(self.cap)} once uncompressed")

    def feed(self, chunk: bytes, sink: Callable[[bytes], object] | None = None) -> bytes:
        pieces: list[bytes] = []
        data = chunk
        try:
            while True:
                if self._d.eof:  # anything after the end is ignored, as zlib.decompress does
                    break
                out = self._d.decompress(data, PIECE)
                data = self._d.unconsumed_tail
                if out:
                    self._take(out)
                    if sink is not None:
                        sink(out)
                    else:
                        pieces.append(out)
                elif not data:
                    break
        except zlib.error as e:
            raise InflateError(f"failed to uncompress {self.what}: {e}") from None
        return b"".join(pieces)

    def finish(self) -> None:
        """Raise unless the stream ended properly."""
        if not self._d.eof:
            raise InflateError(f"failed to uncompress {self.what}: truncated stream")


def inflated_size(data: bytes, cap: int, what: str = "data") -> int:
    """The size ``data`` inflates to, found in pieces that are thrown away (memory: one piece)."""
    d = BoundedInflater(cap, what)
    d.feed(data, lambda _piece: None)
    d.finish()
    return d.produced


def inflate(data: bytes, cap: int, what: str = "data") -> bytes:
    """All of ``data`` inflated; InflateError if invalid or larger than ``cap`` bytes.

    The size is established first without keeping the output, so refused
    input never costs more than one piece of memory; only then is the data
    inflated for real, into a buffer of exactly that size.
    """
    size = inflated_size(data, cap, what)
    try:
        return zlib.decompress(data, zlib.MAX_WBITS, max(size, 1))
    except zlib.error as e:  # cannot happen after a successful first pass
        raise InflateError(f"failed to uncompress {what}: {e}") from None


def check_level(level: int) -> int:
    """A zlib level from the wire: 0 (none) to 9; InflateError otherwise."""
    if not isinstance(level, int) or not 0 <= level <= 9:
        raise InflateError(f"invalid compression level {level} (must be 0 to 9)")
    return level


def compress(data: bytes, level: int) -> bytes:
    return zlib.compress(data, check_level(level))


def compressobj(level: int):
    return zlib.compressobj(check_level(level))


__all__ = ["DEFAULT_MAX_IMAGE", "PIECE", "InflateError", "BoundedInflater", "inflate", "inflated_size", "check_level",
           "compress", "compressobj"]
