"""Length-prefixed framing of albatross streams, sans I/O.

Every message is a 4-byte big-endian *signed* length followed by that many
bytes.  Upstream treats a length <= 0 as the end of the stream; a
zero-length chunk is the deliberate end marker of raw data streams.

:class:`FrameReader` is fed bytes as they arrive and hands out complete
frames; it never allocates more than ``max_size`` for one frame, and
reports an oversized or negative length as a :class:`FrameError` instead.
The asyncio helpers at the bottom wrap it for stream readers.
"""

from __future__ import annotations

import asyncio
import struct

from ..errors import FrameError

#: Default limit: a 64 MiB unikernel image inside one message, plus headroom.
DEFAULT_MAX_SIZE = 64 * 1024 * 1024 + 1024 * 1024

END = object()  #: returned by FrameReader.next_frame for a zero-length chunk


def frame(body: bytes) -> bytes:
    if len(body) > 0x7FFFFFFF:
        raise FrameError("message too large for a frame")
    return struct.pack(">i", len(body)) + body


END_CHUNK = b"\x00\x00\x00\x00"


class FrameReader:
    """Incremental frame parser.

    ``feed(data)`` appends received bytes; ``next_frame()`` returns the next
    complete body (bytes), :data:`END` for a zero-length chunk, or None when
    more input is needed.  A negative length or one above ``max_size``
    raises :class:`FrameError` and poisons the reader.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE, allow_end: bool = True):
        self.max_size = max_size
        self.allow_end = allow_end
        self._buf = bytearray()
        self._error: FrameError | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self):
        if self._error is not None:
            raise self._error
        if len(self._buf) < 4:
            return None
        (length,) = struct.unpack_from(">i", self._buf, 0)
        if length < 0:
            self._error = FrameError(f"invalid negative frame length {length}")
            raise self._error
        if length == 0:
            del self._buf[:4]
            return END
        if length > self.max_size:
            self._error = FrameError(f"frame of {length} bytes exceeds the maximum of {self.max_size} bytes")
            raise self._error
        if len(self._buf) < 4 + length:
            return None
        body = bytes(self._buf[4:4 + length])
        del self._buf[:4 + length]
        return body


async def read_frame(reader: asyncio.StreamReader, max_size: int = DEFAULT_MAX_SIZE):
    """Read one frame: bytes, END for a zero-length chunk, or None at EOF.

    A negative length is reported as END like upstream (end of stream for
    callers that only look at messages), but an oversized one raises
    FrameError without reading the body.
    """
    try:
        head = await reader.readexactly(4)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    (length,) = struct.unpack(">i", head)
    if length <= 0:
        return END
    if length > max_size:
        raise FrameError(f"frame of {length} bytes exceeds the maximum of {max_size} bytes")
    try:
        return await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def write_frame(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(frame(body))
    await writer.drain()
