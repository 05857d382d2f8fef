"""Read the Solo5 notes of a unikernel image (pure, no I/O).

A Solo5 unikernel is a little-endian ELF64 executable carrying two ELF notes
owned by "Solo5": the ABI note (target and ABI version) and the manifest note
(the devices the unikernel expects).  Like the Solo5 tenders we find them by
walking the PT_NOTE program headers; section names are not consulted.

Note layout (all integers little-endian u32)::

    n_namesz=6 | n_descsz | n_type | "Solo5\\0\\0\\0" | descriptor (n_descsz bytes)

The ABI descriptor is ``target, version, 0, 0``.  The manifest note is 8-byte
aligned, so its descriptor starts with 4 padding bytes (counted in n_descsz),
followed by ``version=1, entries`` and ``entries`` records of 104 bytes:
``name[68]`` (NUL-terminated), ``type``, 32 bytes of run-time fields that must
be zero in the file.  Entry 0 is the reserved one (empty name, 0x40000000).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from ..errors import AlbatrossError
from ..pretty import escaped as _escaped

if TYPE_CHECKING:  # pragma: no cover
    from ..core import UnikernelConfig


class Solo5Error(AlbatrossError):
    """A Solo5 image, tender or tap device problem."""


# ELF constants we rely on.
_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_PT_NOTE = 4
_EHDR_SIZE = 64
_PHDR_SIZE = 56

# Solo5 note constants.
NOTE_NAME = b"Solo5\x00"
NOTE_HEADER_SIZE = 20  # namesz, descsz, type, name padded to 8 bytes
NT_ABI1 = 0x31494241  # "ABI1"
NT_MFT1 = 0x3154464D  # "MFT1"
ABI_DESC_SIZE = 16
MFT_PADDING = 4  # descriptor padding so that the manifest is 8-byte aligned
MFT_ENTRY_SIZE = 104
MFT_NAME_SIZE = 68
MFT_MAX_ENTRIES = 64
MFT_MAX_DESC_SIZE = MFT_PADDING + 8 + MFT_MAX_ENTRIES * MFT_ENTRY_SIZE  # 6668
MFT_VERSION = 1

MFT_BLOCK_BASIC = 1
MFT_NET_BASIC = 2
MFT_RESERVED_FIRST = 1 << 30

DEVICE_TYPES = {MFT_BLOCK_BASIC: "BLOCK_BASIC", MFT_NET_BASIC: "NET_BASIC"}
DEVICE_TYPE_CODES = {v: k for k, v in DEVICE_TYPES.items()}

TARGETS = {1: "hvt", 2: "spt", 3: "virtio", 4: "muen", 5: "genode", 6: "xen"}
TARGET_CODES = {v: k for k, v in TARGETS.items()}


@dataclass(frozen=True, slots=True)
class Abi:
    """The ABI note: target name ("hvt", "spt", ... or "unknown(N)") and version."""

    target: str
    version: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """The user devices of the manifest, in file order, as (name, type) pairs.

    ``type`` is "NET_BASIC" or "BLOCK_BASIC"; the reserved entry 0 is not listed.
    """

    devices: tuple[tuple[str, str], ...]

    def block_names(self) -> list[str]:
        return [n for n, t in self.devices if t == "BLOCK_BASIC"]

    def net_names(self) -> list[str]:
        return [n for n, t in self.devices if t == "NET_BASIC"]

    def describe(self) -> str:
        """Upstream's printing: ``block "x", net "y"`` in manifest order."""
        kinds = {"BLOCK_BASIC": "block", "NET_BASIC": "net"}
        return ", ".join(f"{kinds[t]} {ocaml_quote(n)}" for n, t in self.devices)


def ocaml_quote(s: str) -> str:
    """Quote a string the way OCaml's ``%S`` does (for byte-exact error texts)."""
    return '"' + _escaped(s.encode("utf-8", "surrogateescape")) + '"'


# --------------------------------------------------------------------------
# ELF walking
# --------------------------------------------------------------------------

def _u32(buf: bytes, off: int) -> int:
    return struct.unpack_from("<I", buf, off)[0]


def _note_segments(image: bytes) -> Iterator[bytes]:
    """The contents of every PT_NOTE segment, in program header order."""
    if len(image) < _EHDR_SIZE or image[:4] != _ELF_MAGIC:
        raise Solo5Error("not an ELF file")
    if image[4] != _ELFCLASS64:
        raise Solo5Error("not an ELF64 file")
    if image[5] != _ELFDATA2LSB:
        raise Solo5Error("not a little-endian ELF file")
    e_phoff = struct.unpack_from("<Q", image, 0x20)[0]
    e_phentsize, e_phnum = struct.unpack_from("<HH", image, 0x36)
    if e_phnum == 0:
        return
    if e_phentsize < _PHDR_SIZE:
        raise Solo5Error("invalid ELF file: bad program header size")
    if e_phoff + e_phnum * e_phentsize > len(image):
        raise Solo5Error("invalid ELF file: program headers out of bounds")
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        p_type = _u32(image, off)
        if p_type != _PT_NOTE:
            continue
        p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<QQQQ", image, off + 8)
        if p_offset + p_filesz > len(image):
            raise Solo5Error("invalid ELF file: note segment out of bounds")
        yield image[p_offset:p_offset + p_filesz]


def _round4(n: int) -> int:
    return (n + 3) & ~3


def find_note(image: bytes, note_type: int) -> bytes | None:
    """The descriptor of the first Solo5 note of ``note_type``, or None."""
    for seg in _note_segments(image):
        off = 0
        while off + 12 <= len(seg):
            namesz, descsz, ntype = struct.unpack_from("<III", seg, off)
            name_off = off + 12
            desc_off = name_off + _round4(namesz)
            desc_end = desc_off + descsz
            if desc_end > len(seg):
                break  # truncated note: nothing usable further in this segment
            if ntype == note_type and namesz == len(NOTE_NAME) and seg[name_off:name_off + namesz] == NOTE_NAME:
                return seg[desc_off:desc_end]
            off = _round4(desc_end)
    return None


# --------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------

def query_abi(image: bytes) -> Abi:
    """The Solo5 ABI note of ``image``."""
    desc = find_note(image, NT_ABI1)
    if desc is None:
        raise Solo5Error("no Solo5 ABI note")
    if len(desc) != ABI_DESC_SIZE:
        raise Solo5Error(f"invalid ABI note: descriptor size {len(desc)}, expected {ABI_DESC_SIZE}")
    target, version, reserved0, reserved1 = struct.unpack("<IIII", desc)
    if reserved0 or reserved1:
        raise Solo5Error("invalid ABI note: non-zero reserved fields")
    return Abi(TARGETS.get(target, f"unknown({target})"), version)


def query_manifest(image: bytes) -> Manifest:
    """The Solo5 device manifest of ``image``, fully validated."""
    desc = find_note(image, NT_MFT1)
    if desc is None:
        raise Solo5Error("no Solo5 manifest note")
    return parse_manifest(desc)


def _invalid(why: str) -> Solo5Error:
    return Solo5Error("invalid manifest: " + why)


def parse_manifest(desc: bytes) -> Manifest:
    """Validate and decode a manifest descriptor (padding included)."""
    if len(desc) > MFT_MAX_DESC_SIZE:
        raise _invalid(f"note too large ({len(desc)} bytes, at most {MFT_MAX_DESC_SIZE})")
    if len(desc) < MFT_PADDING + 8:
        raise _invalid("note too small")
    body = desc[MFT_PADDING:]
    version, entries = struct.unpack_from("<II", body, 0)
    if version != MFT_VERSION:
        raise _invalid(f"unsupported version {version}")
    if entries < 1:
        raise _invalid("no entries")
    if entries > MFT_MAX_ENTRIES:
        raise _invalid(f"too many entries ({entries}, at most {MFT_MAX_ENTRIES})")
    if len(body) != 8 + entries * MFT_ENTRY_SIZE:
        raise _invalid(f"size {len(body)} does not match {entries} entries")
    devices: list[tuple[str, str]] = []
    for i in range(entries):
        raw = body[8 + i * MFT_ENTRY_SIZE:8 + (i + 1) * MFT_ENTRY_SIZE]
        name_raw = raw[:MFT_NAME_SIZE]
        (typ,) = struct.unpack_from("<I", raw, MFT_NAME_SIZE)
        if any(raw[MFT_NAME_SIZE + 4:]):
            raise _invalid(f"entry {i} has non-zero run-time fields")
        nul = name_raw.find(b"\x00")
        if nul < 0:
            raise _invalid(f"entry {i} name is not NUL-terminated")
        name = name_raw[:nul].decode("utf-8", "surrogateescape")
        if i == 0:
            if typ != MFT_RESERVED_FIRST or any(name_raw):
                raise _invalid("entry 0 is not the reserved entry")
            continue
        if typ == MFT_RESERVED_FIRST:
            raise _invalid(f"reserved entry at position {i}")
        if typ not in DEVICE_TYPES:
            raise _invalid(f"entry {i} has unknown type {typ:#x}")
        devices.append((name, DEVICE_TYPES[typ]))
    return Manifest(tuple(devices))


# --------------------------------------------------------------------------
# Manifest versus configuration
# --------------------------------------------------------------------------

def check_manifest(manifest: Manifest, config: "UnikernelConfig") -> None:
    """The configured block and network names must equal the manifest's (as sets)."""
    if set(manifest.block_names()) != {b.name for b in config.block_devices}:
        raise Solo5Error(
            "specified block device(s) does not match with manifest. "
            "Devices present in manifest: " + manifest.describe()
        )
    if set(manifest.net_names()) != {n.name for n in config.bridges}:
        raise Solo5Error(
            "specified bridge(s) does not match with the manifest. "
            "Devices present in manifest: " + manifest.describe()
        )


__all__ = [
    "Solo5Error", "Abi", "Manifest", "query_abi", "query_manifest", "parse_manifest",
    "find_note", "check_manifest", "ocaml_quote", "TARGETS", "TARGET_CODES",
    "DEVICE_TYPES", "DEVICE_TYPE_CODES",
]
