"""Tests of resource accounting: policy insertion, dynamic checks, block devices."""

import re

import pytest
from hypothesis import given, settings, strategies as st

from albatross.core import MAX_INT, BlockDevice, NetDevice, Policy, UnikernelConfig
from albatross.errors import PolicyError
from albatross.policy.names import Name
from albatross.policy.resources import BlockDev, Resources

n = Name.of_string


def pol(unikernels=10, cpuids=(0, 1, 2, 3), memory=1024, block=100, bridges=("br0", "br1")):
    return Policy(unikernels, frozenset(cpuids), memory, block, frozenset(bridges))


def _dev(cls, d):
    return cls(*d) if isinstance(d, tuple) else cls(d)


def cfg(cpuids=(0,), memory=64, bridges=(), blocks=()):
    """A config; bridges/blocks are names or (name, host device) pairs."""
    return UnikernelConfig(cpuids=frozenset(cpuids), memory=memory,
                           bridges=tuple(_dev(NetDevice, b) for b in bridges),
                           block_devices=tuple(_dev(BlockDevice, b) for b in blocks))


def raises(msg):
    return pytest.raises(PolicyError, match="^" + re.escape(msg) + "$")


def snapshot(r: Resources):
    return (
        [(str(k), v) for k, v in r.policies.items()],
        [(str(k), v.size, v.active) for k, v in r.block_devices.items()],
        [(str(k), v) for k, v in r.unikernels.items()],
    )


def fails_unchanged(r: Resources, msg, fn, *args):
    before = snapshot(r)
    with raises(msg):
        fn(*args)
    assert snapshot(r) == before


ROOT_POL = pol(unikernels=MAX_INT, cpuids=range(8), memory=16384, block=10000, bridges=("br0", "br1", "br2"))


@pytest.fixture
def r():
    res = Resources()
    res.insert_policy((), ROOT_POL)
    return res


# -- policy insertion ------------------------------------------------------------

def test_insert_and_remove_policy(r):
    r.insert_policy(("foo",), pol())
    assert r.find_policy(("foo",)) == pol()
    assert [str(k) for k, _ in r.policies.items()] == [":", "foo:"]
    r.remove_policy(("foo",))
    assert r.find_policy(("foo",)) is None
    fails_unchanged(r, "unknown policy", r.remove_policy, ("foo",))
    r.remove_policy(())  # the root policy can be removed
    assert len(r.policies) == 0


def test_root_policy_never_acts_as_ancestor():
    r = Resources()
    r.insert_policy((), pol(unikernels=1, cpuids=(0,), memory=32, block=None, bridges=()))
    big = pol(unikernels=100, cpuids=range(16), memory=100000, block=5000, bridges=("x",))
    r.insert_policy(("foo",), big)
    r.insert_policy(("foo", "bar"), big)
    assert r.find_policy(("foo", "bar")) == big


def test_ancestor_checks_parent_first_and_skip_missing(r):
    r.insert_policy(("a",), pol(unikernels=5))
    r.insert_policy(("a", "b"), pol(unikernels=5, memory=512))
    # no policy at a:b:c; a:b is nearest and is checked before a
    # (a allows 1024 MB, so this message can only come from a:b)
    fails_unchanged(r, "policy above allows 512 MB memory, which is fewer than 2000 MB",
                    r.insert_policy, ("a", "b", "c", "d"), pol(unikernels=5, memory=2000))
    fails_unchanged(r, "policy above allows 5 unikernels, which is fewer than 6",
                    r.insert_policy, ("a", "b", "c", "d"), pol(unikernels=6, memory=500))
    fails_unchanged(r, "policy above does not allow CPUids 4",
                    r.insert_policy, ("a", "x"), pol(unikernels=1, cpuids=(4,)))
    fails_unchanged(r, "policy above allows bridge(s) br0, br1, which is not a superset of br2",
                    r.insert_policy, ("a", "x"), pol(unikernels=1, bridges=("br2",)))
    fails_unchanged(r, "policy above allows 100 MB block storage, which is fewer than 200 MB",
                    r.insert_policy, ("a", "x"), pol(unikernels=1, block=200))
    r.insert_policy(("a", "b", "c", "d"), pol(unikernels=5, memory=512, block=None))


def test_descendants_must_be_smaller_postorder_first_error(r):
    r.insert_policy(("a", "x"), pol(unikernels=9, memory=100))
    r.insert_policy(("a", "x", "y"), pol(unikernels=9, memory=50))
    r.insert_policy(("a", "z"), pol(unikernels=1, memory=900))
    r.insert_policy(("ab",), pol(unikernels=100, memory=5000))   # not below a
    fails_unchanged(r, "policy above allows 4 unikernels, which is fewer than 9",
                    r.insert_policy, ("a",), pol(unikernels=4, memory=10))
    # upstream folds post-order: a:x:y (50 MB) is reported before its parent a:x (100 MB)
    fails_unchanged(r, "policy above allows 10 MB memory, which is fewer than 50 MB",
                    r.insert_policy, ("a",), pol(unikernels=9, memory=10))
    # children ascending: a:x (100 MB) is reported before a:z (900 MB)
    fails_unchanged(r, "policy above allows 99 MB memory, which is fewer than 100 MB",
                    r.insert_policy, ("a",), pol(unikernels=9, memory=99))
    fails_unchanged(r, "policy above allows 899 MB memory, which is fewer than 900 MB",
                    r.insert_policy, ("a",), pol(unikernels=9, memory=899))
    r.insert_policy(("a",), pol(unikernels=9, memory=900))


def test_root_policy_checks_all_descendants():
    r = Resources()
    r.insert_policy(("foo",), pol(memory=2048))
    with raises("policy above allows 1024 MB memory, which is fewer than 2048 MB"):
        r.insert_policy((), pol())


def test_replace_policy_with_smaller_one(r):
    # VMD-47: the old policy at the same path is not compared
    r.insert_policy(("foo",), pol(unikernels=10, memory=1024))
    r.insert_vm(n("foo:a"), cfg(memory=100))
    r.insert_vm(n("foo:b"), cfg(memory=100))
    r.insert_policy(("foo",), pol(unikernels=2, memory=200))
    assert r.find_policy(("foo",)) == pol(unikernels=2, memory=200)
    # ...but the usage below still has to fit
    fails_unchanged(r, "unikernel would exceed running unikernel limit set by policy to 1, running 2",
                    r.insert_policy, ("foo",), pol(unikernels=1, memory=200))
    fails_unchanged(r, "unikernel would exceed running memory limit set by policy to 199 MB, used 200 MB",
                    r.insert_policy, ("foo",), pol(unikernels=2, memory=199))


def test_policy_usage_checks_in_order(r):
    r.insert_vm(n("foo:a"), cfg(cpuids=(1, 5), memory=100, bridges=("br0", ("eth", "br2"))))
    r.insert_vm(n("foo:bar:b"), cfg(cpuids=(6,), memory=300, bridges=("br1",)))
    r.insert_vm(n("other:c"), cfg(cpuids=(7,), memory=5000, bridges=("zz",)))
    r.insert_block(n("foo:bar:disk"), 40)
    r.insert_block(n("foo:d2"), 10)
    r.insert_block(n("other:big"), 5000)
    r.insert_vm(n("foo:user"), cfg(blocks=("d2",)))   # an active block counts as well
    ok = pol(unikernels=3, cpuids=(0, 1, 5, 6), memory=464, block=50, bridges=("br0", "br1", "br2"))
    fails_unchanged(r, "policy does not allow CPUids 5, 6",
                    r.insert_policy, ("foo",), pol(cpuids=(0, 1), bridges=(), unikernels=0))
    fails_unchanged(r, "policy allows bridges br0, which is not a superset of br0, br1, br2",
                    r.insert_policy, ("foo",), pol(cpuids=range(8), bridges=("br0",), unikernels=0))
    fails_unchanged(r, "unikernel would exceed running unikernel limit set by policy to 2, running 3",
                    r.insert_policy, ("foo",), pol(cpuids=range(8), bridges=ok.bridges, unikernels=2, memory=0))
    fails_unchanged(r, "unikernel would exceed running memory limit set by policy to 463 MB, used 464 MB",
                    r.insert_policy, ("foo",), pol(cpuids=range(8), bridges=ok.bridges, unikernels=3,
                                                   memory=463, block=None))
    fails_unchanged(r, "unikernel would exceed running block storage limit set by policy to 49 MB, used 50 MB",
                    r.insert_policy, ("foo",), pol(cpuids=range(8), bridges=ok.bridges, unikernels=3,
                                                   memory=464, block=49))
    fails_unchanged(r, "unikernel would exceed running block storage limit set by policy to 0 MB, used 50 MB",
                    r.insert_policy, ("foo",), pol(cpuids=range(8), bridges=ok.bridges, unikernels=3,
                                                   memory=464, block=None))
    r.insert_policy(("foo",), ok)


def test_policy_checks_order_above_below_usage(r):
    r.insert_policy(("a",), pol(unikernels=5))
    r.insert_policy(("a", "b", "c"), pol(unikernels=3, cpuids=(0,)))
    r.insert_vm(n("a:b:x"), cfg(cpuids=(3,)))
    # violates above (6 > 5), below (2 < 3) and usage (cpuid 3): above wins
    fails_unchanged(r, "policy above allows 5 unikernels, which is fewer than 6",
                    r.insert_policy, ("a", "b"), pol(unikernels=6, cpuids=(0,)))
    fails_unchanged(r, "policy above allows 2 unikernels, which is fewer than 3",
                    r.insert_policy, ("a", "b"), pol(unikernels=2, cpuids=(0,)))
    fails_unchanged(r, "policy does not allow CPUids 3",
                    r.insert_policy, ("a", "b"), pol(unikernels=3, cpuids=(0,)))


# -- dynamic check -------------------------------------------------------------------

def test_ancestor_policies_govern_their_whole_subtree(r):
    # hierarchical quota (deliberately unlike upstream's VMD-33, where only the policy at
    # exactly the unikernel's path counts): foo's policy bounds everything below foo
    r.insert_policy(("foo",), pol(unikernels=2, cpuids=(0,), memory=64, block=None, bridges=("br0",)))
    fails_unchanged(r, "maximum allowed memory (64, used 0) would be exceeded (requesting 9000)",
                    r.insert_vm, n("foo:bar:a"), cfg(memory=9000))
    fails_unchanged(r, "CPUids 6 are not allowed by policy", r.insert_vm, n("foo:bar:a"), cfg(cpuids=(0, 6)))
    fails_unchanged(r, "bridges nonexistent not allowed by policy",
                    r.insert_vm, n("foo:bar:a"), cfg(bridges=("nonexistent",)))
    r.insert_vm(n("foo:bar:a"), cfg(memory=32))
    # three sibling sub-policies as large as foo's: usage is still bounded by foo's
    for sib in ("s1", "s2", "s3"):
        r.insert_policy(("foo", sib), pol(unikernels=2, cpuids=(0,), memory=64, block=None, bridges=("br0",)))
    r.insert_vm(n("foo:s1:x"), cfg(memory=32))
    fails_unchanged(r, "maximum amount of unikernels (2) reached", r.insert_vm, n("foo:s2:x"), cfg(memory=1))
    fails_unchanged(r, "maximum amount of unikernels (2) reached", r.insert_vm, n("foo:c"), cfg())
    # without any policy on the way up nothing is checked
    r.insert_vm(n("other:deep:x"), cfg(cpuids=(0, 6), memory=9000, bridges=("nonexistent",)))


def test_check_vm_messages_in_order(r):
    r.insert_policy(("p",), pol(unikernels=2, cpuids=(0, 1), memory=100, bridges=("br0",)))
    r.insert_vm(n("p:sub:x"), cfg(memory=60))      # counted in p's subtree
    fails_unchanged(r, "maximum allowed memory (100, used 60) would be exceeded (requesting 41)",
                    r.insert_vm, n("p:a"), cfg(memory=41, cpuids=(9,)))
    fails_unchanged(r, "CPUids 2, 9 are not allowed by policy",
                    r.insert_vm, n("p:a"), cfg(memory=40, cpuids=(9, 0, 2), bridges=("bad",)))
    fails_unchanged(r, "bridges x, y, x not allowed by policy",
                    r.insert_vm, n("p:a"), cfg(memory=40, bridges=("x", ("n", "br0"), ("m", "y"), "x")))
    fails_unchanged(r, "block device p:disk not found",
                    r.insert_vm, n("p:a"), cfg(memory=40, blocks=("disk",)))
    r.insert_vm(n("p:a"), cfg(memory=40, bridges=(("service", "br0"),)))
    fails_unchanged(r, "maximum amount of unikernels (2) reached",
                    r.insert_vm, n("p:b"), cfg(memory=0, cpuids=(9,)))


def test_same_name_checked_last(r):
    r.insert_vm(n(":hello"), cfg())
    fails_unchanged(r, "block device :nope not found", r.check_vm, n(":hello"), cfg(blocks=("nope",)))
    fails_unchanged(r, "unikernel with same name already exists", r.insert_vm, n(":hello"), cfg())


def test_root_policy_applies_at_root(r):
    with raises("maximum allowed memory (16384, used 0) would be exceeded (requesting 20000)"):
        r.check_vm(n(":big"), cfg(memory=20000))


def test_unikernel_on_path_node_counts_for_path_quirk(r):
    # upstream quirk: ':foo' has the same labels as path 'foo' and is counted there
    r.insert_vm(n(":foo"), cfg(memory=500))
    assert r.unikernel_usage(("foo",)) == (1, 500)
    with raises("unikernel would exceed running memory limit set by policy to 100 MB, used 500 MB"):
        r.insert_policy(("foo",), pol(memory=100))


# -- block devices with unikernels -----------------------------------------------------

def test_block_accounting_with_unikernels(r):
    # VMD-34
    r.insert_block(n("foo:data"), 10)
    assert r.block_active(n("foo:data")) is False
    assert r.block_active(n("foo:nope")) is None
    r.insert_vm(n("foo:u"), cfg(blocks=(("storage", "data"),)))
    assert r.block_active(n("foo:data")) is True
    assert r.find_block(n("foo:data")) == BlockDev(10, True)
    fails_unchanged(r, "block device foo:data already in use",
                    r.insert_vm, n("foo:v"), cfg(blocks=("data",)))
    fails_unchanged(r, "remove block: is in use", r.remove_block, n("foo:data"))
    assert r.remove_vm(n("foo:u")) == cfg(blocks=(("storage", "data"),))
    assert r.block_active(n("foo:data")) is False
    fails_unchanged(r, "unknown unikernel", r.remove_vm, n("foo:u"))
    r.insert_vm(n("foo:v"), cfg(blocks=("data",)))
    assert r.block_active(n("foo:data")) is True


def test_block_lookup_uses_unikernel_path(r):
    r.insert_block(n(":data"), 10)
    fails_unchanged(r, "block device foo:data not found", r.insert_vm, n("foo:u"), cfg(blocks=("data",)))


def test_same_block_twice_fails_on_insert(r):
    r.insert_block(n(":d"), 10)
    c = cfg(blocks=(("a", "d"), ("b", "d")))
    r.check_vm(n(":u"), c)   # upstream's check looks at each device alone
    fails_unchanged(r, "block device :d already in state active", r.insert_vm, n(":u"), c)


def test_zvol_escape():
    r = Resources(zvol_path=("tank",))
    dev = "/dev/zvol/pool/vol"
    r.insert_vm(n("tank:u"), cfg(blocks=(("disk", dev),)))
    r.insert_vm(n("tank:v"), cfg(blocks=(("disk", dev),)))   # not accounted, not exclusive
    assert len(r.block_devices) == 0
    r.remove_vm(n("tank:u"))
    # only in exactly that path
    fails_unchanged(r, f"block device tank:sub:{dev} not found",
                    r.insert_vm, n("tank:sub:u"), cfg(blocks=(("disk", dev),)))
    fails_unchanged(r, "block device tank:/dev/other not found",
                    r.insert_vm, n("tank:w"), cfg(blocks=(("disk", "/dev/other"),)))
    assert Resources().zvol_allowed(Name(("tank",), dev)) is False


# -- block devices ---------------------------------------------------------------------

def test_block_add_messages(r):
    # VMD-50
    r.insert_policy(("foo",), pol(block=100))
    r.insert_policy(("nob",), pol(block=None))
    r.insert_block(n("foo:a"), 60)
    r.insert_block(n("foo:bar:b"), 30)          # a subtree device counts towards foo
    # no policy at foo:bar: foo's governs (hierarchical; upstream leaves this unchecked)
    fails_unchanged(r, "block device policy limit of 100 MB (used 90 MB) would be exceeded by the request (5000 MB)",
                    r.insert_block, n("foo:bar:big"), 5000)
    assert r.total_block_usage(("foo",)) == 90
    fails_unchanged(r, "block device with same name already exists", r.insert_block, n("foo:a"), 1)
    fails_unchanged(r, "block device policy limit of 100 MB (used 90 MB) would be exceeded by the request (11 MB)",
                    r.insert_block, n("foo:c"), 11)
    fails_unchanged(r, "no block devices are allowed by policy", r.insert_block, n("nob:c"), 1)
    r.check_block(n("foo:c"), 10)
    r.insert_block(n("foo:c"), 10)
    assert r.block_usage(("foo",)) == (0, 100)
    r.insert_vm(n("foo:u"), cfg(blocks=("c",)))
    assert r.block_usage(("foo",)) == (10, 90)
    fails_unchanged(r, "remove block: not found", r.remove_block, n("foo:zz"))


def test_duplicate_block_checked_before_policy(r):
    r.insert_block(n("nob:x"), 1)
    # a policy without block storage over an existing device can only be
    # reached by removing and re-adding policies; store it directly
    r.policies.insert(Name.of_path(("nob",)), pol(block=None))
    fails_unchanged(r, "block device with same name already exists", r.insert_block, n("nob:x"), 1)
    fails_unchanged(r, "no block devices are allowed by policy", r.insert_block, n("nob:y"), 1)


# -- misc ---------------------------------------------------------------------------

def test_console_limit(r):
    assert r.console_limit(n(":x")) == MAX_INT
    assert r.console_limit(n("foo:x")) == 0
    r.insert_policy(("foo",), pol(unikernels=7))
    assert r.console_limit(n("foo:x")) == 7
    assert r.console_limit(n("foo:bar:x")) == 0


def test_copy_is_independent(r):
    r.insert_block(n(":d"), 5)
    r.insert_vm(n(":u"), cfg(blocks=("d",)))
    c = r.copy()
    c.remove_vm(n(":u"))
    c.remove_policy(())
    assert r.block_active(n(":d")) is True and c.block_active(n(":d")) is False
    assert n(":u") in r.unikernels and n(":u") not in c.unikernels
    assert r.find_policy(()) == ROOT_POL
    # e.g. force-create: check the new config without the old unikernel
    c.check_vm(n(":u"), cfg(blocks=("d",)))


def test_used_cpuids_and_bridges(r):
    r.insert_vm(n("a:x"), cfg(cpuids=(1, 2), bridges=("br0", ("n", "br2"))))
    r.insert_vm(n("a:b:y"), cfg(cpuids=(3,), bridges=("br1",)))
    r.insert_vm(n("z:y"), cfg(cpuids=(7,), bridges=("q",)))
    assert r.used_cpuids(("a",)) == {1, 2, 3}
    assert r.used_bridges(("a",)) == {"br0", "br1", "br2"}
    assert r.unikernel_usage(("a",)) == (2, 128)
    assert r.unikernel_usage(()) == (3, 192)


# -- property: a failing operation changes nothing -------------------------------------

paths = st.lists(st.sampled_from(["a", "b"]), max_size=2).map(tuple)
labels = st.sampled_from(["u", "v", "d", "e"])
names = st.builds(lambda p, l: Name(p, l), paths, labels)
small_pol = st.builds(pol, unikernels=st.integers(0, 3), cpuids=st.frozensets(st.integers(0, 2), min_size=1),
                      memory=st.integers(0, 200), block=st.none() | st.integers(0, 60),
                      bridges=st.frozensets(st.sampled_from(["br0", "br1"])))
configs = st.builds(lambda c, m, b, d: cfg(cpuids=c, memory=m, bridges=b, blocks=d),
                    st.frozensets(st.integers(0, 2), min_size=1), st.integers(0, 100),
                    st.lists(st.sampled_from(["br0", "br1"]), max_size=2),
                    st.lists(st.sampled_from(["d", "e"]), max_size=2))
ops = st.one_of(
    st.tuples(st.just("insert_policy"), paths, small_pol),
    st.tuples(st.just("remove_policy"), paths),
    st.tuples(st.just("insert_vm"), names, configs),
    st.tuples(st.just("remove_vm"), names),
    st.tuples(st.just("insert_block"), names, st.integers(0, 40)),
    st.tuples(st.just("remove_block"), names),
)


@settings(max_examples=300)
@given(st.lists(ops, max_size=30))
def test_failed_operations_change_nothing(seq):
    r = Resources()
    for op, *args in seq:
        before = snapshot(r)
        try:
            getattr(r, op)(*args)
        except PolicyError:
            assert snapshot(r) == before
    # block activity always mirrors the running unikernels
    used = {str(Name(k.path, bd.host_device)) for k, c in r.unikernels.items() for bd in c.block_devices}
    assert {str(k) for k, b in r.block_devices.items() if b.active} == used
