"""Tests of the static policy checks (usable, is_smaller, fine_with_policy)."""

import re

import pytest
from hypothesis import given, strategies as st

from albatross.core import NetDevice, Policy, UnikernelConfig
from albatross.errors import PolicyError
from albatross.policy.policies import fine_with_policy, is_smaller, usable


def pol(unikernels=10, cpuids=(0, 1, 2, 3), memory=1024, block=100, bridges=("br0", "br1")):
    return Policy(unikernels, frozenset(cpuids), memory, block, frozenset(bridges))


def raises(msg):
    return pytest.raises(PolicyError, match="^" + re.escape(msg) + "$")


# -- usable ------------------------------------------------------------------------

def test_usable_ok():
    usable(pol())
    usable(pol(unikernels=1, cpuids=(7,), memory=17, block=None, bridges=()))
    usable(pol(block=0))


@pytest.mark.parametrize("p, msg", [
    (pol(unikernels=0), "Unusable policy with no unikernels"),
    (pol(unikernels=-3), "Unusable policy with no unikernels"),
    (pol(cpuids=()), "Unusable policy with no CPUids"),
    (pol(memory=16), "Unusable policy with memory 16 MB <= 16 MB"),
    (pol(memory=-1), "Unusable policy with memory -1 MB <= 16 MB"),
    (pol(block=-5), "Unusable policy with block -5 MB < 0 MB"),
    # first failing rule wins
    (pol(unikernels=0, cpuids=(), memory=1, block=-1), "Unusable policy with no unikernels"),
    (pol(cpuids=(), memory=1), "Unusable policy with no CPUids"),
])
def test_usable_errors(p, msg):
    with raises(msg):
        usable(p)


# -- is_smaller ------------------------------------------------------------------

def test_is_smaller_ok():
    sup = pol()
    is_smaller(sup, sup)
    is_smaller(sup, pol(unikernels=1, cpuids=(2,), memory=32, block=None, bridges=("br1",)))
    is_smaller(pol(block=None), pol(block=None))


@pytest.mark.parametrize("sub, msg", [
    (pol(unikernels=11), "policy above allows 10 unikernels, which is fewer than 11"),
    (pol(memory=2048), "policy above allows 1024 MB memory, which is fewer than 2048 MB"),
    (pol(cpuids=(0, 9, 5, 12)), "policy above does not allow CPUids 5, 9, 12"),
    (pol(bridges=("br0", "zz", "a")),
     "policy above allows bridge(s) br0, br1, which is not a superset of a, br0, zz"),
    (pol(block=101), "policy above allows 100 MB block storage, which is fewer than 101 MB"),
    # order: unikernels, memory, cpuids, bridges, block
    (pol(unikernels=11, memory=2048, cpuids=(9,)), "policy above allows 10 unikernels, which is fewer than 11"),
    (pol(memory=2048, cpuids=(9,), block=1000), "policy above allows 1024 MB memory, which is fewer than 2048 MB"),
    (pol(cpuids=(9,), bridges=("x",)), "policy above does not allow CPUids 9"),
    (pol(bridges=("x",), block=1000), "policy above allows bridge(s) br0, br1, which is not a superset of x"),
])
def test_is_smaller_errors(sub, msg):
    with raises(msg):
        is_smaller(pol(), sub)


def test_is_smaller_block_rules():
    is_smaller(pol(block=50), pol(block=None))       # super present, sub absent
    is_smaller(pol(block=None), pol(block=None))     # both absent
    is_smaller(pol(block=50), pol(block=50))
    with raises("policy above allows 0 MB block storage, which is fewer than 1 MB"):
        is_smaller(pol(block=None), pol(block=1))
    with raises("policy above allows 0 MB block storage, which is fewer than 0 MB"):
        is_smaller(pol(block=None), pol(block=0))


def test_is_smaller_empty_bridges_message():
    with raises("policy above allows bridge(s) , which is not a superset of br0"):
        is_smaller(pol(bridges=()), pol(bridges=("br0",)))


small_pol = st.builds(
    pol,
    unikernels=st.integers(0, 5),
    cpuids=st.frozensets(st.integers(0, 4)),
    memory=st.integers(0, 100),
    block=st.none() | st.integers(0, 100),
    bridges=st.frozensets(st.sampled_from(["a", "b", "c"])),
)


def _leq(sub, sup):
    try:
        is_smaller(sup, sub)
        return True
    except PolicyError:
        return False


@given(small_pol, small_pol, small_pol)
def test_is_smaller_is_a_preorder(a, b, c):
    assert _leq(a, a)
    if _leq(a, b) and _leq(b, c):
        assert _leq(a, c)


# -- fine_with_policy ----------------------------------------------------------------

def cfg(cpuids=(0,), memory=64, bridges=()):
    return UnikernelConfig(cpuids=frozenset(cpuids), memory=memory, bridges=tuple(bridges))


def test_fine_with_policy_ok():
    fine_with_policy(pol(), cfg(cpuids=(0, 3), memory=1024,
                                bridges=(NetDevice("service", "br0"), NetDevice("br1"))))


@pytest.mark.parametrize("c, msg", [
    (cfg(cpuids=(0, 7, 5)), "the CPUids 5, 7 requested by the unikernel are not allowed by policy"),
    (cfg(memory=1025), "1025 MB memory assigned to unikernel exceeds policy (1024MB)"),
    # bridge name = bridge if given, else interface name; listed in config order
    (cfg(bridges=(NetDevice("zz"), NetDevice("net", "br0"), NetDevice("br0", "qq"))),
     "Bridge(s) zz, qq not allowed by policy (available: br0, br1)"),
    # order: cpuids, memory, bridges
    (cfg(cpuids=(9,), memory=5000, bridges=(NetDevice("x"),)),
     "the CPUids 9 requested by the unikernel are not allowed by policy"),
    (cfg(memory=5000, bridges=(NetDevice("x"),)),
     "5000 MB memory assigned to unikernel exceeds policy (1024MB)"),
])
def test_fine_with_policy_errors(c, msg):
    with raises(msg):
        fine_with_policy(pol(), c)
