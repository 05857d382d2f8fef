"""Hierarchical quota (issue 12, row 4): a tenant cannot multiply its quota
by delegating sibling sub-policies; every ancestor's policy bounds the usage
of its whole subtree (upstream 2.7.2 checks only the exact path)."""

from __future__ import annotations

import re
from sec_helpers import needs_privileges, image, bare, system  # noqa: F401 - fixtures

pytestmark = needs_privileges


def running(system) -> list[str]:
    return re.findall(r"\[unikernel: ([^\]]+)\]", system.client("info"))


def test_sibling_sub_policies_do_not_multiply_the_tenant_quota(system, image):
    # the tenant: 64 MB, 16 unikernels; it delegates three siblings as large as itself
    system.client("add-policy", "tenant", "16", "--mem", "64", "--cpu", "0", "--size", "10")
    for sub in ("a", "b", "c"):
        system.client("add-policy", f"tenant:{sub}", "16", "--mem", "64", "--cpu", "0", "--size", "10")
    system.client("create", "tenant:a:x", image, "--mem", "64", "--arg=forever")
    for sub in ("b", "c"):
        out = system.client("create", f"tenant:{sub}:x", image, "--mem", "64", "--arg=forever", code=None)
        assert "maximum allowed memory (64, used 64) would be exceeded (requesting 64)" in out, out
    # also deeper, where no policy is set at all
    out = system.client("create", "tenant:a:deep:y", image, "--mem", "1", "--arg=forever", code=None)
    assert "would be exceeded" in out, out
    assert [u for u in running(system) if u.startswith("tenant")] == ["tenant:a:x"]


def test_block_storage_is_bounded_by_every_ancestor(system):
    system.client("add-policy", "tenant", "4", "--mem", "64", "--cpu", "0", "--size", "10")
    for sub in ("a", "b"):
        system.client("add-policy", f"tenant:{sub}", "4", "--mem", "64", "--cpu", "0", "--size", "10")
    system.client("create-block", "tenant:a:disk", "8")
    out = system.client("create-block", "tenant:b:disk", "8", code=None)
    assert "block device policy limit of 10 MB (used 8 MB) would be exceeded by the request (8 MB)" in out, out
    assert "tenant:b:disk" not in system.client("block")
