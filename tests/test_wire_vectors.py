"""The golden vectors produced by upstream's encoder, byte for byte, both ways."""

import json
import os
import subprocess
import sys

import pytest

from albatross.wire import codec, jsonform as J
from albatross.wire.state import decode_state, encode_state

from conftest import SPEC_DIR

VECTORS = os.path.join(SPEC_DIR, "vectors", "wire_v5_public.jsonl")


def _load():
    if not os.path.exists(VECTORS):
        return []
    with open(VECTORS) as fh:
        return [json.loads(line) for line in fh if line.strip()]


ALL = _load()


def test_vectors_present():
    # the shared spec sits beside the checkout in CI and here; without it the
    # parametrised tests below would silently vanish
    assert len(ALL) >= 50, f"golden vectors not found at {VECTORS}"


def _decode(kind, raw):
    if kind == "wire":
        return J.wire_to_json(codec.decode_wire(raw))
    if kind in ("cert_ext", "policy"):
        return J.cert_to_json(*codec.decode_cert_extension(raw))
    return J.state_to_json(decode_state(raw))


def _encode(kind, fields):
    if kind == "wire":
        return codec.encode_wire(J.wire_of_json(fields))
    if kind in ("cert_ext", "policy"):
        version, cmd = J.cert_of_json(fields)
        return codec.encode_cert_extension(cmd, version)
    return encode_state(J.state_of_json(fields))


@pytest.mark.parametrize("vec", ALL, ids=[v["name"] for v in ALL])
def test_decode_gives_fields(vec):
    assert _decode(vec["kind"], bytes.fromhex(vec["hex"])) == vec["fields"]


@pytest.mark.parametrize("vec", ALL, ids=[v["name"] for v in ALL])
def test_encode_gives_hex(vec):
    expected = vec.get("reencoded_hex", vec["hex"])
    assert _encode(vec["kind"], vec["fields"]).hex() == expected


@pytest.mark.parametrize("vec", ALL, ids=[v["name"] for v in ALL])
def test_reencode_of_decode(vec):
    raw = bytes.fromhex(vec["hex"])
    expected = vec.get("reencoded_hex", vec["hex"])
    kind = vec["kind"]
    if kind == "wire":
        out = codec.encode_wire(codec.decode_wire(raw))
    elif kind in ("cert_ext", "policy"):
        v, cmd = codec.decode_cert_extension(raw)
        out = codec.encode_cert_extension(cmd, v)
    else:
        out = encode_state(decode_state(raw))
    assert out.hex() == expected


def test_client_wire_tool_round_trips_all_vectors():
    """`albatross-client wire decode|encode` over every vector, as an operator runs it."""
    kinds = {"wire": "wire", "cert_ext": "cert", "policy": "cert", "state": "state", "state_compat": "state"}
    for tool_kind in ("wire", "cert", "state"):
        vecs = [v for v in ALL if kinds[v["kind"]] == tool_kind]
        hexes = "\n".join(v["hex"] for v in vecs) + "\n"
        dec = subprocess.run([sys.executable, "-m", "albatross.client", "wire", "decode", "--kind", tool_kind],
                             input=hexes, capture_output=True, text=True, check=True)
        objs = [json.loads(line) for line in dec.stdout.splitlines()]
        assert objs == [v["fields"] for v in vecs]
        enc = subprocess.run([sys.executable, "-m", "albatross.client", "wire", "encode", "--kind", tool_kind],
                             input=dec.stdout, capture_output=True, text=True, check=True)
        assert enc.stdout.split() == [v.get("reencoded_hex", v["hex"]) for v in vecs]


def test_client_wire_decode_reports_errors_per_line():
    out = subprocess.run([sys.executable, "-m", "albatross.client", "wire", "decode"],
                         input="zz\n3000\n", capture_output=True, text=True)
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(lines) == 2
    assert "invalid hex" in lines[0]["error"]
    assert "error" in lines[1]
