"""A small, strict DER reader and writer.

Only what albatross's grammar needs: single-byte tags, definite minimal
lengths, and the primitive types of wire.md §2.  The reader rejects what
upstream's asn1-combinators rejects in DER mode (indefinite or non-minimal
lengths, high tag numbers, constructed strings, non-minimal integers,
trailing bytes) and raises nothing but :class:`DecodeError`.

We write this by hand rather than through asn1crypto because the albatross
grammar needs several things asn1crypto does differently: GeneralizedTime
with exactly three fraction digits, UTF8Strings that are opaque bytes,
8-byte OCTET STRING integers, nested untagged CHOICEs, and strict integer
decoding.
"""

from __future__ import annotations

import calendar
import re

from ..core import MAX_INT, MIN_INT, Ptime
from ..errors import DecodeError, EncodeError

# universal tags
BOOLEAN = 0x01
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
UTF8STRING = 0x0C
SEQUENCE = 0x30
SET = 0x31
GENERALIZED_TIME = 0x18


def ctx(n: int) -> int:
    """The tag byte of a context-specific constructed [n] (EXPLICIT)."""
    return 0xA0 + n


# ------------------------------------------------------------------ writer

def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(b),)) + b


def tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def seq(*parts: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(parts))


def explicit(n: int, inner: bytes) -> bytes:
    return tlv(0xA0 + n, inner)


def enc_int(v: int) -> bytes:
    """An OCaml ``int``: minimal two's complement, 63-bit range."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise EncodeError(f"integer expected, got {v!r}")
    if v < MIN_INT or v > MAX_INT:
        raise EncodeError(f"integer {v} out of range")
    n = (v + (v < 0)).bit_length() // 8 + 1
    return tlv(INTEGER, v.to_bytes(n, "big", signed=True))


def enc_int32(v: int) -> bytes:
    """An int32 field: sign-extended 32-bit value as an INTEGER."""
    v &= 0xFFFFFFFF
    if v >= 0x80000000:
        v -= 1 << 32
    return enc_int(v)


def enc_int64(v: int) -> bytes:
    """An int64 field: OCTET STRING of its 8 big-endian two's complement bytes."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise EncodeError(f"integer expected, got {v!r}")
    if v < -(1 << 63) or v >= (1 << 64):
        raise EncodeError(f"int64 {v} out of range")
    return tlv(OCTET_STRING, (v & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big"))


def enc_bool(v: bool) -> bytes:
    return b"\x01\x01\xff" if v else b"\x01\x01\x00"


NULL_TLV = b"\x05\x00"


def enc_octets(b: bytes) -> bytes:
    return tlv(OCTET_STRING, bytes(b))


def to_bytes(s: str | bytes) -> bytes:
    return s if isinstance(s, (bytes, bytearray)) else s.encode("utf-8", "surrogateescape")


def enc_utf8(s: str | bytes) -> bytes:
    return tlv(UTF8STRING, to_bytes(s))


def enc_time(t: Ptime) -> bytes:
    days, rem = divmod(t.seconds, 86400)
    y, mo, d = _civil_from_days(days)
    if not 0 <= y <= 9999:
        raise EncodeError(f"timestamp {t} out of range")
    h, rem = divmod(rem, 3600)
    mi, s = divmod(rem, 60)
    text = f"{y:04d}{mo:02d}{d:02d}{h:02d}{mi:02d}{s:02d}"
    if t.frac_ps:
        text += f".{t.frac_ps // 1_000_000_000:03d}"
    return tlv(GENERALIZED_TIME, (text + "Z").encode("ascii"))


def set_of(elements: list[bytes]) -> bytes:
    """DER SET OF: members sorted by their encodings (duplicates kept)."""
    return tlv(SET, b"".join(sorted(elements)))


def seq_of(elements: list[bytes]) -> bytes:
    return tlv(SEQUENCE, b"".join(elements))


def _civil_from_days(z: int) -> tuple[int, int, int]:
    # proleptic Gregorian calendar date from days since 1970-01-01
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + (m <= 2), m, d)


# ------------------------------------------------------------------ reader

class Reader:
    """Reads a sequence of TLVs from ``data[pos:end]``."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes | memoryview, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def at_end(self) -> bool:
        return self.pos >= self.end

    def peek_tag(self) -> int | None:
        if self.pos >= self.end:
            return None
        return self.data[self.pos]

    def _header(self) -> tuple[int, int, int]:
        """Parse tag and length at pos: returns (tag, content start, content end)."""
        data, pos, end = self.data, self.pos, self.end
        if pos >= end:
            raise DecodeError("unexpected end of input")
        tag = data[pos]
        if tag & 0x1F == 0x1F:
            raise DecodeError("high tag numbers are not supported")
        pos += 1
        if pos >= end:
            raise DecodeError("truncated length")
        first = data[pos]
        pos += 1
        if first < 0x80:
            length = first
        elif first == 0x80:
            raise DecodeError("indefinite length not allowed in DER")
        else:
            nbytes = first & 0x7F
            if nbytes > 8:
                raise DecodeError("length too large")
            if pos + nbytes > end:
                raise DecodeError("truncated length")
            lb = bytes(data[pos:pos + nbytes])
            if lb[0] == 0:
                raise DecodeError("non-minimal length encoding")
            length = int.from_bytes(lb, "big")
            if length < 0x80:
                raise DecodeError("non-minimal length encoding")
            pos += nbytes
        if pos + length > end:
            raise DecodeError("truncated content (length exceeds input)")
        return tag, pos, pos + length

    def any(self) -> tuple[int, "Reader"]:
        tag, start, stop = self._header()
        self.pos = stop
        return tag, Reader(self.data, start, stop)

    def expect(self, tag: int, what: str) -> "Reader":
        t, start, stop = self._header()
        if t != tag:
            raise DecodeError(f"{what}: expected tag 0x{tag:02x}, got 0x{t:02x}")
        self.pos = stop
        return Reader(self.data, start, stop)

    def content(self) -> bytes:
        return bytes(self.data[self.pos:self.end])

    def finish(self, what: str) -> None:
        if self.pos != self.end:
            raise DecodeError(f"{what}: trailing bytes")

    # -- primitives -----------------------------------------------------------
    def int(self, what: str = "integer") -> int:
        c = self.expect(INTEGER, what).content()
        return decode_int_content(c, what)

    def int32(self, what: str = "int32") -> int:
        v = self.int(what) & 0xFFFFFFFF
        return v - (1 << 32) if v >= 0x80000000 else v

    def int64(self, what: str = "int64") -> int:
        c = self.expect(OCTET_STRING, what).content()
        if len(c) < 8:
            raise DecodeError(f"{what}: int64 needs 8 bytes, got {len(c)}")
        return int.from_bytes(c[:8], "big", signed=True)

    def bool(self, what: str = "boolean") -> bool:
        c = self.expect(BOOLEAN, what).content()
        if len(c) != 1:
            raise DecodeError(f"{what}: boolean must have one content byte")
        return c[0] != 0

    def null(self, what: str = "null") -> None:
        r = self.expect(NULL, what)
        if r.pos != r.end:
            raise DecodeError(f"{what}: NULL with content")

    def octets(self, what: str = "octet string") -> bytes:
        return self.expect(OCTET_STRING, what).content()

    def utf8(self, what: str = "utf8 string") -> str:
        return self.expect(UTF8STRING, what).content().decode("utf-8", "surrogateescape")

    def utf8_bytes(self, what: str = "utf8 string") -> bytes:
        return self.expect(UTF8STRING, what).content()

    def time(self, what: str = "time") -> Ptime:
        c = self.expect(GENERALIZED_TIME, what).content()
        return parse_generalized_time(c, what)

    def optional(self, tag: int) -> "Reader | None":
        if self.peek_tag() == tag:
            return self.expect(tag, "optional")
        return None


def decode_int_content(c: bytes, what: str) -> int:
    if not c:
        raise DecodeError(f"{what}: empty integer")
    if len(c) > 1 and ((c[0] == 0 and c[1] < 0x80) or (c[0] == 0xFF and c[1] >= 0x80)):
        raise DecodeError(f"{what}: non-minimal integer encoding")
    if len(c) > 8:
        raise DecodeError(f"{what}: integer too large")
    v = int.from_bytes(c, "big", signed=True)
    if v < MIN_INT or v > MAX_INT:
        raise DecodeError(f"{what}: integer out of range")
    return v


_GT_RE = re.compile(
    rb"(\d{4})(\d{2})(\d{2})(\d{2})(?:(\d{2})(?:(\d{2}))?)?(?:\.(\d{1,3}))?(Z|[+-]\d{4})?\Z"
)


def parse_generalized_time(c: bytes, what: str = "time") -> Ptime:
    m = _GT_RE.match(c)
    if not m:
        raise DecodeError(f"{what}: malformed GeneralizedTime {c!r}")
    y, mo, d, h = (int(x) for x in m.group(1, 2, 3, 4))
    mi = int(m.group(5) or 0)
    s = int(m.group(6) or 0)
    ms = int(m.group(7)) if m.group(7) else 0
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and s <= 60):
        raise DecodeError(f"{what}: invalid date/time {c!r}")
    try:
        secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
        import datetime as _dt
        _dt.date(y, mo, d)
    except (ValueError, OverflowError):
        raise DecodeError(f"{what}: invalid date {c!r}") from None
    if s == 60:
        raise DecodeError(f"{what}: leap second not supported")
    zone = m.group(8)
    if zone and zone != b"Z":
        sign = 1 if zone[:1] == b"+" else -1
        zh, zm = int(zone[1:3]), int(zone[3:5])
        if zh > 23 or zm > 59:
            raise DecodeError(f"{what}: invalid time zone {c!r}")
        secs -= sign * (zh * 3600 + zm * 60)
    return Ptime(secs, ms * 1_000_000_000)
