"""Reading Solo5 ABI and manifest notes (albatross.solo5.elf)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from albatross.core import BlockDevice, NetDevice, UnikernelConfig
from albatross.errors import AlbatrossError
from albatross.solo5.elf import (
    Abi,
    Manifest,
    Solo5Error,
    check_manifest,
    ocaml_quote,
    query_abi,
    query_manifest,
)
from solo5_fixtures import BAD_MANIFEST_KINDS, EXAMPLE_HVT_ABI_NOTE, build_image, manifest_note


def test_fixture_contains_spec_bytes():
    img = build_image()
    assert EXAMPLE_HVT_ABI_NOTE in img
    assert img[:4] == b"\x7fELF"
    assert b"/nonexistent/solo5/\x00" in img
    e_type, e_machine, _, e_entry = struct.unpack_from("<HHIQ", img, 16)
    assert (e_type, e_machine, e_entry) == (2, 62, 0x100020)


def test_manifest_note_layout():
    note = manifest_note([("service", "NET_BASIC"), ("storage", "BLOCK_BASIC")])
    namesz, descsz, typ = struct.unpack_from("<III", note)
    assert (namesz, typ) == (6, 0x3154464D)
    assert descsz == 4 + 8 + 3 * 104 == len(note) - 20
    assert note[12:20] == b"Solo5\x00\x00\x00"
    assert struct.unpack_from("<II", note, 24) == (1, 3)
    # entry 0: reserved, entry 1: service / NET_BASIC
    assert struct.unpack_from("<I", note, 32 + 68)[0] == 0x40000000
    assert note[32 + 104:32 + 104 + 8] == b"service\x00"
    assert struct.unpack_from("<I", note, 32 + 104 + 68)[0] == 2


def test_valid_hvt_image():
    img = build_image()
    assert query_abi(img) == Abi("hvt", 2)
    m = query_manifest(img)
    assert m == Manifest((("service", "NET_BASIC"), ("storage", "BLOCK_BASIC")))
    assert m.net_names() == ["service"]
    assert m.block_names() == ["storage"]
    assert m.describe() == 'net "service", block "storage"'


@pytest.mark.parametrize("target", ["hvt", "spt", "virtio", "muen", "genode", "xen"])
def test_targets(target):
    assert query_abi(build_image(target=target, abi_version=7)) == Abi(target, 7)


def test_unknown_target():
    assert query_abi(build_image(target=9)).target == "unknown(9)"


def test_no_devices():
    m = query_manifest(build_image(devices=[]))
    assert m.devices == () and m.describe() == ""


def test_payload_does_not_matter():
    img = build_image(payload=b"\x00" * 5000 + b"Solo5\x00")
    assert query_abi(img) == Abi("hvt", 2)


def test_not_elf():
    with pytest.raises(Solo5Error, match="not an ELF file"):
        query_abi(b"#!/bin/sh\necho hello\n")
    with pytest.raises(Solo5Error, match="not an ELF file"):
        query_manifest(b"")


def test_elf32_rejected():
    img = bytearray(build_image())
    img[4] = 1
    with pytest.raises(Solo5Error, match="ELF64"):
        query_abi(bytes(img))


def test_truncated_program_headers():
    with pytest.raises(Solo5Error, match="out of bounds"):
        query_abi(build_image()[:100])


def test_no_abi_note():
    img = build_image(no_abi=True)
    with pytest.raises(Solo5Error, match="no Solo5 ABI note"):
        query_abi(img)
    assert query_manifest(img).net_names() == ["service"]


def test_no_manifest_note():
    img = build_image(no_manifest=True)
    assert query_abi(img) == Abi("hvt", 2)
    with pytest.raises(Solo5Error, match="no Solo5 manifest note"):
        query_manifest(img)


def test_errors_are_albatross_errors():
    with pytest.raises(AlbatrossError):
        query_abi(b"junk")


def test_notes_found_by_program_headers_not_sections():
    img = bytearray(build_image())
    shoff = struct.unpack_from("<Q", img, 0x28)[0]
    img[shoff:] = b"\xff" * (len(img) - shoff)  # wreck section headers
    assert query_abi(bytes(img)) == Abi("hvt", 2)


def test_other_owner_notes_skipped():
    img = bytearray(build_image())
    i = img.index(b"Solo5\x00\x00\x00")  # first note is the ABI note
    img[i:i + 5] = b"GNU\x00\x00"
    with pytest.raises(Solo5Error, match="no Solo5 ABI note"):
        query_abi(bytes(img))


@pytest.mark.parametrize("kind", BAD_MANIFEST_KINDS)
def test_bad_manifests(kind):
    img = build_image(bad_manifest=kind)
    assert query_abi(img) == Abi("hvt", 2)
    with pytest.raises(Solo5Error, match="^invalid manifest: "):
        query_manifest(img)


def test_bad_manifest_messages():
    def msg(kind: str) -> str:
        with pytest.raises(Solo5Error) as e:
            query_manifest(build_image(bad_manifest=kind))
        return e.value.message

    assert "version" in msg("version")
    assert "no entries" in msg("no-entries")
    assert "too many entries" in msg("too-many")
    assert "does not match" in msg("size")
    assert "entry 0" in msg("not-reserved")
    assert "reserved entry at position" in msg("reserved-late")
    assert "NUL-terminated" in msg("unterminated")
    assert "run-time" in msg("runtime")
    assert "unknown type" in msg("unknown-type")


def test_max_entries_accepted():
    devices = [(f"n{i}", "NET_BASIC") for i in range(63)]
    assert len(query_manifest(build_image(devices=devices)).devices) == 63


def test_abi_note_wrong_size():
    img = bytearray(build_image())
    i = img.index(EXAMPLE_HVT_ABI_NOTE)
    img[i + 4] = 12
    with pytest.raises(Solo5Error, match="descriptor size"):
        query_abi(bytes(img))


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=67)


@settings(max_examples=50)
@given(st.lists(st.tuples(names, st.sampled_from(["NET_BASIC", "BLOCK_BASIC"])), max_size=63))
def test_manifest_roundtrip(devices):
    assert query_manifest(build_image(devices=devices)).devices == tuple(devices)


def test_ocaml_quote():
    assert ocaml_quote("abc") == '"abc"'
    assert ocaml_quote('a"b\\c\n') == '"a\\"b\\\\c\\n"'
    assert ocaml_quote("\x01é") == '"\\001\\195\\169"'


# -- check_manifest -----------------------------------------------------------

def cfg(blocks=(), nets=()):
    return UnikernelConfig(
        block_devices=tuple(BlockDevice(b) for b in blocks),
        bridges=tuple(NetDevice(n) for n in nets),
    )


MANIFEST = Manifest((("service", "NET_BASIC"), ("storage", "BLOCK_BASIC"), ("data", "BLOCK_BASIC")))


def test_check_manifest_ok():
    check_manifest(MANIFEST, cfg(["data", "storage"], ["service"]))
    # host-side names do not matter, only the unikernel-side ones
    check_manifest(
        MANIFEST,
        UnikernelConfig(
            block_devices=(BlockDevice("storage", "disk1", 4096), BlockDevice("data", "disk2")),
            bridges=(NetDevice("service", "br0", b"\x00\x01\x02\x03\x04\x05"),),
        ),
    )


def test_check_manifest_block_mismatch():
    with pytest.raises(Solo5Error) as e:
        check_manifest(MANIFEST, cfg(["storage"], ["service"]))
    assert e.value.message == (
        "specified block device(s) does not match with manifest. Devices present in manifest: "
        'net "service", block "storage", block "data"'
    )


def test_check_manifest_net_mismatch():
    with pytest.raises(Solo5Error) as e:
        check_manifest(MANIFEST, cfg(["storage", "data"], ["service", "other"]))
    assert e.value.message == (
        "specified bridge(s) does not match with the manifest. Devices present in manifest: "
        'net "service", block "storage", block "data"'
    )


def test_check_manifest_block_checked_first():
    with pytest.raises(Solo5Error, match="block device"):
        check_manifest(MANIFEST, cfg([], []))


def test_check_manifest_empty():
    check_manifest(Manifest(()), cfg())
    with pytest.raises(Solo5Error, match=r"Devices present in manifest: \Z"):
        check_manifest(Manifest(()), cfg(["x"]))
