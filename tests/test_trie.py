"""Tests of the name-keyed trie and its traversal orders."""

from hypothesis import given, strategies as st

from albatross.policy.names import ROOT, Name
from albatross.policy.trie import Trie

n = Name.of_string


def names(t):
    return [str(k) for k, _ in t]


def test_get_insert_remove_len_contains():
    t: Trie[int] = Trie()
    assert len(t) == 0 and t.get(n("a:b")) is None
    assert t.insert(n("a:b"), 1) is None
    assert t.insert(n("a:b"), 2) == 1
    assert t.get(n("a:b")) == 2 and len(t) == 1
    assert n("a:b") in t and n("a:") not in t and "a:b" not in t
    assert t.remove(n("a:")) is None
    assert t.remove(n("x:y")) is None
    assert t.remove(n("a:b")) == 2
    assert len(t) == 0 and n("a:b") not in t and t.items() == []


def test_remove_keeps_children_and_prunes_empty_nodes():
    t: Trie[int] = Trie()
    t.insert(n("a:"), 1)
    t.insert(n("a:b:c"), 2)
    assert t.remove(n("a:")) == 1
    assert t.get(n("a:b:c")) == 2
    t.remove(n("a:b:c"))
    assert t._root.children == {}


def test_path_and_named_entry_share_a_node():
    # upstream stores one value per node; lookups only use the labels
    t: Trie[str] = Trie()
    t.insert(n("foo:"), "path")
    assert t.get(n(":foo")) == "path"
    assert t.insert(n(":foo"), "named") == "path"
    assert len(t) == 1
    assert t.items() == [(n(":foo"), "named")]


def test_items_preorder_ascending():
    t: Trie[int] = Trie()
    for i, s in enumerate(["b:", "a:z", "a:", ":", "a:b:", "c:d:e", "a:b:x"]):
        t.insert(n(s), i)
    assert names(t.items()) == [":", "a:", "a:b:", "a:b:x", "a:z", "b:", "c:d:e"]


def test_items_bytewise_order():
    t: Trie[int] = Trie()
    for s in ["a-b", "a.b", "a0", "a", "ab"]:
        t.insert(Name((), s), 0)
    # bytewise: '-' (0x2d) < '.' (0x2e) < '0' (0x30) < 'b'; a prefix sorts first
    assert [k.label for k, _ in t.items()] == ["a", "a-b", "a.b", "a0", "ab"]


def test_collect_root_first():
    t: Trie[int] = Trie()
    for s in [":", "a:", "a:b:", "a:b:c", "a:x:", "b:"]:
        t.insert(n(s), 0)
    assert names(t.collect(n("a:b:c"))) == [":", "a:", "a:b:", "a:b:c"]
    assert names(t.collect(n("a:b:zz"))) == [":", "a:", "a:b:"]
    assert names(t.collect(ROOT)) == [":"]
    assert names(t.collect(n("q:r"))) == [":"]


def test_under_absolute_preorder():
    t: Trie[int] = Trie()
    for s in [":", "a:", "a:b", "a:c:", "a:c:d", "ab:", ":a"]:
        t.insert(n(s), 0)
    assert names(t.under(("a",))) == [":a", "a:b", "a:c:", "a:c:d"]
    assert names(t.under(())) == names(t.items())
    assert t.under(("zz",)) == []


def test_listing_order_pinned():
    """Upstream: Vmm_trie.fold visits post-order, children ascending, and the
    callers prepend, so the reply is pre-order with children descending."""
    t: Trie[int] = Trie()
    for s in ["foo:", "foo:a", "foo:b:", "foo:b:x", "foo:b:y", "foo:c", "bar:q", ":", "food:z"]:
        t.insert(n(s), 0)
    # post-order ascending under foo: a, b:x, b:y, b:, c, foo:
    assert names(t.postorder_under(("foo",))) == ["foo:a", "foo:b:x", "foo:b:y", "foo:b:", "foo:c", "foo:"]
    # its reverse, with names relative to foo and the path itself as ':'
    assert names(t.listing(("foo",))) == [":", ":c", "b:", "b:y", "b:x", ":a"]


def test_listing_root_keeps_full_names():
    t: Trie[int] = Trie()
    for s in [":", "alpha:", "alpha:a", "alpha:b", ":z"]:
        t.insert(n(s), 0)
    assert names(t.listing(())) == [":", ":z", "alpha:", "alpha:b", "alpha:a"]
    assert names(t.listing(("alpha",))) == [":", ":b", ":a"]
    assert t.listing(("nope",)) == []


def test_listing_named_entry_on_path_node_is_root():
    # unikernel ':foo' sits on the node of path foo: upstream reports it as ':'
    t: Trie[int] = Trie()
    t.insert(n(":foo"), 1)
    t.insert(n("foo:bar"), 2)
    assert t.listing(("foo",)) == [(ROOT, 1), (n(":bar"), 2)]


def test_copy_is_independent():
    t: Trie[int] = Trie()
    t.insert(n("a:b"), 1)
    c = t.copy()
    c.insert(n("a:c"), 2)
    c.remove(n("a:b"))
    assert t.items() == [(n("a:b"), 1)]
    assert c.items() == [(n("a:c"), 2)] and len(c) == 1 and len(t) == 1


label = st.sampled_from(["a", "b", "c", "a-", "a.", "0", "ba"])
name_st = st.builds(
    lambda labels, is_path: Name(tuple(labels), None) if is_path else Name.of_labels(labels),
    st.lists(label, max_size=4),
    st.booleans(),
).filter(lambda x: x.labels() or x.is_path)


def _build(entries):
    t: Trie[int] = Trie()
    model: dict[tuple[str, ...], tuple[Name, int]] = {}
    for i, nm in enumerate(entries):
        t.insert(nm, i)
        model[nm.labels()] = (nm, i)
    return t, model


def _key(labels):
    return [x.encode() for x in labels]


@given(st.lists(name_st, max_size=25))
def test_items_match_sorted_keys(entries):
    t, model = _build(entries)
    assert len(t) == len(model)
    # pre-order ascending == lexicographic order of the label sequences
    expected = [model[k] for k in sorted(model, key=_key)]
    assert t.items() == expected


@given(st.lists(name_st, max_size=25), st.lists(label, max_size=3))
def test_listing_is_reverse_postorder_and_relative(entries, path):
    t, model = _build(entries)
    path = tuple(path)
    sub = t.under(path)
    assert [k.labels()[: len(path)] for k, _ in sub] == [path] * len(sub)
    lst = t.listing(path)
    assert lst == [
        (ROOT if k.labels() == path else k.drop_prefix(path), v)
        for k, v in reversed(t.postorder_under(path))
    ]
    # a node precedes its descendants, and siblings come in descending order
    keys = [k.labels() for k, _ in lst]
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not (len(b) < len(a) and a[: len(b)] == b)
    assert sorted(v for _, v in lst) == sorted(v for _, v in sub)


@given(st.lists(name_st, max_size=25), st.lists(name_st, max_size=10))
def test_remove_matches_model(entries, removals):
    t, model = _build(entries)
    for nm in removals:
        old = model.pop(nm.labels(), None)
        assert t.remove(nm) == (None if old is None else old[1])
    assert t.items() == [model[k] for k in sorted(model, key=_key)]
    assert len(t) == len(model)
