"""Names, labels and paths (behaviour.md §1, features NAM-01..NAM-05)."""

import hashlib

import pytest

from albatross.errors import NameError_
from albatross.policy.names import (
    ROOT, Name, label_of_string, mac_to_string, path_of_string,
)


def test_labels():
    assert label_of_string("Foo") == "foo"
    assert label_of_string(".hidden") == ".hidden"
    assert label_of_string("a" * 63) == "a" * 63
    for bad in ["-a", "a_b", "a" * 64, "", "a:b", "ä"]:
        with pytest.raises(NameError_, match="invalid label"):
            label_of_string(bad)


def test_paths():
    assert path_of_string("a:b") == ("a", "b")
    assert path_of_string(":a:b") == ("a", "b")
    assert path_of_string("") == ()
    with pytest.raises(NameError_):
        path_of_string("a::b")


@pytest.mark.parametrize("text,name", [
    ("hello", Name((), "hello")), (":hello", Name((), "hello")), ("a:b:", Name(("a", "b"), None)),
    (":", ROOT), ("a:b:c", Name(("a", "b"), "c")), ("A:B", Name(("a",), "b")), (":a:", Name(("a",), None)),
])
def test_name_parsing(text, name):
    assert Name.of_string(text) == name


@pytest.mark.parametrize("text", ["a::b", "::a", "a::", "::", "a:b_c", "-x"])
def test_name_errors(text):
    with pytest.raises(NameError_):
        Name.of_string(text)


def test_empty_name():
    with pytest.raises(NameError_, match="empty name"):
        Name.of_string("")


@pytest.mark.parametrize("name,text", [
    (Name((), "hello"), ":hello"), (Name(("a", "b"), "c"), "a:b:c"), (Name(("a", "b")), "a:b:"), (ROOT, ":"),
])
def test_name_printing_round_trips(name, text):
    assert name.to_string() == text
    assert Name.of_string(text) == name
    assert name.pretty() == f"[unikernel: {text}]"


def test_relative_names():
    assert Name(("alpha",), "a").drop_prefix(("alpha",)) == Name((), "a")
    assert Name(("alpha",)).drop_prefix(("alpha",)) == ROOT
    with pytest.raises(NameError_):
        Name(("beta",), "a").drop_prefix(("alpha",))


def test_deterministic_mac_concatenates_without_separator():
    name = Name(("foo",), "old")
    digest = hashlib.md5(b"servicefoo:old").digest()
    assert name.mac("service") == b"\x00\x80\x41" + digest[:3]
    assert mac_to_string(name.mac("service")) == "00:80:41:87:e1:4d"
