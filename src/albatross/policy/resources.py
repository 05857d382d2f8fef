"""Resource accounting of albatrossd (upstream ``Vmm_resources``), without I/O.

Holds the policies, the block devices and the running unikernels.  Every
mutating method checks everything first and raises :class:`PolicyError`
leaving the object untouched when a check fails.

Upstream quirk kept on purpose: usage "in the subtree of a path" is taken
from the trie node of that path, so a unikernel or block device whose name
has the same labels as the path (``:foo`` for path ``foo``) is counted in
that path's usage too.

Deliberate difference from upstream (2.7.2): quotas are hierarchical.  A
create, a block add and a policy add are checked against the policy of
*every* ancestor path (the root policy, the host's, excepted: it governs
only the root path, as upstream), each with the usage of that ancestor's
whole subtree.  Upstream only
checks the policy at exactly the unikernel's (or block's) path, so a tenant
allowed 1024 MB could delegate three sibling sub-CAs of 1024 MB each and run
3072 MB.  Delegating more than one has (the sum of the children's policies
exceeding the parent's) stays allowed, as upstream: it is usage that is
bounded, at every level.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..core import MAX_INT, Policy, UnikernelConfig
from ..errors import PolicyError
from .names import Name
from .policies import format_ints, format_strings, is_smaller
from .trie import Trie


@dataclass
class BlockDev:
    size: int  # MB
    active: bool


def _parent(path: tuple[str, ...]) -> tuple[str, ...]:
    return path[:-1]


@dataclass
class Resources:
    policies: Trie[Policy] = field(default_factory=Trie)
    block_devices: Trie[BlockDev] = field(default_factory=Trie)
    unikernels: Trie[UnikernelConfig] = field(default_factory=Trie)
    zvol_path: tuple[str, ...] | None = None

    def copy(self) -> "Resources":
        """An independent copy (e.g. to check a config without an old unikernel)."""
        blocks: Trie[BlockDev] = Trie()
        for name, b in self.block_devices.items():
            blocks.insert(name, replace(b))
        return Resources(self.policies.copy(), blocks, self.unikernels.copy(), self.zvol_path)

    # -- lookups -----------------------------------------------------------------
    def find_policy(self, path: tuple[str, ...]) -> Policy | None:
        return self.policies.get(Name.of_path(tuple(path)))

    def find_unikernel(self, name: Name) -> UnikernelConfig | None:
        return self.unikernels.get(name)

    def find_block(self, name: Name) -> BlockDev | None:
        return self.block_devices.get(name)

    def block_active(self, name: Name) -> bool | None:
        b = self.block_devices.get(name)
        return None if b is None else b.active

    # -- usage -------------------------------------------------------------------
    def unikernel_usage(self, path: tuple[str, ...]) -> tuple[int, int]:
        """(running unikernels, memory MB) in the subtree of ``path``."""
        configs = [c for _, c in self.unikernels.under(path)]
        return len(configs), sum(c.memory for c in configs)

    def used_cpuids(self, path: tuple[str, ...]) -> frozenset[int]:
        return frozenset(i for _, c in self.unikernels.under(path) for i in c.cpuids)

    def used_bridges(self, path: tuple[str, ...]) -> frozenset[str]:
        return frozenset(b for _, c in self.unikernels.under(path) for b in c.host_bridges())

    def block_usage(self, path: tuple[str, ...]) -> tuple[int, int]:
        """(active MB, inactive MB) of the block devices in the subtree of ``path``."""
        active = inactive = 0
        for _, b in self.block_devices.under(path):
            if b.active:
                active += b.size
            else:
                inactive += b.size
        return active, inactive

    def total_block_usage(self, path: tuple[str, ...]) -> int:
        return sum(self.block_usage(path))

    def console_limit(self, name: Name) -> int:
        """How many consoles albatross-console should keep for ``name``'s path."""
        if not name.path:
            return MAX_INT
        p = self.find_policy(name.path)
        return 0 if p is None else p.unikernels

    # -- policies ----------------------------------------------------------------
    def check_policy(self, path: tuple[str, ...], p: Policy) -> None:
        """The static check of ``policy add`` (ancestors, descendants, usage)."""
        path = tuple(path)
        # ancestors from the parent upwards; the root policy is never consulted
        prefix = _parent(path)
        while prefix:
            above = self.find_policy(prefix)
            if above is not None:
                is_smaller(above, p)
            prefix = _parent(prefix)
        # descendants in upstream's fold order; the old policy at path is skipped
        for name, below in self.policies.postorder_under(path):
            if name.labels() != path:
                is_smaller(p, below)
        self._check_usage(path, p)
        # hierarchical: every ancestor still holds the usage of its whole subtree
        for above_path, above in self.governing_policies(_parent(path)) if len(path) > 1 else ():
            self._check_usage(above_path, above)

    def _check_usage(self, path: tuple[str, ...], p: Policy) -> None:
        count, memory = self.unikernel_usage(path)
        cpuids = self.used_cpuids(path)
        bridges = self.used_bridges(path)
        block = self.total_block_usage(path)
        limit = p.block if p.block is not None else 0
        if not cpuids <= p.cpuids:
            raise PolicyError(f"policy does not allow CPUids {format_ints(cpuids - p.cpuids)}")
        if not bridges <= p.bridges:
            raise PolicyError(
                f"policy allows bridges {format_strings(p.bridges)}, "
                f"which is not a superset of {format_strings(bridges)}")
        if count > p.unikernels:
            raise PolicyError(
                f"unikernel would exceed running unikernel limit set by policy to {p.unikernels}, "
                f"running {count}")
        if memory > p.memory:
            raise PolicyError(
                f"unikernel would exceed running memory limit set by policy to {p.memory} MB, "
                f"used {memory} MB")
        if block > limit:
            raise PolicyError(
                f"unikernel would exceed running block storage limit set by policy to {limit} MB, "
                f"used {block} MB")

    def insert_policy(self, path: tuple[str, ...], p: Policy) -> None:
        """Check and store ``p`` at ``path`` (replacing any policy there).

        The daemon answers "no modification of policy" for an identical
        policy itself, before calling this.
        """
        self.check_policy(path, p)
        self.policies.insert(Name.of_path(tuple(path)), p)

    def remove_policy(self, path: tuple[str, ...]) -> None:
        """Drop the policy at ``path``; nothing below it is re-checked."""
        if self.policies.remove(Name.of_path(tuple(path))) is None:
            raise PolicyError("unknown policy")

    # -- unikernels ----------------------------------------------------------------
    def zvol_allowed(self, block_name: Name) -> bool:
        """Whether a /dev/zvol host device of the --allow-zvol-for path skips accounting."""
        return (
            self.zvol_path is not None
            and (block_name.label or "").startswith("/dev/zvol")
            and block_name.path == tuple(self.zvol_path)
        )

    def _accounted_blocks(self, name: Name, config: UnikernelConfig) -> list[Name]:
        names = [name.block_name(bd.host_device) for bd in config.block_devices]
        return [b for b in names if not self.zvol_allowed(b)]

    def governing_policies(self, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Policy]]:
        """The policies at ``path`` and at each of its ancestors, nearest first.

        The root policy (the host's resources) governs only the root path
        itself, as upstream: it is not an ancestor quota of the tenants.
        """
        path = tuple(path)
        if not path:
            p = self.find_policy(path)
            return [] if p is None else [(path, p)]
        found = []
        while path:
            p = self.find_policy(path)
            if p is not None:
                found.append((path, p))
            path = _parent(path)
        return found

    def check_vm(self, name: Name, config: UnikernelConfig) -> None:
        """The dynamic check before creating a unikernel (behaviour.md §2.7).

        The policy at ``name``'s path and every ancestor's (hierarchical, see
        the module docstring) are consulted, each with the usage of its whole
        subtree; without any nothing is checked against policies.
        """
        for path, p in self.governing_policies(name.path):
            count, memory = self.unikernel_usage(path)
            if count + 1 > p.unikernels:
                raise PolicyError(f"maximum amount of unikernels ({p.unikernels}) reached")
            if config.memory > p.memory - memory:
                raise PolicyError(
                    f"maximum allowed memory ({p.memory}, used {memory}) would be exceeded "
                    f"(requesting {config.memory})")
            if not config.cpuids <= p.cpuids:
                raise PolicyError(f"CPUids {format_ints(config.cpuids - p.cpuids)} are not allowed by policy")
            disallowed = [b for b in config.host_bridges() if b not in p.bridges]
            if disallowed:
                raise PolicyError(f"bridges {', '.join(disallowed)} not allowed by policy")
        for block_name in self._accounted_blocks(name, config):
            b = self.block_devices.get(block_name)
            if b is None:
                raise PolicyError(f"block device {block_name} not found")
            if b.active:
                raise PolicyError(f"block device {block_name} already in use")
        if name in self.unikernels:
            raise PolicyError("unikernel with same name already exists")

    def _set_usage(self, blocks: list[Name], active: bool) -> None:
        """Flip the activity of ``blocks``; all-or-nothing, upstream's messages."""
        state = {n: b.active for n, b in ((n, self.block_devices.get(n)) for n in blocks) if b is not None}
        for n in blocks:
            if n not in state:
                raise PolicyError(f"block device {n} not in trie")
            if state[n] == active:
                raise PolicyError(
                    f"block device {n} already in state {'active' if active else 'inactive'}")
            state[n] = active
        for n in blocks:
            b = self.block_devices.get(n)
            assert b is not None
            self.block_devices.insert(n, BlockDev(b.size, active))

    def insert_vm(self, name: Name, config: UnikernelConfig) -> None:
        """Check, then register a running unikernel and mark its block devices active.

        A config naming the same block device twice passes :meth:`check_vm`
        but fails here ("... already in state active"), as upstream.
        """
        self.check_vm(name, config)
        self._set_usage(self._accounted_blocks(name, config), True)
        self.unikernels.insert(name, config)

    def remove_vm(self, name: Name) -> UnikernelConfig:
        """Unregister a unikernel, mark its block devices inactive, return its config."""
        config = self.unikernels.get(name)
        if config is None:
            raise PolicyError("unknown unikernel")
        self._set_usage(self._accounted_blocks(name, config), False)
        self.unikernels.remove(name)
        return config

    # -- block devices -------------------------------------------------------------
    def check_block(self, name: Name, size: int) -> None:
        """Check a new block device against duplicates and the policy at its path.

        The duplicate message is albatrossd's (upstream's resource module has
        an unreachable variant quoting the pretty name).
        """
        if name in self.block_devices:
            raise PolicyError("block device with same name already exists")
        for path, p in self.governing_policies(name.path):
            if p.block is None:
                raise PolicyError("no block devices are allowed by policy")
            used = self.total_block_usage(path)
            if size > p.block - used:
                raise PolicyError(
                    f"block device policy limit of {p.block} MB (used {used} MB) would be exceeded "
                    f"by the request ({size} MB)")

    def insert_block(self, name: Name, size: int) -> None:
        """Check, then register an inactive block device of ``size`` MB."""
        self.check_block(name, size)
        self.block_devices.insert(name, BlockDev(size, False))

    def remove_block(self, name: Name) -> None:
        """Unregister an inactive block device (albatrossd's messages)."""
        b = self.block_devices.get(name)
        if b is None:
            raise PolicyError("remove block: not found")
        if b.active:
            raise PolicyError("remove block: is in use")
        self.block_devices.remove(name)


__all__ = ["BlockDev", "Resources"]
