"""Client output matches upstream's printing of the same messages."""

import json
import os
import re

import pytest

from albatross import pretty
from albatross.wire import codec

from conftest import SPEC_DIR

VECTORS = os.path.join(SPEC_DIR, "vectors", "wire_v5_public.jsonl")
WIRE = [json.loads(x) for x in open(VECTORS)] if os.path.exists(VECTORS) else []
WIRE = [v for v in WIRE if v["kind"] == "wire"]


def _norm(s: str) -> str:
    return " ".join(s.split())


@pytest.mark.parametrize("vec", WIRE, ids=[v["name"] for v in WIRE])
def test_output_matches_upstream_description(vec):
    # the vectors' "desc" is upstream's pretty printer (verbose) behind a header summary
    expected = re.sub(r"^header\{[^}]*\} ", "", vec["desc"])
    got = pretty.wire(codec.decode_wire(bytes.fromhex(vec["hex"])), verbose=True)
    assert _norm(got) == _norm(expected)


def test_console_lines_are_escaped():
    assert pretty.escaped(b"a\tb\\\"\x1b[0m\xc3\xbc\n") == 'a\\tb\\\\\\"\\027[0m\\195\\188\\n'
