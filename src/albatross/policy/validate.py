"""Sanity checks of the values in commands, shared by albatross-client and albatrossd.

Upstream checks values only against a policy, and only against the policy at
exactly the unikernel's path: without one, a memory of 0, -5 or 2^62 MB, a
negative CPU id or a 0 MB block device is accepted, acknowledged and then
fails in the tender (or poisons the accounting).  These checks apply
everywhere, policy or not.  The client runs them to fail early; albatrossd
runs them again (a remote or third-party client may send anything), and
additionally checks CPU ids and memory against the host (its root policy).

Every check raises :class:`~albatross.errors.PolicyError` with a message
that names the offending value.
"""

from __future__ import annotations

from ..core import Policy, UnikernelConfig
from ..errors import PolicyError
from .names import Name, is_label
from .policies import format_ints

#: the largest memory (MB) of a unikernel: 16 TiB, far above any host
MAX_MEMORY_MB = 1 << 24
#: the largest block device (MB): 1 PiB (its byte size must fit the daemon's arithmetic)
MAX_BLOCK_MB = 1 << 30
#: CPU ids are below this (Linux' CONFIG_NR_CPUS maximum)
MAX_CPUID = 8192


def unikernel_name(name: Name, what: str = "unikernel") -> None:
    """``name`` names an object, not a path (``foo:`` or ``:`` are paths)."""
    if name.label is None:
        raise PolicyError(f"{name.to_string()} is a path, not a {what} name (drop the trailing ':')")


def memory(mb: int) -> None:
    if mb < 1:
        raise PolicyError(f"memory must be at least 1 MB (requested {mb} MB)")
    if mb > MAX_MEMORY_MB:
        raise PolicyError(f"memory of {mb} MB is absurd (at most {MAX_MEMORY_MB} MB)")


def cpuids(ids: frozenset[int] | set[int] | tuple[int, ...]) -> None:
    if not ids:
        raise PolicyError("CPUids may not be empty")
    bad = [c for c in ids if c < 0 or c >= MAX_CPUID]
    if bad:
        raise PolicyError(f"invalid CPUid(s) {format_ints(bad)} (must be between 0 and {MAX_CPUID - 1})")


def block_size(mb: int) -> None:
    if mb < 1:
        raise PolicyError(f"block device size must be at least 1 MB (requested {mb} MB)")
    if mb > MAX_BLOCK_MB:
        raise PolicyError(f"block device size of {mb} MB is absurd (at most {MAX_BLOCK_MB} MB)")


def config(cfg: UnikernelConfig) -> None:
    """The values of a unikernel configuration, independent of host and policies."""
    memory(cfg.memory)
    cpuids(cfg.cpuids)
    if cfg.numcpus < 1:
        raise PolicyError(f"number of CPUs must be at least 1 (requested {cfg.numcpus})")
    for b in cfg.block_devices:
        dev = b.host_device
        if not is_label(dev) and not dev.startswith("/dev/zvol/"):
            raise PolicyError(f"block device {dev!r} is not a name (only [a-zA-Z0-9-.], 1 to 63 chars)")
    for arg in cfg.argv or ():
        if "\0" in arg:
            raise PolicyError(f"argument {arg!r} contains a NUL byte")


def config_on_host(cfg: UnikernelConfig, host: Policy | None) -> None:
    """:func:`config`, and the CPU ids and memory against the host (its root policy)."""
    config(cfg)
    if host is None:
        return
    unknown = cfg.cpuids - host.cpuids
    if unknown:
        raise PolicyError(
            f"CPUid(s) {format_ints(unknown)} do not exist on this host (CPUids {format_ints(host.cpuids)})")
    if cfg.memory > host.memory:
        raise PolicyError(f"memory of {cfg.memory} MB exceeds the host's memory ({host.memory} MB)")


def policy(p: Policy) -> None:
    """No negative values in a policy (a policy may well allow nothing)."""
    if p.unikernels < 0:
        raise PolicyError(f"policy with a negative number of unikernels ({p.unikernels})")
    if p.memory < 0:
        raise PolicyError(f"policy with negative memory ({p.memory} MB)")
    if p.block is not None and p.block < 0:
        raise PolicyError(f"policy with negative block storage ({p.block} MB)")
    bad = [c for c in p.cpuids if c < 0 or c >= MAX_CPUID]
    if bad:
        raise PolicyError(f"policy with invalid CPUid(s) {format_ints(bad)}")


def removable_policy(path: tuple[str, ...]) -> None:
    if not path:
        raise PolicyError("refusing to remove the root policy (it is the host's, discovered at start)")


__all__ = ["unikernel_name", "memory", "cpuids", "block_size", "config", "config_on_host", "policy",
           "removable_policy", "MAX_MEMORY_MB", "MAX_BLOCK_MB", "MAX_CPUID"]
