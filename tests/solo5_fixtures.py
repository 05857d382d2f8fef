"""Build minimal Solo5 unikernel images (ELF64) for tests.

The built images are never executed: they only carry what tenders and albatrossd
read, following solo5.md §3: ELF header (ET_EXEC, x86_64, entry 0x100020),
program headers PT_INTERP "/nonexistent/solo5/", PT_LOAD, and two PT_NOTE
segments (ABI note aligned 4, manifest note aligned 8), plus matching section
headers (.interp, .note.solo5.abi, .note.solo5.manifest, .shstrtab).

Broken variants: ``no_abi=True``, ``no_manifest=True``, ``bad_manifest=KIND``
(see BAD_MANIFEST_KINDS), ``target="virtio"`` / an integer for a wrong or
unknown target.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from typing import Sequence

# -- the real Solo5 tenders and test unikernels (../shared/solo5) -------------------

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the shared references beside the repository (ALBATROSS_SHARED overrides, e.g. in a worktree)
SHARED = os.path.normpath(os.environ.get("ALBATROSS_SHARED") or os.path.join(_ROOT, "..", "shared"))
SOLO5 = os.path.join(SHARED, "solo5")
SOLO5_BIN = os.path.join(SOLO5, "bin")
SOLO5_TESTS = os.path.join(SOLO5, "tests")


def real_tender_missing(target: str = "hvt") -> str | None:
    """Why the real ``solo5-TARGET`` cannot run a unikernel here (None: it can)."""
    tender = os.path.join(SOLO5_BIN, f"solo5-{target}")
    if not os.path.exists(tender):
        return f"real Solo5 tenders not found at {SOLO5_BIN} (../shared/solo5)"
    if target == "hvt" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "solo5-hvt needs /dev/kvm (read/write)"
    p = subprocess.run([tender, "--version"], capture_output=True, text=True)
    if p.returncode != 0:
        return (f"solo5-{target} does not run here ({(p.stderr or p.stdout).strip()[:200]}); "
                "scripts/setup installs libseccomp2")
    return None


def real_image(name: str, target: str = "hvt") -> str:
    """The path of one of Solo5's test unikernels (test_hello, test_exit, ...)."""
    return os.path.join(SOLO5_TESTS, f"{name}.{target}")


def real_tender_path(target: str = "hvt") -> str | None:
    """A PATH entry with the real tenders, or None when they cannot run here."""
    return None if real_tender_missing(target) else SOLO5_BIN


def have_command(name: str) -> bool:
    return shutil.which(name) is not None


_STAND_IN_BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tender", "bin")


class E2eTender:
    """The tender end-to-end tests run: the real solo5-hvt/solo5-spt with Solo5's
    test_exit unikernels when ../shared/solo5 and KVM are there, else the stand-in
    (tests/tender/) with built images.  Both understand the unikernel arguments
    ``forever`` (prints ``tick N`` lines until killed) and ``sleep S CODE``, and
    both end with ``Solo5: solo5_exit(CODE) called``."""

    def __init__(self, target: str = "hvt"):
        self.target = target
        self.why_not_real = real_tender_missing(target)
        self.real = self.why_not_real is None
        self.kind = "real" if self.real else "stand-in"
        self.bin = SOLO5_BIN if self.real else _STAND_IN_BIN

    def path_env(self, base: str | None = None) -> str:
        return f"{self.bin}:{base if base is not None else os.environ.get('PATH', '/usr/bin:/bin')}"

    def image(self, directory, devices: bool = False) -> str:
        """An image without devices, or with net ``service`` and block ``storage``."""
        if self.real:
            return real_image("test_exit_dev" if devices else "test_exit", self.target)
        path = os.path.join(str(directory), f"e2e{'-dev' if devices else ''}.{self.target}")
        write_image(path, target=self.target, devices=DEFAULT_DEVICES if devices else ())
        return path

TARGET_CODES = {"hvt": 1, "spt": 2, "virtio": 3, "muen": 4, "genode": 5, "xen": 6}
TYPE_CODES = {"BLOCK_BASIC": 1, "NET_BASIC": 2}
RESERVED_FIRST = 0x40000000
NT_ABI1 = 0x31494241
NT_MFT1 = 0x3154464D
INTERP = b"/nonexistent/solo5/\x00"
ENTRY = 0x100020
BASE = 0x100000

DEFAULT_DEVICES: tuple[tuple[str, str], ...] = (("service", "NET_BASIC"), ("storage", "BLOCK_BASIC"))

BAD_MANIFEST_KINDS = (
    "version",        # version 2
    "no-entries",     # entries = 0
    "too-many",       # entries = 65
    "size",           # n_descsz / entries mismatch
    "not-reserved",   # entry 0 is a device
    "reserved-late",  # a reserved entry after entry 0
    "unterminated",   # a 68-byte name without NUL
    "runtime",        # non-zero run-time fields
    "unknown-type",   # device type 7
)

# The ABI note of a real hvt image, as shown in solo5.md §3.
EXAMPLE_HVT_ABI_NOTE = bytes.fromhex(
    "06000000 10000000 41424931 536f6c6f35000000 01000000 02000000 00000000 00000000".replace(" ", "")
)


def _note(note_type: int, desc: bytes) -> bytes:
    return struct.pack("<III", 6, len(desc), note_type) + b"Solo5\x00\x00\x00" + desc


def abi_note(target: str | int = "hvt", abi_version: int = 2) -> bytes:
    code = TARGET_CODES[target] if isinstance(target, str) else target
    return _note(NT_ABI1, struct.pack("<IIII", code, abi_version, 0, 0))


def _entry(name: bytes, typ: int, runtime: bytes = b"\x00" * 32) -> bytes:
    return name.ljust(68, b"\x00")[:68] + struct.pack("<I", typ) + runtime


def manifest_note(devices: Sequence[tuple[str, str]] = DEFAULT_DEVICES, bad: str | None = None) -> bytes:
    entries = [_entry(b"", RESERVED_FIRST)]
    entries += [_entry(n.encode(), TYPE_CODES[t]) for n, t in devices]
    version = 1
    count = len(entries)
    if bad == "version":
        version = 2
    elif bad == "no-entries":
        entries, count = [], 0
    elif bad == "too-many":
        count = 65
    elif bad == "size":
        count += 1
    elif bad == "not-reserved":
        entries[0] = _entry(b"first", TYPE_CODES["NET_BASIC"])
    elif bad == "reserved-late":
        entries.append(_entry(b"", RESERVED_FIRST))
        count += 1
    elif bad == "unterminated":
        entries.append(b"a" * 68 + struct.pack("<I", 2) + b"\x00" * 32)
        count += 1
    elif bad == "runtime":
        entries.append(_entry(b"busy", 2, b"\x00" * 24 + b"\x01" + b"\x00" * 7))
        count += 1
    elif bad == "unknown-type":
        entries.append(_entry(b"odd", 7))
        count += 1
    elif bad is not None:
        raise ValueError(f"unknown bad_manifest kind {bad!r}")
    desc = b"\x00" * 4 + struct.pack("<II", version, count) + b"".join(entries)
    return _note(NT_MFT1, desc)


def _align(buf: bytearray, n: int) -> None:
    buf += b"\x00" * (-len(buf) % n)


def build_image(
    target: str | int = "hvt",
    devices: Sequence[tuple[str, str]] = DEFAULT_DEVICES,
    abi_version: int = 2,
    payload: bytes = b"",
    *,
    no_abi: bool = False,
    no_manifest: bool = False,
    bad_manifest: str | None = None,
) -> bytes:
    """A minimal Solo5 ELF64 image with the given ABI note and manifest."""
    # segments: (p_type, flags, align, content); content placed after the headers
    segments: list[tuple[int, int, int, bytes, str]] = [(3, 4, 1, INTERP, ".interp")]
    if not no_abi:
        segments.append((4, 4, 4, abi_note(target, abi_version), ".note.solo5.abi"))
    if not no_manifest:
        segments.append((4, 4, 8, manifest_note(devices, bad_manifest), ".note.solo5.manifest"))
    phnum = len(segments) + 1  # + PT_LOAD
    body = bytearray(64 + 56 * phnum)
    placed: list[tuple[int, int, int, int, int, str]] = []  # type, flags, align, offset, size, name
    for p_type, flags, align, content, sname in segments:
        _align(body, 8)
        placed.append((p_type, flags, align, len(body), len(content), sname))
        body += content
    _align(body, 16)
    body += payload or b"\xf4" * 16  # hlt
    # section headers: null, one per note/interp segment, .shstrtab
    shstrtab = bytearray(b"\x00")
    name_offsets = []
    for *_, sname in placed:
        name_offsets.append(len(shstrtab))
        shstrtab += sname.encode() + b"\x00"
    shstrtab_name = len(shstrtab)
    shstrtab += b".shstrtab\x00"
    _align(body, 8)
    shstrtab_off = len(body)
    body += shstrtab
    _align(body, 8)
    shoff = len(body)
    shnum = len(placed) + 2
    sections = bytearray(64)  # SHT_NULL
    for (p_type, _flags, align, off, size, _sname), nameoff in zip(placed, name_offsets):
        sh_type = 7 if p_type == 4 else 1  # SHT_NOTE / SHT_PROGBITS
        sections += struct.pack("<IIQQQQIIQQ", nameoff, sh_type, 2, BASE + off, off, size, 0, 0, align, 0)
    sections += struct.pack("<IIQQQQIIQQ", shstrtab_name, 3, 0, 0, shstrtab_off, len(shstrtab), 0, 0, 1, 0)
    body += sections
    file_size = len(body)
    # program headers
    phdrs = bytearray()
    for p_type, flags, align, off, size, _sname in placed:
        phdrs += struct.pack("<IIQQQQQQ", p_type, flags, off, BASE + off, BASE + off, size, size, align)
    phdrs += struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, file_size, file_size, 0x1000)  # PT_LOAD R+X
    body[64:64 + len(phdrs)] = phdrs
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\x00" * 8  # ELF64, LSB, version 1, SYSV
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,            # ET_EXEC
        62,           # EM_X86_64
        1,            # EV_CURRENT
        ENTRY,
        64,           # e_phoff
        shoff,
        0,            # e_flags
        64, 56, phnum,
        64, shnum, shnum - 1,
    )
    body[:64] = ehdr
    return bytes(body)


def write_image(path, **kwargs) -> str:
    """Write ``build_image(**kwargs)`` to ``path`` and return the path as str."""
    data = build_image(**kwargs)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)
