"""Static policy checks: usability, policy ordering, config against policy.

Each check returns None when it passes and raises :class:`PolicyError`
with upstream's message (``Vmm_core.Policy`` / ``Unikernel.fine_with_policy``)
for the first rule that fails.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core import Policy, UnikernelConfig
from ..errors import PolicyError


def format_ints(xs: Iterable[int]) -> str:
    return ", ".join(str(x) for x in sorted(xs))


def sorted_strings(xs: Iterable[str]) -> list[str]:
    """Strings in bytewise order, as OCaml's String_set.elements."""
    return sorted(xs, key=lambda s: s.encode("utf-8", "surrogateescape"))


def format_strings(xs: Iterable[str]) -> str:
    return ", ".join(sorted_strings(xs))


def usable(p: Policy) -> None:
    """The signer-side sanity check of a policy."""
    if p.unikernels <= 0:
        raise PolicyError("Unusable policy with no unikernels")
    if not p.cpuids:
        raise PolicyError("Unusable policy with no CPUids")
    if p.memory <= 16:
        raise PolicyError(f"Unusable policy with memory {p.memory} MB <= 16 MB")
    if p.block is not None and p.block < 0:
        raise PolicyError(f"Unusable policy with block {p.block} MB < 0 MB")


def is_smaller(super_: Policy, sub: Policy) -> None:
    """Check that ``sub`` fits within ``super_`` (counts, memory, cpus, bridges, block)."""
    if super_.unikernels < sub.unikernels:
        raise PolicyError(
            f"policy above allows {super_.unikernels} unikernels, which is fewer than {sub.unikernels}")
    if super_.memory < sub.memory:
        raise PolicyError(
            f"policy above allows {super_.memory} MB memory, which is fewer than {sub.memory} MB")
    if not sub.cpuids <= super_.cpuids:
        raise PolicyError(f"policy above does not allow CPUids {format_ints(sub.cpuids - super_.cpuids)}")
    if not sub.bridges <= super_.bridges:
        raise PolicyError(
            f"policy above allows bridge(s) {format_strings(super_.bridges)}, "
            f"which is not a superset of {format_strings(sub.bridges)}")
    if super_.block is None:
        block_ok = sub.block is None
    else:
        block_ok = sub.block is None or super_.block >= sub.block
    if not block_ok:
        raise PolicyError(
            f"policy above allows {super_.block or 0} MB block storage, "
            f"which is fewer than {sub.block or 0} MB")


def fine_with_policy(p: Policy, config: UnikernelConfig) -> None:
    """The client/signer-side check of a unikernel config against a policy.

    Unlike the daemon's dynamic check, this ignores current usage.
    (Upstream prints the memory figures with ``%u``; they are never negative
    in practice, so plain decimal is used.)
    """
    if not config.cpuids <= p.cpuids:
        raise PolicyError(
            f"the CPUids {format_ints(config.cpuids - p.cpuids)} requested by the unikernel "
            "are not allowed by policy")
    if config.memory > p.memory:
        raise PolicyError(
            f"{config.memory} MB memory assigned to unikernel exceeds policy ({p.memory}MB)")
    disallowed = [b for b in config.host_bridges() if b not in p.bridges]
    if disallowed:
        raise PolicyError(
            f"Bridge(s) {', '.join(disallowed)} not allowed by policy "
            f"(available: {format_strings(p.bridges)})")


__all__ = ["usable", "is_smaller", "fine_with_policy", "sorted_strings", "format_ints", "format_strings"]
